"""`negteacher eval`'s pieces: data checks before any model loads, the table, the card, the evaluate module."""

import json
import math
import re

import pytest
import torch
from conftest import answer_logprob_by_hand
from huggingface_hub import ModelCard

from hf_negteacher.cli import main
from hf_negteacher.data.rows import DataFormatError, PromptAnswer
from hf_negteacher.evaluation.perplexity import (
    EvalConfigError,
    EvalData,
    builtin_perplexity,
    check_window,
    load_eval_data,
)
from hf_negteacher.evaluation.report import EvalRow, card_block, to_eval_results, to_markdown, write_table
from hf_negteacher.hub import render_model_card, update_card_evaluation

PAIRS = [PromptAnswer("Define the noun cat:", " a small domesticated feline."),
         PromptAnswer("Define the verb enroll:", " to register formally as a participant.")]


@pytest.fixture
def saved_tiny(tiny_chat_model, smol_tokenizer, tmp_path):
    """A tiny model folder and a trained-looking output_dir holding a LoRA adapter for it."""
    from peft import LoraConfig, get_peft_model

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "run"
    tiny_chat_model.save_pretrained(base_dir)
    smol_tokenizer.save_pretrained(base_dir)
    get_peft_model(tiny_chat_model, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def _report_dir(adapter_dir):
    """Where `negteacher eval` wrote its report for the one dataset it scored."""
    (folder,) = (adapter_dir / "evaluations").iterdir()
    return folder


def _eval(base_dir, adapter_dir, *extra):
    main(["eval", "--model_name_or_path", str(base_dir), "--load_in_4bit", "false", "--output_dir", str(adapter_dir),
          "--use_cpu", "true", "--max_length", "128", "--teacher", "int3,blocks=0", *extra])


@pytest.mark.parametrize("content, args, message", [
    ("", (), r"is empty"),
    ('{"body": "some text"}\n', (), r"fits no accepted format.*or plain text in a 'text' column"),
    ('{"body": "some text"}\n', ("--text_column", "content"), r"plain text in a 'content' column"),
    ('{"text": "hello there"}\n', ("--window", "100000"), r"window=100000 is larger than the model's context of 256"),
    ('{"text": "hello there"}\n', ("--window", "8", "--stride", "9"), r"stride=9: expected 1 <= stride <= window=8"),
    ('{"text": "hello there"}\n', ("--engines", "builtin", "vllm"), r"engines: expected some of builtin, lm-eval"),
    ('{"prompt": "Define cat:", "completion": " a cat"}\n', ("--max_new_tokens", "0"),
     r"max_new_tokens=0: expected a positive integer"),
    ('{"prompt": " ", "completion": " a cat"}\n', (), r"row 0: a row has an empty prompt"),
    ('{"text": "hello there"}\n', ("--compare", "RUN", "RUN"), r"compare needs prompt/answer rows"),
    ('{"prompt": "Define cat:", "completion": " a cat"}\n', ("--contrastive_beta", "-1"),
     r"contrastive beta=-1.0: expected >= 0"),
    ('{"prompt": "Define cat:", "completion": " a cat"}\n', ("--contrastive_alpha", "0"),
     r"contrastive alpha=0.0: expected in \(0, 1\]"),
])
def test_bad_eval_input_is_a_clear_error_before_any_model_loads(saved_tiny, tmp_path, capsys, monkeypatch,
                                                                content, args, message):
    import hf_negteacher.cli.commands as cli

    monkeypatch.setattr(cli, "_load_policy", lambda *a: pytest.fail("a model was loaded before the check"))
    data = tmp_path / "held_out.jsonl"
    data.write_text(content)
    args = [str(saved_tiny[1]) if a == "RUN" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _eval(*saved_tiny, "--eval_dataset", str(data), *args)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_eval_on_plain_text_scores_sliding_windows_with_both_engines(saved_tiny, tmp_path, capsys):
    text = tmp_path / "story.txt"
    text.write_text("The broker bought the shares and sold them again before noon. " * 12)
    _eval(*saved_tiny, "--eval_dataset", str(text), "--window", "32", "--stride", "32")
    report = json.loads((_report_dir(saved_tiny[1]) / "eval.json").read_text())
    rows = {r["model"]: r["metrics"] for r in report["rows"]}
    assert list(rows) == ["unquantized checkpoint", "base", "base + adapter", "negative teacher"]
    for metrics in rows.values():
        assert metrics["word_perplexity/lm-eval"] == pytest.approx(metrics["word_perplexity/builtin"], rel=0.01)
        assert metrics["bits_per_byte/lm-eval"] == pytest.approx(metrics["bits_per_byte/builtin"], rel=0.01)
    assert rows["negative teacher"]["token_perplexity/builtin"] != rows["base"]["token_perplexity/builtin"]
    out = capsys.readouterr().out
    assert "| word ppl [builtin] |" in out and "lm_eval --model hf --model_args pretrained=" in out
    assert (_report_dir(saved_tiny[1]) / "lm_eval" / "negteacher_text_ppl.yaml").is_file()


def test_empty_text_file_and_text_rows_are_checked(smol_tokenizer, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataFormatError, match="is empty"):
        load_eval_data(str(tmp_path / "empty.txt"), smol_tokenizer)
    (tmp_path / "rows.jsonl").write_text('{"text": "fine"}\n{"text": ""}\n')
    with pytest.raises(DataFormatError, match="row 1: column 'text' must be non-empty text"):
        load_eval_data(str(tmp_path / "rows.jsonl"), smol_tokenizer)
    with pytest.raises(EvalConfigError, match="larger than the model's context"):
        check_window(2048, 1024, 1024)


def test_saved_datasets_folder_is_read(smol_tokenizer, tmp_path):
    from datasets import Dataset, DatasetDict

    split = Dataset.from_list([{"prompt": p.prompt, "completion": p.answer} for p in PAIRS])
    DatasetDict({"test": split}).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataFormatError, match=r"holds the splits \['test'\]: pass one split's folder"):
        load_eval_data(str(tmp_path / "dd"), smol_tokenizer)
    data = load_eval_data(str(tmp_path / "dd" / "test"), smol_tokenizer)
    assert data.pairs == PAIRS and not data.texts


def test_table_markdown_json_png_and_card_entries(tmp_path):
    rows = [EvalRow("4-bit base", {"answer_perplexity/builtin": 88.9, "answer_perplexity/lm-eval": 89.1}),
            EvalRow("4-bit base + adapter", {"answer_perplexity/builtin": 23.63, "answer_perplexity/lm-eval": 23.7})]
    markdown = to_markdown(rows, "bundled:eval")
    assert "| model | answer ppl [builtin] | answer ppl [lm-eval] |" in markdown
    assert "| 4-bit base + adapter | 23.630 | 23.700 |" in markdown
    write_table(rows, "bundled:eval", tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text())["rows"][1]["metrics"]["answer_perplexity/lm-eval"] == 23.7
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
    results = to_eval_results(rows, "bundled:eval")
    assert [(r.metric_name, r.metric_value) for r in results] == [("answer ppl [builtin]", 23.63),
                                                                  ("answer ppl [lm-eval]", 23.7)]
    card = render_model_card(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", repo_id="me/run", teacher={"q": "int3"},
                             dataset_name="bundled:train", training={"loss_type": "sigmoid", "beta": 0.1, "steps": 1,
                                                                     "learning_rate": 1e-4, "lora_r": 8,
                                                                     "lora_alpha": 16})
    card.save(tmp_path / "README.md")
    assert "No evaluation was attached" in (tmp_path / "README.md").read_text()
    for row in rows:
        row.rows = {"answer_perplexity/builtin": 2, "answer_perplexity/lm-eval": 2}
    assert to_markdown(rows, "bundled:eval").endswith("| rows used | 2 | 2 |")
    update_card_evaluation(tmp_path / "README.md", results, card_block(rows, "bundled:eval"))
    text = (tmp_path / "README.md").read_text()
    assert "No evaluation was attached" not in text
    assert "### wordnet-definitions-eval\n\n| metric | 4-bit base | 4-bit base + adapter | rows |" in text
    assert "| answer ppl [lm-eval] | 89.100 | 23.700 | 2 |" in text  # base beside adapter
    assert [r.metric_value for r in ModelCard.load(tmp_path / "README.md").data.eval_results] == [23.63, 23.7]

    other = [EvalRow(r.model, {"answer_perplexity/builtin": v}, {"answer_perplexity/builtin": 5})
             for r, v in zip(rows, (40.0, 30.0), strict=True)]
    update_card_evaluation(tmp_path / "README.md", to_eval_results(other, "bundled:reverse-eval"),
                           card_block(other, "bundled:reverse-eval"))
    again = [EvalRow(r.model, {"answer_perplexity/builtin": 20.0}) for r in rows]
    update_card_evaluation(tmp_path / "README.md", to_eval_results(again, "bundled:eval"),
                           card_block(again, "bundled:eval"))  # the same dataset: replaced, not added
    merged = ModelCard.load(tmp_path / "README.md")
    assert [(r.dataset_name, r.metric_value) for r in merged.data.eval_results] == [
        ("reverse-dictionary-eval", 30.0), ("wordnet-definitions-eval", 20.0)]
    assert merged.text.count("### wordnet-definitions-eval") == 1 and "| answer ppl [builtin] | 40.000 | 30.000 | 5 |" \
        in merged.text


def test_evaluate_module_loads_offline_by_path_and_gives_the_built_in_number(tiny_chat_model, smol_tokenizer,
                                                                              monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    from hf_negteacher.evaluate_metrics import metric_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(metric_path("answer_perplexity"))
    result = metric.compute(prompts=[p.prompt for p in PAIRS], answers=[p.answer for p in PAIRS],
                            model=tiny_chat_model.eval(), tokenizer=smol_tokenizer)
    expected = builtin_perplexity(tiny_chat_model, smol_tokenizer, EvalData("pairs", pairs=PAIRS))
    assert result["perplexity"] == pytest.approx(expected["answer_perplexity/builtin"], rel=1e-6)
    by_hand = [answer_logprob_by_hand(tiny_chat_model, smol_tokenizer, p.prompt, p.answer) for p in PAIRS]
    assert result["perplexity"] == pytest.approx(math.exp(-sum(s for s, _ in by_hand) / sum(n for _, n in by_hand)),
                                                 rel=1e-5)
    assert len(result["perplexities"]) == 2 and result["tokens"] == sum(
        len(smol_tokenizer(p.answer).input_ids) for p in PAIRS)
    with pytest.raises(ValueError, match="no evaluate module 'bleu'; available: answer_perplexity"):
        metric_path("bleu")
    assert torch.isfinite(torch.tensor(result["perplexities"])).all()


QA_ROWS = [{"prompt": f"Define the word {w}:", "completion": f" {d}"} for w, d in [
    ("cat", "a small domesticated feline"), ("enroll", "to register formally"), ("broker", "an agent who buys"),
    ("noon", "the middle of the day"), ("shard", "a broken piece of glass")]]


def test_eval_reports_generated_answers_and_preference_accuracy_and_compares_two_runs(
        saved_tiny, tiny_chat_model, tmp_path, capsys, monkeypatch):
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("NEGTEACHER_CACHE", str(tmp_path / "cache"))
    base_dir, run_a = saved_tiny
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA_ROWS))
    quality = ["--eval_dataset", str(data), "--engines", "builtin", "--generation_rows", "3", "--max_new_tokens", "6",
               "--negatives_max_new_tokens", "6"]
    card = (run_a / "README.md").read_text()
    _eval(base_dir, run_a, *quality)
    rows = {r["model"]: r["metrics"] for r in json.loads((_report_dir(run_a) / "eval.json").read_text())["rows"]}
    for metrics in rows.values():
        assert {"answer_perplexity/builtin", "rougeL", "chrF", "words", "cut_off_fraction", "preference_accuracy",
                "preference_margin"} <= set(metrics)
        assert 0 <= metrics["rougeL"] <= 1 and 0 <= metrics["preference_accuracy"] <= 1
    # the saved adapter is untrained (LoRA B = 0): the adapter row must equal the base row, value for value
    assert rows["base + adapter"] == pytest.approx(rows["base"], rel=1e-6)
    # the token KL from the unquantized checkpoint: none for the checkpoint itself, some for the crippled copy
    assert rows["unquantized checkpoint"]["checkpoint_kl/builtin"] == pytest.approx(0, abs=1e-5)
    assert rows["negative teacher"]["checkpoint_kl/builtin"] > 1e-4
    generations = [json.loads(line) for line in (_report_dir(run_a) / "generations.jsonl").read_text().splitlines()]
    assert [g["row"] for g in generations] == [0, 1, 2]  # one row per prompt, --generation_rows of them
    assert generations[0]["reference"] == QA_ROWS[0]["completion"] and "teacher_negative" in generations[0]
    assert len(generations[0]["models"]) == 4 and len(generations[0]["models"]["base + adapter"]["answers"]) == 1
    (cached,) = (tmp_path / "cache" / "heldout_negatives").iterdir()  # cached once, keyed by teacher
    negatives = json.loads(cached.read_text())["negatives"]
    usable = sum(bool(n.strip()) and n.strip() != row["completion"].strip()
                 for n, row in zip(negatives, QA_ROWS, strict=True))
    report = json.loads((_report_dir(run_a) / "eval.json").read_text())
    assert {row["rows"]["preference_accuracy"] for row in report["rows"]} == {usable}
    assert {row["rows"]["rougeL"] for row in report["rows"]} == {3}  # --generation_rows
    assert (f"preference: {usable} of 5 rows" in " ".join(report["notes"])) == (usable < 5)
    rows_used = (_report_dir(run_a) / "eval.md").read_text().splitlines()[-1]
    assert rows_used.startswith("| rows used | 5 |") and f"| {usable} |" in rows_used
    assert (run_a / "README.md").read_text() == card  # eval never rewrites a card unless asked
    _eval(base_dir, run_a, *quality, "--update_card", "true")
    in_card = {r.metric_name: r.metric_value for r in ModelCard.load(run_a / "README.md").data.eval_results}
    assert in_card["ROUGE-L"] == pytest.approx(rows["base + adapter"]["rougeL"], abs=1e-4)  # PEFT's own card
    assert "| pref. acc. |" in (run_a / "README.md").read_text()

    run_b = tmp_path / "run_b"
    torch.manual_seed(3)
    get_peft_model(tiny_chat_model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
                   ).save_pretrained(run_b)
    report = tmp_path / "report"
    _eval(base_dir, report, *quality, "--compare", str(run_a), str(run_b), "--bootstrap_resamples", "200")
    compare = json.loads((report / "compare.json").read_text())["differences"]
    assert compare["answer_perplexity/builtin"]["difference"] != 0
    assert compare["checkpoint_kl/builtin"]["difference"] < 0  # A's adapter is untrained, B's moves off the checkpoint
    ppl = compare["answer_perplexity/builtin"]
    assert ppl["half_width"] == pytest.approx((ppl["high"] - ppl["low"]) / 2) and ppl["half_width"] > 0
    assert f"| {ppl['half_width']:.3g} |" in (report / "compare.md").read_text()
    assert (report / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| ROUGE-L |" in (report / "compare.md").read_text()
    assert "| within noise | 5 |" in (report / "compare.md").read_text() or "| differs | 5 |" in (
        report / "compare.md").read_text()  # answer perplexity over all 5 rows
    _eval(base_dir, report, *quality, "--compare", str(run_a), str(run_a), "--bootstrap_resamples", "200")
    same = json.loads((report / "compare.json").read_text())["differences"]
    assert all((d["difference"], d["low"], d["high"]) == (0, 0, 0) for d in same.values())
    assert "within noise" in capsys.readouterr().out


def test_contrastive_beta_changes_the_models_answers_but_not_the_teachers(saved_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEGTEACHER_CACHE", str(tmp_path / "cache"))
    base_dir, run = saved_tiny
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA_ROWS))
    quality = ["--eval_dataset", str(data), "--engines", "builtin", "--generation_rows", "3", "--max_new_tokens", "6",
               "--negatives_max_new_tokens", "6", "--teacher", "int2,blocks=0"]

    def answers(*extra):
        _eval(base_dir, run, *quality, *extra)
        lines = (_report_dir(run) / "generations.jsonl").read_text().splitlines()
        return {name: [json.loads(line)["models"][name]["answers"] for line in lines]
                for name in json.loads(lines[0])["models"]}

    plain = answers()
    contrastive = answers("--contrastive_beta", "2", "--contrastive_alpha", "0.01")
    assert "contrastive decoding against the teacher (beta 2.0, alpha 0.01" in capsys.readouterr().out
    assert contrastive["negative teacher"] == plain["negative teacher"]
    assert contrastive["base + adapter"] != plain["base + adapter"]


