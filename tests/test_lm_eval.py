"""lm-evaluation-harness: our shipped tasks agree with the built-in scorer, through the Python API and the
plain `lm_eval` command line (base + PEFT adapter folder)."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from hf_negteacher.data.rows import PromptAnswer
from hf_negteacher.evaluation.lm_eval_glue import ANSWER_TASK, run_tasks, write_tasks
from hf_negteacher.evaluation.perplexity import EvalData, builtin_perplexity, lm_eval_metrics
from hf_negteacher.logprobs import sliding_window_logprob

lm_eval = pytest.importorskip("lm_eval")  # the [eval] extra; .ci/run installs it
TEXTS = [
    "A businessman who buys or sells for another in exchange for a commission. " * 6,
    "The act of enrolling, and everything that follows from it.",
]
PAIRS = [PromptAnswer("Define the noun cat:", " a small domesticated feline."),
         PromptAnswer("Define the verb enroll:", " to register formally as a participant or member."),
         PromptAnswer("Q: what is a broker?\nA:", " someone who buys or sells for another.")]


def test_built_in_rolling_perplexity_matches_lm_eval_within_one_percent(tiny_chat_model, smol_tokenizer, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    window = 16
    lm = HFLM(pretrained=tiny_chat_model, tokenizer=smol_tokenizer, max_length=window, batch_size=1)
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=i)
                for i, text in enumerate(TEXTS)]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    ours = [sliding_window_logprob(tiny_chat_model, lm.tok_encode(text), window=window, stride=window,
                                   prefix_token_id=lm.prefix_token_id)[0] for text in TEXTS]
    assert len(lm.tok_encode(TEXTS[0])) > 4 * window  # several windows
    for a, b in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, rel=0.01)

    data = EvalData("texts", texts=TEXTS)
    builtin = builtin_perplexity(tiny_chat_model, smol_tokenizer, data, window=window, stride=window)
    through_task = lm_eval_metrics(tiny_chat_model, smol_tokenizer, data, window=window)
    words = sum(len(re.split(r"\s+", t.strip())) for t in TEXTS)
    assert builtin["word_perplexity/builtin"] == pytest.approx(math.exp(-sum(ours) / words), rel=1e-4)
    for metric in ("word_perplexity", "bits_per_byte"):
        assert through_task[f"{metric}/lm-eval"] == pytest.approx(builtin[f"{metric}/builtin"], rel=0.01)
    overlapping = builtin_perplexity(tiny_chat_model, smol_tokenizer, data, window=window, stride=window // 2)
    assert overlapping["token_perplexity/builtin"] != pytest.approx(builtin["token_perplexity/builtin"], rel=1e-3)


def test_answer_only_task_matches_the_built_in_answer_perplexity(tiny_chat_model, smol_tokenizer, tmp_path):
    data = EvalData("pairs", pairs=PAIRS)
    builtin = builtin_perplexity(tiny_chat_model, smol_tokenizer, data)
    tasks = write_tasks(tmp_path, smol_tokenizer, pairs=PAIRS)
    theirs = run_tasks(tiny_chat_model, smol_tokenizer, tmp_path, tasks, max_length=64)
    assert theirs["answer_perplexity"] == pytest.approx(builtin["answer_perplexity/builtin"], rel=1e-3)
    assert theirs["answer_bits_per_byte"] == pytest.approx(builtin["answer_bits_per_byte/builtin"], rel=1e-3)
    rows = [json.loads(line) for line in (tmp_path / f"{ANSWER_TASK}.jsonl").read_text().splitlines()]
    assert [r["answer_tokens"] for r in rows] == [len(smol_tokenizer(p.answer).input_ids) for p in PAIRS]


def test_plain_lm_eval_command_line_scores_a_saved_adapter(tiny_chat_model, smol_tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir, adapter_dir, output = tmp_path / "base", tmp_path / "adapter", tmp_path / "results"
    tiny_chat_model.save_pretrained(base_dir)
    smol_tokenizer.save_pretrained(base_dir)
    torch.manual_seed(1)
    model = get_peft_model(tiny_chat_model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(adapter_dir)
    expected = builtin_perplexity(model.eval(), smol_tokenizer, EvalData("pairs", pairs=PAIRS))
    with model.disable_adapter():
        without = builtin_perplexity(model, smol_tokenizer, EvalData("pairs", pairs=PAIRS))
    assert without["answer_perplexity/builtin"] != pytest.approx(expected["answer_perplexity/builtin"], rel=1e-3)
    task_dir = tmp_path / "tasks"
    write_tasks(task_dir, smol_tokenizer, pairs=PAIRS)
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={base_dir},peft={adapter_dir},dtype=float32", "--include_path", str(task_dir),
                    "--tasks", ANSWER_TASK, "--device", "cpu", "--batch_size", "2", "--output_path", str(output)],
                   check=True, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    (results_file,) = output.rglob("results*.json")
    reported = json.loads(results_file.read_text())["results"][ANSWER_TASK]["answer_perplexity,none"]
    assert reported == pytest.approx(expected["answer_perplexity/builtin"], rel=1e-3)


def test_multiple_choice_task_agrees_exactly_with_the_built_in_accuracy(tiny_chat_model, smol_tokenizer, tmp_path):
    from hf_negteacher.data.rows import load_rows
    from hf_negteacher.evaluation.multiple_choice import choice_items, choice_rows

    items = choice_items(load_rows("bundled:reverse-eval")[:60], smol_tokenizer)
    ours = choice_rows(tiny_chat_model.eval(), smol_tokenizer, items)["choice_correct"]
    tasks = write_tasks(tmp_path, smol_tokenizer, pairs=PAIRS, choices=items)
    theirs = run_tasks(tiny_chat_model, smol_tokenizer, tmp_path, tasks, max_length=128)
    assert theirs["choice_accuracy"] == ours.mean()  # the same argmax on every item, not just on average
    assert 0 < ours.mean() < 1
