"""Contrastive decoding against the negative teacher: answer quality and slowdown vs greedy and sampling.

    python benchmarks/bench_decoding.py            # about 20 min on 2 CPU cores

The policy is an SFT adapter (`trl.SFTTrainer` as in `bench_quality.py`, LoRA r16 on the Q4_1 GGUF dequantized
to fp32, 12 steps x 4 rows, seed 0; trained here if missing), and that base with the adapter off. A sweep
over beta and alpha runs on held-out rows 0-99; the best setting by ROUGE-L is then checked against greedy
on rows 100-199, which took no part in choosing it. Differences use a paired bootstrap over rows.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from bench_quality import load_policy, train_sft
from peft import PeftModel

from hf_negteacher import load_tokenizer
from hf_negteacher.data.rows import load_rows, validate_rows
from hf_negteacher.evaluation.generation_quality import QualitySettings, generation_rows
from hf_negteacher.evaluation.report import metric_label
from hf_negteacher.evaluation.statistics import metrics, paired_bootstrap
from hf_negteacher.models import DEFAULT_MODEL, base_model_info, checkpoint_weights
from hf_negteacher.teacher.build import build_negative_teacher
from hf_negteacher.teacher.contrastive import ContrastSettings, contrast_with, teacher_for_decoding
from hf_negteacher.teacher.spec import TeacherConfig
from hf_negteacher.training.config import DEFAULT_TEACHER

SHOWN = ["rougeL", "chrF", "words", "cut_off_fraction"]
BETAS = [0.1, 0.25, 0.5, 1.0]
ALPHAS = [0.01, 0.1, 0.3]
logger = logging.getLogger("bench_decoding")


def decode(model, tokenizer, pairs, quality: QualitySettings, teacher, contrast: ContrastSettings | None):
    """Per-row generation scores, seconds, and generated tokens (answers re-tokenized, plus end of turn)."""
    start = time.perf_counter()
    rows, records = generation_rows(model, tokenizer, pairs, quality,
                                    contrast_with(teacher, contrast) if contrast else None)
    seconds = time.perf_counter() - start
    tokens = sum(len(tokenizer(a, add_special_tokens=False).input_ids) + 1 for r in records for a in r["answers"])
    return {"rows": rows, "seconds": seconds, "tokens": tokens}


def table(results: dict[str, dict], baseline: str) -> str:
    header = ("| decoding | " + " | ".join(metric_label(k) for k in SHOWN)
              + f" | s/token | x {baseline} | ROUGE-L - {baseline} [95% CI] | chrF - {baseline} [95% CI] |")
    lines = [header, "|---" * (len(SHOWN) + 5) + "|"]
    base = results[baseline]
    for name, result in results.items():
        scored = metrics({"generation": result["rows"]})
        cells = [f"{scored[k]:.4g}" for k in SHOWN]
        per_token = result["seconds"] / result["tokens"]
        ratio = per_token / (base["seconds"] / base["tokens"])
        diffs = paired_bootstrap({"generation": result["rows"]}, {"generation": base["rows"]}, resamples=2000)
        intervals = [f"{diffs[k].difference:+.3g} [{diffs[k].low:+.3g}, {diffs[k].high:+.3g}]"
                     f"{'*' if diffs[k].excludes_zero else ''}" for k in ("rougeL", "chrF")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {per_token:.3f} | {ratio:.2f} | "
                     + " | ".join(intervals) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100, help="Held-out rows per split (sweep, then check)")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--output", default="runs/bench_quality")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    weights = checkpoint_weights(DEFAULT_MODEL)
    held_out = validate_rows(load_rows("bundled:eval")[: 2 * args.rows], tokenizer)
    sweep_rows, check_rows = held_out[: args.rows], held_out[args.rows:]
    adapter = Path(args.output) / "adapters" / "decoding-sft-trl-lora-fp32-steps=12-seed=0"
    if not (adapter / "adapter_config.json").is_file():
        trainer = train_sft(load_policy(DEFAULT_MODEL, nf4=False), tokenizer, load_rows("bundled:train")[:48], 0, 12,
                            adapter)
        trainer.train()
        trainer.save_model(str(adapter))
    policy = PeftModel.from_pretrained(load_policy(DEFAULT_MODEL, nf4=False), str(adapter)).eval()
    teacher = build_negative_teacher(policy, config=TeacherConfig.from_spec(DEFAULT_TEACHER), weights=weights)
    greedy = QualitySettings(generation_rows=args.rows, max_new_tokens=args.max_new_tokens)
    sampling = QualitySettings(generation_rows=args.rows, max_new_tokens=args.max_new_tokens, temperature=0.7,
                               top_p=0.95)

    sweep: dict[str, dict] = {}
    with teacher_for_decoding(teacher):
        decode(policy, tokenizer, sweep_rows[:4], greedy, teacher, ContrastSettings())  # warm-up, not timed
        sweep["greedy"] = decode(policy, tokenizer, sweep_rows, greedy, teacher, None)
        sweep["sampling (T 0.7, top-p 0.95)"] = decode(policy, tokenizer, sweep_rows, sampling, teacher, None)
        settings = [ContrastSettings(beta=b, alpha=0.1) for b in BETAS]
        settings += [ContrastSettings(beta=0.5, alpha=a) for a in ALPHAS if a != 0.1]
        for contrast in settings:
            sweep[f"contrastive beta {contrast.beta}, alpha {contrast.alpha}"] = decode(
                policy, tokenizer, sweep_rows, greedy, teacher, contrast)
        best = max(settings, key=lambda c: sweep[f"contrastive beta {c.beta}, alpha {c.alpha}"]["rows"]["rougeL"]
                   .mean())
        chosen = f"contrastive beta {best.beta}, alpha {best.alpha}"
        check = {"greedy": decode(policy, tokenizer, check_rows, greedy, teacher, None),
                 chosen: decode(policy, tokenizer, check_rows, greedy, teacher, best)}
        with policy.disable_adapter():
            base = {"greedy": decode(policy, tokenizer, sweep_rows, greedy, teacher, None),
                    chosen: decode(policy, tokenizer, sweep_rows, greedy, teacher, best)}

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    text = "\n\n".join([
        f"policy: {base_model_info(policy).weights} + an SFT adapter (trl.SFTTrainer, LoRA r16, 12 steps x 4 rows, "
        f"seed 0) on {device}; "
        f"teacher (amateur) {DEFAULT_TEACHER}, dequantized once per generate call; at most {args.max_new_tokens} "
        f"new tokens, batch 16; * = interval excludes 0",
        f"### sweep: held-out rows 0-{args.rows - 1}", table(sweep, "greedy"),
        f"### check of the sweep's best ({chosen}) on rows {args.rows}-{2 * args.rows - 1}", table(check, "greedy"),
        f"### the same on the untrained base (adapter off), rows 0-{args.rows - 1}", table(base, "greedy"),
    ])
    output = Path(args.output) / "decoding.md"
    with contextlib.suppress(OSError):
        output.write_text(text + "\n")
    print(text)
    logger.info("sweep best by ROUGE-L: beta %s alpha %s (ROUGE-L %.4f vs greedy %.4f)", best.beta, best.alpha,
                np.mean(sweep[chosen]["rows"]["rougeL"]), np.mean(sweep["greedy"]["rows"]["rougeL"]))


if __name__ == "__main__":
    main()
