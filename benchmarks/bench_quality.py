"""Does it help? Held-out quality of plain SFT (`trl.SFTTrainer`) and of the negative teacher, on two tasks
and two model families, with paired bootstrap intervals and their half-widths.

    python benchmarks/bench_quality.py                  # default: SmolLM2, both tasks, SFT + teacher (~75 min, 2 cores)
    python benchmarks/bench_quality.py --models gemma3  # the second family (about twice as long)
    python benchmarks/bench_quality.py --models smollm2 --tasks reverse --methods sft teacher self_play
    python benchmarks/bench_quality.py --full           # both models, every method, 3 seeds

Methods (`--methods`): `sft` and `teacher` (the default), and `int4`, `self_play`, `in_batch`, `token`,
`follow` (the teacher rebuilt from the policy), `band` (pairs in the informative band), `strength` (strength by
feedback), and the prompt-only modes `po_distill`, `po_self`, `po_self_equal` (`po_self` with the own sample
allowed as many tokens as the chosen answer), `po_teacher`, `po_delta`, `po_checkpoint`, `po_checkpoint_distill`
(SFT on the checkpoint's answers, `po_checkpoint`'s control), `po_checkpoint_band` (`po_checkpoint` with its
pairs in the band), `po_teacher_sigmoid` (`po_teacher` without its `sft` term), `po_teacher_norm` and
`po_teacher_beta5` (`po_teacher_sigmoid` with `po_delta`'s length normalization or its beta alone), and
`po_checkpoint_delta` (`po_checkpoint` with `po_delta`'s loss), which drop
the training rows' references and choose the policy's (or the unquantized checkpoint's) best of 4; and the
recovery arms `po_checkpoint_kd` (distillation from the checkpoint's next-token distribution on its answers),
`po_checkpoint_qdpo` (the checkpoint's answer against the policy's own sample) and `trl_distill`
(`trl.DistillationTrainer` itself: on-policy, the checkpoint as teacher).
Every run trains QLoRA (LoRA r16 on all linear layers of the NF4 policy, the product's setting; `--fp32`: LoRA
on the dequantized GGUF) on the same first `4 x steps` training rows, batch 4, lr 2e-4, one seed unless
`--seeds` says more. SFT is `trl.SFTTrainer` on prompt/completion rows (loss on the answer only); the
teacher is `NegativeTeacherTrainer` with its recipe's defaults (sigmoid + sft, the model's calibrated teacher).
Every model is scored on every row of its task's scored split (answer perplexity), on 500 multiple-choice items
(given a definition, which of 5 words: bare, and followed by the end of turn), and on the greedy answers to the
first 300 prompts: the reverse task's first word and any word against the accepted answers, the definitions'
round trip (the untrained checkpoint picks the word from each generated definition, the word masked). The
scored split is validation (`bundled:eval` / `bundled:reverse-eval` with `reverse-eval`'s items, read for about
45 settings) unless `--final` scores the sealed one (`bundled:test` / `bundled:reverse-test`, the same 500 words
for both tasks), which it does only for settings `sealed_choices.yaml` names, committed. Each finished run's
per-row scores and
greedy answers are saved under `--output` (default `benchmarks/runs/bench_quality`, committed: later sessions
and other machines add seeds to the same pool instead of training it again) and reused when the script runs
again (an interrupted benchmark resumes); the trained adapters go to `--adapters` (default
`runs/bench_quality/adapters`, not committed), one per method, steps, seed and precision whichever split
scores it: scoring a setting on the other split reuses its adapter. The checkpoint's chosen answers, which the
recovery runs of one task and seed share (`checkpoint_answers.py`), go to `--answers` (default
`benchmarks/runs/bench_quality/checkpoint_answers`, committed: writing them is most of a recovery run's time on the
CPU, so a series that spans machines writes them once, and each run's training answers can be read). The tables
are written to `quality.md` under `--output` and printed; `report.py` reprints them from the run files without a
model. `--validation N` scores the training split's last N rows instead (never trained on). `--train_only` trains
the adapters and scores nothing; `--untrained_only` scores the untrained model alone (with `--fp32`: the
unquantized checkpoint, recovery's ceiling); `--backfill` adds content-seeing rows to run files that predate them.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import yaml
from peft import LoraConfig, PeftModel
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, load_causal_lm, load_tokenizer, nf4_config
from hf_negteacher.atomic_write import atomic_write_json, atomic_write_text
from hf_negteacher.data.rows import load_rows, validate_rows, without_reference
from hf_negteacher.evaluation.generation_quality import QualitySettings, accepted_anywhere, first_word_match
from hf_negteacher.evaluation.multiple_choice import choice_items, choice_rows, round_trip_items, round_trip_rows
from hf_negteacher.evaluation.perplexity import EvalData, checkpoint_kl_rows
from hf_negteacher.evaluation.preference import heldout_negatives
from hf_negteacher.evaluation.runner import score_variant
from hf_negteacher.evaluation.statistics import metrics
from hf_negteacher.generation import GenerationSettings
from hf_negteacher.models import base_model_info, cache_dir, checkpoint_weights
from hf_negteacher.teacher.build import build_negative_teacher
from hf_negteacher.teacher.spec import TeacherConfig
from hf_negteacher.training.adapter_dtype import KeepsAdapterDtypeOnResume, adapter_in_float32

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_answers import CachedCheckpointSource  # noqa: E402  (sibling modules, run as a script)
from quality_runs import (  # noqa: E402
    FLOAT32_ADAPTER,
    METHOD_FIELDS,
    METHODS,
    NEGATIVES_AT_CHOSEN_LENGTH,
    RUNS,
    TASKS,
    UNTRAINED,
    prompt_only,
    report,
    run_file,
    run_name,
)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
MODELS = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
"""Model key -> recipe folder; the source and the calibrated teacher come from its negteacher.yaml."""


TRAINED_MARKER = "train_seconds.json"
"""Written in an adapter's folder after the adapter: its training finished."""
SAVE_EVERY = 24
"""Optimizer steps between the Trainer checkpoints a killed run resumes from (long budgets outlast a session)."""
CHOICE_ROWS = "bundled:reverse-eval"
VALIDATION_CHOICE_ROWS = "bundled:reverse-train"
TEST_CHOICE_ROWS = "bundled:reverse-test"
"""The same 500 words as `bundled:test`: on the sealed split, multiple choice and the round trip share items."""
SEALED_CHOICES = Path(__file__).resolve().parent / "sealed_choices.yaml"
"""The settings the sealed split scores, committed before it is scored; `--final` refuses anything else."""
NEGATIVE_SAMPLING = GenerationSettings(max_new_tokens=32, temperature=0.7, top_p=0.95, batch_size=16)
logger = logging.getLogger("bench_quality")