def test_eval_on_the_reverse_dictionary_reports_exact_match_and_multiple_choice_by_both_engines(saved_tiny,
                                                                                              tmp_path):
    base_dir, run = saved_tiny
    _eval(base_dir, run, "--eval_dataset", "bundled:reverse-eval", "--num_eval_rows", "40", "--generation_rows", "8",
          "--max_new_tokens", "4", "--negatives_max_new_tokens", "4")
    report = json.loads((_report_dir(run) / "eval.json").read_text())
    for row in report["rows"]:
        metrics = row["metrics"]
        assert metrics["choice_accuracy/builtin"] == metrics["choice_accuracy/lm-eval"], row["model"]
        assert 0 <= metrics["exact_match"] <= metrics["accepted_match"] <= metrics["accepted_anywhere"] <= 1
        assert metrics["first_word_match"] <= metrics["accepted_anywhere"]
        assert 0 <= metrics["choice_accuracy_ended/builtin"] <= 1
    assert any("multiple choice: 40 items" in note for note in report["notes"])
    assert report["notes"][:2] == ["unquantized checkpoint: the local checkpoint base",
                                   "base: the local checkpoint base"]
    assert "multiple choice acc." in (_report_dir(run) / "eval.md").read_text()
    assert "first word right" in (_report_dir(run) / "eval.md").read_text()


def test_eval_on_definitions_reports_the_round_trip_judged_by_the_unquantized_checkpoint(saved_tiny, tmp_path):
    base_dir, run = saved_tiny
    _eval(base_dir, run, "--eval_dataset", "bundled:eval", "--num_eval_rows", "100", "--generation_rows", "6",
          "--max_new_tokens", "4", "--negatives_max_new_tokens", "4")
    report = json.loads((_report_dir(run) / "eval.json").read_text())
    scores = {row["model"]: row["metrics"]["roundtrip_accuracy"] for row in report["rows"]}
    assert set(scores) == {"unquantized checkpoint", "base", "base + adapter", "negative teacher"}
    assert all(value in {k / 6 for k in range(7)} for value in scores.values())  # 6 answers judged, 0/1 each
    assert any(note.startswith("round trip: the unquantized checkpoint") for note in report["notes"])
    assert "round trip" in (_report_dir(run) / "eval.md").read_text()

