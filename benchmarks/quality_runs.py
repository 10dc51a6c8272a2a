"""What `bench_quality.py` runs and how its tables read, without torch: the tasks, the methods and their
labels, where each run's file lives, and the tables (scores, then differences with intervals over training seeds
and rows). `bench_quality.py` trains and scores; `report.py` reprints every table from the committed run files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_negteacher.evaluation.report import metric_label
from hf_negteacher.evaluation.statistics import seed_row_bootstrap

RUNS = Path(__file__).resolve().parent / "runs" / "bench_quality"
MIN_SEEDS = 3
"""Below this many seeds the intervals are over rows only (and the table's title says so)."""


@dataclass(frozen=True)
class Task:
    train: str
    heldout: str
    test: str
    """The sealed split: scored once (`--final`), for the settings `SEALED_CHOICES` names."""
    max_new_tokens: int
    shown: tuple[str, ...]
    chosen_max_new_tokens: int | None = None
    """Prompt-only methods' chosen answers (None: `NEGATIVE_SAMPLING`'s limit); long enough to end."""


COMMON_METRICS = ("answer_perplexity/builtin", "choice_accuracy/builtin", "choice_accuracy_ended/builtin",
                  "checkpoint_kl/builtin")
TASKS = {"reverse": Task("bundled:reverse-train", "bundled:reverse-eval", "bundled:reverse-test", 8,
                        (*COMMON_METRICS, "first_word_match", "accepted_anywhere", "exact_match", "accepted_match")),
         "definitions": Task("bundled:train", "bundled:eval", "bundled:test", 48,
                             (*COMMON_METRICS, "roundtrip_accuracy", "rougeL", "chrF", "cut_off_fraction"),
                             chosen_max_new_tokens=80)}
"""The crisp task first: a reverse-dictionary answer is plainly right or wrong. The untrained model's definitions
run past 32 tokens (the negatives' limit) 92-100% of the time: their chosen side gets 80 (prompt + answer fit in
`max_length` 128)."""
METHODS = {"sft": "SFT (trl.SFTTrainer, loss on the answer)",
           "sft_fp32": "SFT (trl.SFTTrainer, loss on the answer, float32 LoRA weights)",
           "teacher": "negteacher, the model's calibrated teacher (sigmoid + sft)",
           "int4": "negteacher, int4 teacher (weaker)",
           "self_play": "self-play (the policy's own samples, online)",
           "in_batch": "in-batch (other rows' references)",
           "token": "token-level (sft + teacher_unlikelihood, no generation)",
           "follow": "negteacher, the teacher following the policy (rebuilt every 4 steps)",
           "band": "negteacher, pairs in the band (margin <= 1)",
           "strength": "negteacher, strength by feedback (reward accuracy target 0.8)",
           "po_distill": "prompts alone: SFT on the policy's best-of-4 answers (self-distillation)",
           "po_self": "prompts alone: policy's best-of-4 vs its own sample",
           "po_self_equal": "prompts alone: policy's best-of-4 vs its own sample, both at the chosen length limit",
           "po_teacher": "prompts alone: policy's best-of-4 vs the teacher (sigmoid + sft)",
           "po_delta": "prompts alone: policy's best-of-4 vs the teacher (sigmoid_norm, beta 5)",
           "po_checkpoint": "prompts alone: the unquantized checkpoint's best-of-4 vs the teacher",
           "po_checkpoint_distill": "prompts alone: SFT on the unquantized checkpoint's best-of-4 answers",
           "po_teacher_sigmoid": "prompts alone: policy's best-of-4 vs the teacher (sigmoid alone)",
           "po_teacher_norm": "prompts alone: policy's best-of-4 vs the teacher (sigmoid_norm alone, beta 0.1)",
           "po_teacher_beta5": "prompts alone: policy's best-of-4 vs the teacher (sigmoid alone, beta 5)",
           "po_checkpoint_delta": ("prompts alone: the unquantized checkpoint's best-of-4 vs the teacher "
                                   "(sigmoid_norm, beta 5)"),
           "po_checkpoint_band": ("prompts alone: the unquantized checkpoint's best-of-4 vs the teacher, "
                                  "pairs in the band (margin <= 1)"),
           "po_checkpoint_near": ("prompts alone: the unquantized checkpoint's best-of-4 vs an int4 copy (a near miss, "
                                  "not the calibrated teacher)"),
           "po_checkpoint_kd": ("prompts alone: distillation from the unquantized checkpoint's next-token "
                                "distribution on its best-of-4 answers (forward KL)"),
           "po_checkpoint_qdpo": ("prompts alone: the unquantized checkpoint's best-of-4 vs the policy's own sample "
                                  "(QDPO)"),
           "po_checkpoint_kd_qdpo": ("prompts alone: distillation from the unquantized checkpoint's next-token "
                                     "distribution on its best-of-4 answers, plus DPO against the policy's own sample"),
           "po_checkpoint_kd_teacher": ("prompts alone: distillation from the unquantized checkpoint's next-token "
                                        "distribution on its best-of-4 answers, plus DPO against the teacher"),
           "trl_distill": ("prompts alone: trl.DistillationTrainer, on-policy (the NF4 policy's samples), reverse "
                           "KL to the unquantized checkpoint, float32 LoRA weights")}
"""Method key -> label (the label also names its result files: a relabelled method never reuses results).
`sft` trains TRL's QLoRA adapter as TRL casts it, in bfloat16 (with float32 compute here); `FLOAT32_ADAPTER`
methods keep it in float32, as every negteacher method does without bf16 compute."""
FLOAT32_ADAPTER = {"sft_fp32", "trl_distill"}
PROMPT_ONLY = {"chosen_source": "policy", "chosen_num_samples": 4}
METHOD_FIELDS = {"int4": {"teacher": "int4"}, "self_play": {"negative_source": "self"},
                 "in_batch": {"negative_source": "in_batch"}, "token": {"loss_type": ["sft", "teacher_unlikelihood"]},
                 "follow": {"teacher_follow_every": 4}, "band": {"band_max_margin": 1.0},
                 "strength": {"teacher_strength_target": 0.8},
                 "po_distill": {**PROMPT_ONLY, "loss_type": ["sft"]},
                 "po_self": {**PROMPT_ONLY, "negative_source": "self"},
                 "po_self_equal": {**PROMPT_ONLY, "negative_source": "self"}, "po_teacher": PROMPT_ONLY,
                 "po_delta": {**PROMPT_ONLY, "loss_type": ["sigmoid_norm"], "beta": 5.0},
                 "po_checkpoint": {**PROMPT_ONLY, "chosen_source": "checkpoint"},
                 "po_checkpoint_distill": {**PROMPT_ONLY, "chosen_source": "checkpoint", "loss_type": ["sft"]},
                 "po_teacher_sigmoid": {**PROMPT_ONLY, "loss_type": ["sigmoid"]},
                 "po_teacher_norm": {**PROMPT_ONLY, "loss_type": ["sigmoid_norm"]},
                 "po_teacher_beta5": {**PROMPT_ONLY, "loss_type": ["sigmoid"], "beta": 5.0},
                 "po_checkpoint_delta": {**PROMPT_ONLY, "chosen_source": "checkpoint", "loss_type": ["sigmoid_norm"],
                                         "beta": 5.0},
                 "po_checkpoint_band": {**PROMPT_ONLY, "chosen_source": "checkpoint", "band_max_margin": 1.0},
                 "po_checkpoint_near": {**PROMPT_ONLY, "chosen_source": "checkpoint", "teacher": "int4"},
                 "po_checkpoint_kd": {**PROMPT_ONLY, "chosen_source": "checkpoint",
                                      "loss_type": ["sft", "checkpoint_kd"], "loss_weights": [0.0, 1.0]},
                 "po_checkpoint_qdpo": {**PROMPT_ONLY, "chosen_source": "checkpoint", "negative_source": "self"},
                 "po_checkpoint_kd_qdpo": {**PROMPT_ONLY, "chosen_source": "checkpoint", "negative_source": "self",
                                           "loss_type": ["sigmoid", "checkpoint_kd"], "loss_weights": [1.0, 1.0]},
                 "po_checkpoint_kd_teacher": {**PROMPT_ONLY, "chosen_source": "checkpoint",
                                              "loss_type": ["sigmoid", "checkpoint_kd"], "loss_weights": [1.0, 1.0]}}
"""NegativeTeacherConfig fields of each method beside the common ones; `chosen_source` other than the reference
trains on the rows' prompts alone (their references dropped)."""
NEGATIVES_AT_CHOSEN_LENGTH = {"po_self_equal"}
"""Methods whose negatives get the chosen answers' token limit, so the pairs cannot differ by where they are cut."""
UNTRAINED = "untrained"


def prompt_only(method: str) -> bool:
    return method == "trl_distill" or METHOD_FIELDS.get(method, {}).get("chosen_source", "reference") != "reference"


def rows_of(result: dict) -> dict:
    return {group: {k: np.array(v) for k, v in arrays.items()} for group, arrays in result["rows"].items()}


def run_name(method: str, steps: int, seed: int, nf4: bool, chosen_max_new_tokens: int | None = None) -> str:
    """What a run trains: its adapter's folder name, and the start of its result files' names."""
    slug = re.sub(r"\W+", "_", METHODS.get(method, method)).strip("_")  # a relabelled method never reuses results
    if prompt_only(method) and chosen_max_new_tokens is not None:
        slug += f"-chosen_tokens={chosen_max_new_tokens}"
    return f"{slug}-steps={steps}-seed={seed}-nf4={nf4}"


def run_file(output: Path, model_key: str, task: str, method: str, steps: int, seed: int, nf4: bool,
             sizes: str, chosen_max_new_tokens: int | None = None) -> Path:
    return output / model_key / task / f"{run_name(method, steps, seed, nf4, chosen_max_new_tokens)}-{sizes}.json"

def find_run(output: Path, model_key: str, task_dir: str, method: str, steps: int, seed: int, nf4: bool = True
             ) -> dict | None:
    """A finished run's file (whatever its sizes suffix), read; None when it was never run."""
    stem = run_name(method, steps, seed, nf4, TASKS[task_dir.split("-")[0]].chosen_max_new_tokens)
    matches = sorted((output / model_key / task_dir).glob(f"{stem}-rows=*.json"))
    return json.loads(matches[0].read_text()) if matches else None


def signed(value: float) -> str:
    """A difference to 3 digits, with rounding noise of a mean over identical scores shown as 0."""
    return f"{0.0 if abs(value) < 1e-12 else value:+.3g}"


def interval_kind(results: dict[str, list[dict]], scored: str) -> str:
    """How a table's intervals were drawn, in words for its title."""
    counts = {len(runs) for method, runs in results.items() if method != UNTRAINED}
    two_level = f"95% two-level paired bootstrap: training seeds, then {scored} rows (seed by seed after the interval)"
    if min(counts) >= MIN_SEEDS:
        return two_level
    if max(counts) >= MIN_SEEDS:
        return (f"{two_level} for methods with {MIN_SEEDS} or more seeds; over {scored} rows only for methods with "
                "fewer (the seeds column), whose training-seed variance is not in the interval")
    return (f"95% paired bootstrap over {scored} rows only: {min(counts)} seed(s), fewer than {MIN_SEEDS}, so "
            "training-seed variance is not in the interval")


def paired_runs(runs: list[dict], against: list[dict]) -> tuple[list[dict], list[dict]]:
    """The runs of both sides trained with the same `seed`; `against`'s single untrained run stands for every
    seed."""
    if against[0]["seed"] is None:
        return runs, against
    common = {r["seed"] for r in runs} & {r["seed"] for r in against}
    return [r for r in runs if r["seed"] in common], [r for r in against if r["seed"] in common]


def difference_table(title: str, results: dict[str, list[dict]], against: str, shown, scored: str) -> list[str]:
    """Each method minus `against`: the mean over seeds, its interval (`seed_row_bootstrap`), * where it excludes
    0, and each seed's own difference."""
    lines = [f"{title}, {interval_kind(results, scored)}; * = the interval excludes 0", "",
             "| method | " + " | ".join(metric_label(k) for k in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for method, runs in results.items():
        if method == against:
            continue
        a, b = paired_runs(runs, results[against])
        if not a:
            continue
        diffs = seed_row_bootstrap([rows_of(r) for r in a], [rows_of(r) for r in b], min_seeds=MIN_SEEDS)
        lines.append(f"| {method} | " + " | ".join(
            f"{signed(diffs[k].difference)} [{signed(diffs[k].low)}, {signed(diffs[k].high)}]"
            f"{'*' if diffs[k].excludes_zero else ''}"
            + (f" ({' / '.join(signed(d) for d in diffs[k].per_seed)})" if len(a) > 1 else "")
            if k in diffs else "" for k in shown) + " |")
    return lines


def report(results: dict[str, list[dict]], task: Task, title: str, scored: str = "validation",
           against: tuple[str, ...] = (), yardsticks: dict[str, list[dict]] | None = None) -> str:
    """The table of scores, then each method against the untrained model, SFT, the fixed teacher (when run) and
    each method in `against`. `yardsticks`: rows shown in the score table only (the unquantized checkpoint)."""
    shown = [k for k in task.shown if any(k in runs[0]["metrics"] for runs in results.values())]
    sft = results.get(METHODS["sft"])
    header = "| method | seeds | train min | / SFT | " + " | ".join(metric_label(k) for k in shown) + " |"
    lines = [f"#### {title}", "", header, "|---" * (len(shown) + 4) + "|"]
    for method, runs in {**(yardsticks or {}), **results}.items():
        cells = []
        for key in shown:
            values = np.array([r["metrics"][key] for r in runs if key in r["metrics"]])
            spread = f" ± {values.std(ddof=1):.2g}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.4g}{spread}" if len(values) else "")
        minutes = np.mean([r["train_seconds"] for r in runs]) / 60 if "train_seconds" in runs[0] else None
        ratio = (f"{minutes * 60 / np.mean([r['train_seconds'] for r in sft]):.2f}x" if sft and minutes else "")
        lines.append(f"| {method} | {len(runs)} | {'' if minutes is None else f'{minutes:.1f}'} | {ratio} | "
                     + " | ".join(cells) + " |")
    trained = {m: r for m, r in results.items() if m != UNTRAINED}
    if trained:  # `--untrained_only` scores the untrained model alone
        lines += ["", *difference_table("method - untrained", results, UNTRAINED, shown, scored)]
    if sft and len(trained) > 1:
        lines += ["", *difference_table("method - SFT", trained, METHODS["sft"], shown, scored)]
    variants = {m: r for m, r in results.items() if m not in (UNTRAINED, METHODS["sft"])}
    contrasts = {"the fixed teacher": METHODS["teacher"]}  # the following teacher, the band, ...: against it
    contrasts |= {METHODS[m]: METHODS[m] for m in against}
    for name, label in contrasts.items():
        if label in variants and len(variants) > 1:
            lines += ["", *difference_table(f"method - {name}", variants, label, shown, scored)]
    return "\n".join(lines)