def recipe(model_key: str) -> tuple[str, str]:
    """(model source, teacher spec) from the model's shipped recipe."""
    flat = yaml.safe_load((RECIPES / MODELS[model_key] / "negteacher.yaml").read_text())
    return flat["model"]["model_name_or_path"], flat["teacher"]["teacher"]


def lora() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")


def load_policy(source: str, nf4: bool):
    return load_causal_lm(source, quantization=nf4_config() if nf4 else None)


def for_scoring(model):
    """An NF4 model with its weights dequantized once (transformers' `dequantize`): the same weight values,
    without unpacking every layer at every decoding step, which makes CPU generation several times slower."""
    if getattr(model, "is_loaded_in_4bit", False):
        model.dequantize()
    return model.eval()


def trained_for_scoring(source: str, nf4: bool, adapter: Path):
    """The saved adapter merged into the scoring weights (PEFT's `merge_and_unload`): the same function as the
    unmerged adapter, without PEFT's extra calls in every linear layer at every decoding step."""
    return PeftModel.from_pretrained(for_scoring(load_policy(source, nf4)), str(adapter)).merge_and_unload().eval()


def kept_for_scoring(source: str, nf4: bool, adapter: Path):
    """`trained_for_scoring` when the run's trained adapter is still kept at `adapter`, else None."""
    return trained_for_scoring(source, nf4, adapter) if saved_training_seconds(adapter) is not None else None


class TrainingSeconds(TrainerCallback):
    """A run's training seconds across resumes: every checkpoint records the seconds spent up to it, counting
    `credited()`, the seconds another run spent on the checkpoint answers this one read from disk."""

    def __init__(self, before: float, credited: Callable[[], float] = lambda: 0.0):
        self.before, self.start, self.credited = before, time.perf_counter(), credited

    def total(self) -> float:
        return self.before + time.perf_counter() - self.start + self.credited()

    def on_save(self, args, state, control, **kwargs):
        atomic_write_json(Path(args.output_dir) / f"checkpoint-{state.global_step}" / TRAINED_MARKER,
                          {"train_seconds": self.total()})


def last_whole_checkpoint(work: Path) -> str | None:
    """The newest checkpoint in `work` that a killed run finished writing (the Trainer writes a checkpoint's files
    in place; `TrainingSeconds` marks it after them), or None."""
    whole = [folder for folder in work.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if saved_training_seconds(folder) is not None]
    return str(max(whole, key=lambda folder: int(folder.name.rsplit("-", 1)[1]))) if whole else None


def saving() -> dict:
    """The Trainer fields that keep one checkpoint every `SAVE_EVERY` steps."""
    return dict(save_strategy="steps", save_steps=SAVE_EVERY, save_total_limit=1)


def resuming_in_its_dtype(trainer_class: type) -> type:
    """`trainer_class` resuming its QLoRA adapter in bfloat16, as it trained (`NegativeTeacherTrainer` does)."""
    return type(trainer_class.__name__, (KeepsAdapterDtypeOnResume, trainer_class), {})


def train_sft(policy, tokenizer, rows: list[dict], seed: int, steps: int, work: Path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    pairs = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    args = SFTConfig(output_dir=str(work), max_steps=steps, per_device_train_batch_size=4, learning_rate=2e-4,
                     max_length=128, gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(),
                     bf16=False, report_to=[], logging_steps=max(1, steps // 4), seed=seed, **saving())
    return resuming_in_its_dtype(SFTTrainer)(policy, args=args, train_dataset=Dataset.from_list(pairs),
                                             processing_class=tokenizer, peft_config=lora())


def train_trl_distill(policy, tokenizer, rows: list[dict], seed: int, steps: int, work: Path, source: str,
                      max_completion_length: int):
    """`trl.DistillationTrainer` as TRL ships it: on-policy (the NF4 policy's own samples, prompts alone), each
    scored by the unquantized checkpoint's next-token distribution under its default divergence (reverse KL)."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    prompts = [{"prompt": r["messages"][:-1]} for r in rows]
    args = DistillationConfig(output_dir=str(work), max_steps=steps, per_device_train_batch_size=4,
                              learning_rate=2e-4, max_completion_length=max_completion_length,
                              gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(), bf16=False,
                              report_to=[], logging_steps=max(1, steps // 4), seed=seed, **saving())
    teacher = load_policy(source, nf4=False).eval()
    return resuming_in_its_dtype(DistillationTrainer)(policy, teacher_model=teacher, args=args,
                                                      train_dataset=Dataset.from_list(prompts),
                                                      processing_class=tokenizer, peft_config=lora())


def train_negteacher(method: str, policy, tokenizer, rows: list[dict], seed: int, steps: int, teacher: str,
                     weights, work: Path, chosen_max_new_tokens: int | None = None, answers: Path | None = None):
    """`answers`: where the checkpoint's chosen answers are kept for the runs of other methods (see
    `checkpoint_answers`); None generates them all."""
    fields = dict(output_dir=str(work), use_cpu=not torch.cuda.is_available(), seed=seed, max_steps=steps,
                  per_device_train_batch_size=4, learning_rate=2e-4, beta=0.1, max_length=128,
                  gradient_checkpointing=False, report_to=[], logging_steps=max(1, steps // 4), **saving(),
                  negatives_max_new_tokens=NEGATIVE_SAMPLING.max_new_tokens,
                  negatives_temperature=NEGATIVE_SAMPLING.temperature, teacher=teacher)
    fields |= METHOD_FIELDS.get(method, {})
    if prompt_only(method):
        rows = [without_reference(row) for row in rows]
        fields["chosen_max_new_tokens"] = chosen_max_new_tokens
    if method in NEGATIVES_AT_CHOSEN_LENGTH and chosen_max_new_tokens is not None:
        fields["negatives_max_new_tokens"] = chosen_max_new_tokens
    cached = answers is not None and fields.get("chosen_source") == "checkpoint"
    return NegativeTeacherTrainer(policy, NegativeTeacherConfig(**fields), rows, processing_class=tokenizer,
                                  peft_config=lora(), teacher_weights=weights,
                                  chosen_source=CachedCheckpointSource(answers) if cached else None)


def train_adapter(method: str, seed: int, work: Path, source: str, nf4: bool, tokenizer, train_rows: list[dict],
                  steps: int, teacher_spec: str, weights, chosen_max_new_tokens: int | None,
                  answers: Path | None = None) -> float:
    """Train one run's adapter into `work` unless a finished one is there, resuming from the last checkpoint a
    killed run left; its training seconds. `answers`: see `train_negteacher`."""
    seconds = saved_training_seconds(work)
    if seconds is not None:
        logger.info("reusing the adapter trained at %s", work)
        return seconds
    policy = load_policy(source, nf4)
    if method in ("sft", "sft_fp32"):
        trainer = train_sft(policy, tokenizer, train_rows, seed, steps, work)
    elif method == "trl_distill":
        trainer = train_trl_distill(policy, tokenizer, train_rows, seed, steps, work, source,
                                    chosen_max_new_tokens or NEGATIVE_SAMPLING.max_new_tokens)
    else:
        trainer = train_negteacher(method, policy, tokenizer, train_rows, seed, steps, teacher_spec, weights, work,
                                   chosen_max_new_tokens, answers)
    if method in FLOAT32_ADAPTER:
        adapter_in_float32(trainer.model)
    resume = last_whole_checkpoint(work)
    if resume is not None:
        logger.info("resuming the run at %s", resume)
    chosen_source = getattr(trainer, "chosen_source", None)
    clock = TrainingSeconds(saved_training_seconds(Path(resume)) if resume else 0.0,
                            lambda: getattr(chosen_source, "seconds_read", 0.0))
    trainer.add_callback(clock)
    trainer.train(resume_from_checkpoint=resume)
    seconds = clock.total()
    trainer.save_model(str(work))
    atomic_write_json(work / TRAINED_MARKER, {"train_seconds": seconds})
    for checkpoint in work.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(checkpoint)
    return seconds


def score(model, tokenizer, data: EvalData, quality: QualitySettings, negatives, checkpoint) -> dict:
    """Every metric of one model; `checkpoint` (the unquantized one) judges the round trip and gives the token KL."""
    start = time.perf_counter()
    scored = score_variant(model, tokenizer, data, engines=["builtin"], window=1, stride=1,
                           batch_size=quality.batch_size, quality=quality, negatives=negatives,
                           judge=checkpoint if data.roundtrip_rows else None, checkpoint=checkpoint)
    return {"metrics": scored.row.metrics, "score_seconds": time.perf_counter() - start, "commit": git_commit(),
            "rows": {group: {k: v.tolist() for k, v in arrays.items()} for group, arrays in scored.rows.items()},
            "answers": [record["answers"] for record in scored.generations]}


def backfill(result_file: Path, data: EvalData, tokenizer, checkpoint, load_model) -> None:
    """Add the rows a run file scored before they existed: from its saved greedy answers, the reverse task's
    first-word and anywhere matches and the definitions' round trip (the `checkpoint` picks the word); and, where
    `load_model()` still finds the run's model (its adapter is kept), the token KL from the `checkpoint`."""
    result = json.loads(result_file.read_text())
    rows, answers = result["rows"], [samples[0] for samples in result["answers"]]
    pairs = data.pairs[:len(answers)]
    added = []
    if any(p.accepted for p in pairs) and "first_word_match" not in rows["generation"]:
        references = [[p.answer, *p.accepted] for p in pairs]
        rows["generation"]["first_word_match"] = [float(first_word_match(a, r)) for a, r in zip(answers, references,
                                                                                                 strict=True)]
        rows["generation"]["accepted_anywhere"] = [float(accepted_anywhere(a, r)) for a, r in zip(answers, references,
                                                                                                   strict=True)]
        added.append("first word / anywhere")
    if data.roundtrip_rows and "roundtrip" not in rows:
        items = round_trip_items(data.roundtrip_rows, answers, tokenizer)
        rows["roundtrip"] = {"roundtrip_correct": choice_rows(checkpoint, tokenizer, items)["choice_correct"].tolist()}
        added.append("round trip")
    if "checkpoint_kl" not in rows and (model := load_model()) is not None:
        kl = checkpoint_kl_rows(model, checkpoint, tokenizer, data.pairs, batch_size=32)
        rows["checkpoint_kl"] = {k: v.tolist() for k, v in kl.items()}
        added.append("token KL from the checkpoint")
    if added:
        result["metrics"] |= metrics({group: {k: np.array(v) for k, v in values.items()}
                                      for group, values in rows.items()})
        earlier = result.get("backfilled", [])  # one record per backfill, oldest first
        result["backfilled"] = [*(earlier if isinstance(earlier, list) else [earlier]), {"rows": added,
                                                                                         "commit": git_commit()}]
        atomic_write_json(result_file, result)
        logger.info("%s: added %s", result_file.name, ", ".join(added))


def sealed_choice_commit(task_key: str, args) -> str:
    """The commit of `SEALED_CHOICES`, after checking that it is committed as it is and names every requested
    setting: the sealed split scores only what was chosen before it was seen."""
    name = SEALED_CHOICES.relative_to(Path(__file__).resolve().parent.parent)
    status = subprocess.run(["git", "status", "--porcelain", "--", str(name)], capture_output=True, text=True,
                            cwd=SEALED_CHOICES.parent.parent).stdout.strip()
    commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(name)], capture_output=True, text=True,
                            cwd=SEALED_CHOICES.parent.parent).stdout.strip()
    if status or not commit:
        raise SystemExit(f"--final: {name} must be committed unchanged before the sealed split is scored")
    chosen = yaml.safe_load(SEALED_CHOICES.read_text())["settings"]
    for method in args.methods:
        if not any(c["task"] == task_key and c["steps"] == args.steps and method in c["methods"]
                   and set(args.seeds) <= set(c["seeds"]) for c in chosen):
            raise SystemExit(f"--final: {task_key}, {args.steps} steps, {method}, seeds {args.seeds} is not among the "
                             f"settings {name} chose; the sealed split scores only those")
    return commit


@functools.cache
def git_commit() -> str:
    """The commit this process started at: the code that scored, whatever is committed while it runs."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()


def saved_training_seconds(work: Path) -> float | None:
    """The training seconds of the adapter a finished run (scored on either split) saved in `work`, or None:
    the validation and held-out scores of a setting then come from one adapter."""
    finished = work / TRAINED_MARKER
    return json.loads(finished.read_text())["train_seconds"] if finished.is_file() else None


def split_kind(args) -> str:
    """What the scored rows are, for titles: settings are chosen on validation rows, the sealed test is read once."""
    return "sealed test" if args.final else "validation"


def answers_dir(args, model_key: str, task_key: str) -> Path:
    """Where the checkpoint's chosen answers are kept for the recovery runs of one model and task
    (`checkpoint_answers`)."""
    return Path(args.answers) / model_key / task_key


def adapter_dir(args, model_key: str, task_key: str, method: str, seed: int, nf4: bool) -> Path:
    return Path(args.adapters) / model_key / task_key / run_name(method, args.steps, seed, nf4,
                                                                  TASKS[task_key].chosen_max_new_tokens)


def train_only(model_key: str, task_key: str, args) -> None:
    """Train every requested run's adapter and score nothing: training never reads a scored split, so the
    adapters of a sealed-test comparison can train while its choice is still being written down."""
    source, teacher_spec = recipe(model_key)
    task = TASKS[task_key]
    tokenizer, weights = load_tokenizer(source), checkpoint_weights(source)
    train_rows = load_rows(task.train)[: 4 * args.steps]
    for method in args.methods:
        for seed in args.seeds:
            train_adapter(method, seed, adapter_dir(args, model_key, task_key, method, seed, not args.fp32), source,
                          not args.fp32, tokenizer, train_rows, args.steps, teacher_spec, weights,
                          task.chosen_max_new_tokens, answers_dir(args, model_key, task_key))


def benchmark(model_key: str, task_key: str, args, output: Path) -> tuple[str, set[str], float]:
    """One model on one task: its table, the commits its runs were scored at, and their recorded seconds."""
    source, teacher_spec = recipe(model_key)
    task = TASKS[task_key]
    nf4 = not args.fp32
    tokenizer = load_tokenizer(source)
    limit = args.heldout_rows
    scored, choice_rows = task.heldout, load_rows(CHOICE_ROWS)
    rows = load_rows(task.heldout)
    if args.final:
        scored, rows, choice_rows = task.test, load_rows(task.test), load_rows(TEST_CHOICE_ROWS)
    if args.validation:  # the training split's last rows, which no run here trains on
        scored = f"the last {args.validation} rows of {task.train}"
        train = load_rows(task.train)
        if len(train) - args.validation < 4 * args.steps:
            raise SystemExit(f"--validation {args.validation}: {task.train} has {len(train)} rows and the first "
                             f"{4 * args.steps} are trained on; expected at most {len(train) - 4 * args.steps}")
        rows = train[-args.validation:]
        choice_rows = load_rows(VALIDATION_CHOICE_ROWS)[-args.validation:]
    data = EvalData(scored, pairs=validate_rows(rows[:limit], tokenizer),
                    choices=choice_items(choice_rows, tokenizer)[:limit],
                    roundtrip_rows=round_trip_rows(choice_rows if args.final else rows)
                    if task_key == "definitions" else [])
    task_dir = (f"{task_key}-validation-{args.validation}" if args.validation
                else f"{task_key}-test" if args.final else task_key)
    quality = QualitySettings(generation_rows=args.generation_rows, max_new_tokens=task.max_new_tokens,
                              batch_size=args.batch_size)
    sizes = (f"rows={len(data.pairs)}-choices={len(data.choices)}-gen={quality.generation_rows}-pref={args.preference}"
             "-scored=dequantized")
    weights = checkpoint_weights(source)
    checkpoint = load_policy(source, nf4=False).eval()
    base = load_policy(source, nf4)
    described = base_model_info(base).weights
    negatives = None
    if args.preference:
        teacher = build_negative_teacher(base, config=TeacherConfig.from_spec(teacher_spec), weights=weights)
        negatives = heldout_negatives(teacher, tokenizer, data.pairs, NEGATIVE_SAMPLING,
                                      teacher_key=f"{teacher_spec}@{source}@nf4={nf4}", cache_dir=cache_dir())
        del teacher
    results: dict[str, list[dict]] = {}
    sealed = {"sealed_choice_commit": sealed_choice_commit(task_key, args)} if args.final else {}
    untrained_file = run_file(output, model_key, task_dir, UNTRAINED, 0, 0, nf4, sizes)
    if args.backfill and not untrained_file.is_file():
        raise SystemExit(f"--backfill: {untrained_file} was never scored; run without --backfill first")
    if not untrained_file.is_file():
        atomic_write_json(untrained_file, {**score(for_scoring(base), tokenizer, data, quality, negatives, checkpoint),
                                           **sealed})
    elif args.backfill:
        backfill(untrained_file, data, tokenizer, checkpoint, functools.partial(for_scoring, base))
    results[UNTRAINED] = [json.loads(untrained_file.read_text()) | {"seed": None}]
    del base
    train_rows = load_rows(task.train)[: 4 * args.steps]
    for method in args.methods:
        results[METHODS[method]] = []
        for seed in args.seeds:
            result_file = run_file(output, model_key, task_dir, method, args.steps, seed, nf4, sizes,
                                   task.chosen_max_new_tokens)
            if args.backfill and not result_file.is_file():
                logger.info("--backfill: %s was never scored; skipped", result_file.name)
                continue
            if not result_file.is_file():
                work = adapter_dir(args, model_key, task_key, method, seed, nf4)
                seconds = train_adapter(method, seed, work, source, nf4, tokenizer, train_rows, args.steps,
                                        teacher_spec, weights, task.chosen_max_new_tokens,
                                        answers_dir(args, model_key, task_key))
                model = trained_for_scoring(source, nf4, work)
                atomic_write_json(result_file, {**score(model, tokenizer, data, quality, negatives, checkpoint),
                                                "train_seconds": seconds, **sealed})
            elif args.backfill:
                kept = functools.partial(kept_for_scoring, source, nf4,
                                         adapter_dir(args, model_key, task_key, method, seed, nf4))
                backfill(result_file, data, tokenizer, checkpoint, kept)
            results[METHODS[method]].append(json.loads(result_file.read_text()) | {"seed": seed})
    results = {method: runs for method, runs in results.items() if runs}
    preference = f"; preference: reference vs one `{teacher_spec}` sample per row" if args.preference else ""
    preference += f"; training negatives of at most {NEGATIVE_SAMPLING.max_new_tokens} tokens"
    if task.chosen_max_new_tokens and NEGATIVES_AT_CHOSEN_LENGTH & set(args.methods):
        preference += f" ({task.chosen_max_new_tokens} in {', '.join(sorted(NEGATIVES_AT_CHOSEN_LENGTH))})"
    if any(prompt_only(m) for m in args.methods):
        preference += (f", prompt-only chosen answers of at most "
                       f"{task.chosen_max_new_tokens or NEGATIVE_SAMPLING.max_new_tokens}")
    choices_from = (f"the last {args.validation} rows of {VALIDATION_CHOICE_ROWS}" if args.validation
                    else TEST_CHOICE_ROWS if args.final else CHOICE_ROWS)
    kind = split_kind(args)
    title = (f"{model_key}, {task_key} ({task.train} -> {scored}): {described}, "
             f"{'QLoRA' if nf4 else 'LoRA'} r16, {args.steps} steps x 4 rows, teacher `{teacher_spec}`; "
             f"{len(data.pairs)} {kind} rows (perplexity), "
             f"{len(data.choices)} multiple-choice items (5 words, {choices_from}), "
             f"{min(quality.generation_rows, len(data.pairs))} greedy answers of at most {task.max_new_tokens} "
             f"tokens{preference}; scored with the {'NF4 weights dequantized once' if nf4 else 'fp32 weights'}"
             ", each adapter merged into them")
    runs = [r for runs in results.values() for r in runs]
    seconds = sum(r.get("train_seconds", 0) + r["score_seconds"] for r in runs)
    table = report(results, task, title, kind, tuple(args.against))
    return table, {r.get("commit", "?") for r in runs}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="both models, every method, seeds 0 1 2")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="default: smollm2 (--full: both)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="default: sft teacher")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 (--full: 0 1 2)")
    parser.add_argument("--against", nargs="+", default=[], choices=[m for m in METHODS if m not in ("sft", "teacher")],
                        help="also print every other trained method minus these (each must be in --methods); "
                             "SFT and the fixed teacher are always contrasted")
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of 4 rows")
    parser.add_argument("--heldout_rows", type=int, help="first N scored rows and choice items (default: all)")
    parser.add_argument("--validation", type=int, metavar="N",
                        help="score on the training split's last N rows (and multiple-choice items from "
                             "reverse-train's last N) instead of the validation split")
    parser.add_argument("--generation_rows", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=32, help="scoring and generation batch")
    parser.add_argument("--preference", action="store_true", help="also preference accuracy vs teacher samples")
    parser.add_argument("--fp32", action="store_true", help="LoRA on the dequantized GGUF instead of NF4 QLoRA")
    parser.add_argument("--final", action="store_true",
                        help="score the sealed test split (bundled:test, bundled:reverse-test), once, for settings "
                             "benchmarks/sealed_choices.yaml names and that is committed")
    parser.add_argument("--backfill", action="store_true",
                        help="add rows to finished run files that predate them: content-seeing (first word, "
                             "anywhere, round trip) from their saved answers, the token KL from the checkpoint "
                             "where the run's adapter is kept; trains nothing")
    parser.add_argument("--untrained_only", action="store_true",
                        help="score the untrained model alone (with --fp32: the unquantized checkpoint) and train "
                             "nothing")
    parser.add_argument("--train_only", action="store_true",
                        help="train the requested runs' adapters (kept under --adapters) and score nothing")
    parser.add_argument("--output", default=str(RUNS), help="finished runs' scores (committed) and quality.md")
    parser.add_argument("--adapters", default="runs/bench_quality/adapters", help="trained adapters (not committed)")
    parser.add_argument("--answers", default=str(RUNS / "checkpoint_answers"),
                        help="the checkpoint's chosen answers for the recovery runs (committed)")
    args = parser.parse_args()
    args.models = args.models or (list(MODELS) if args.full else ["smollm2"])
    args.methods = [] if args.untrained_only else args.methods or (list(METHODS) if args.full else ["sft", "teacher"])
    args.seeds = args.seeds or ([0, 1, 2] if args.full else [0])
    if missing := set(args.against) - set(args.methods):
        parser.error(f"--against {' '.join(sorted(missing))}: expected methods named in --methods "
                     f"({' '.join(args.methods)})")
    if args.final and args.validation:
        parser.error("--final scores the sealed split and --validation the training split's last rows: pick one")
    if args.validation is not None and args.validation < 1:
        parser.error(f"--validation {args.validation}: expected a number of rows >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    git_commit()  # cached now: every run file of this invocation names the commit it started at
    if args.train_only:
        for model_key in args.models:
            for task_key in args.tasks:
                train_only(model_key, task_key, args)
        return
    start = time.perf_counter()
    output = Path(args.output)
    sections, commits, compute = [], set(), 0.0
    for model_key in args.models:
        for task_key in args.tasks:
            table, scored_at, seconds = benchmark(model_key, task_key, args, output)
            sections.append(table)
            commits |= scored_at
            compute += seconds
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "trl", "peft", "bitsandbytes"))
    command = " ".join(["python benchmarks/bench_quality.py", *sys.argv[1:]])
    seeds = " ".join(map(str, args.seeds))
    lead = (f"`{command}`: {time.strftime('%Y-%m-%d')}, {platform.machine()} {device}, {versions}; commit "
            f"{git_commit()} (runs scored at {', '.join(sorted(commits))}); the runs in these tables took "
            f"{compute / 60:.0f} min to train and score (recorded per run; model loading not counted), this "
            f"invocation {time.perf_counter() - start:.0f} s (finished runs are reused). Seeds: {seeds}.")
    text = "\n\n".join([lead, *sections])
    atomic_write_text(output / "quality.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
