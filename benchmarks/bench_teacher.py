"""Negative teacher: bits per weight, memory against the NF4 policy, generation throughput vs fp32.

    python benchmarks/bench_teacher.py [--batch 8] [--new-tokens 32] [--repeats 2]
    python benchmarks/bench_teacher.py --memory-only    # no timing: safe beside other work on the machine

Every number in one run, on the same prompts (the bundled eval split), batch and length; run it alone on the
machine for the speeds. The table is printed and saved with its setting as a run file under `--output` (default
`benchmarks/runs/bench_teacher/`, committed), which `report.py` reprints.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from hf_negteacher import TeacherConfig, build_negative_teacher, load_causal_lm, load_tokenizer, memory_report
from hf_negteacher.atomic_write import atomic_write_json
from hf_negteacher.data.rows import load_rows, to_prompt_answer
from hf_negteacher.models import DEFAULT_MODEL, base_model_info, nf4_config
from hf_negteacher.teacher.layer import materialized

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import teacher_table  # noqa: E402  (the sibling module, run as a script)

SETTINGS = ["ternary", "ternary,activation_bits=0", "binary", "int2", "int3", "int3,blocks=0-14", "int4",
            "int4,strength=0.5"]
"""Every quantizer at full strength, SmolLM2's calibrated default (`int3,blocks=0-14`) and a half-strength copy."""


def tokens_per_second(model, tokenizer, prompts, new_tokens: int, repeats: int) -> float:
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        model.generate(**batch, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model.generate(**batch, **kwargs)
    return repeats * len(prompts) * new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--memory-only", action="store_true", help="bits and memory, no generation timing")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "runs" / "bench_teacher"))
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    prompts = [to_prompt_answer(r, tokenizer).prompt for r in load_rows("bundled:eval")[: args.batch]]
    fp32 = load_causal_lm(args.model)
    nf4 = load_causal_lm(args.model, quantization=nf4_config())
    nf4_bytes = nf4.get_memory_footprint()
    timed = not args.memory_only
    fp32_speed = tokens_per_second(fp32, tokenizer, prompts, args.new_tokens, args.repeats) if timed else None
    nf4_speed = tokens_per_second(nf4, tokenizer, prompts, args.new_tokens, args.repeats) if timed else None
    rows = [{"model": f"fp32 base ({base_model_info(fp32).weights})", "bits_per_weight": 32.0,
             "mib": fp32.get_memory_footprint() / 2**20, "tokens_per_s": fp32_speed},
            {"model": "NF4 policy (double quant)", "bits_per_weight": None, "mib": nf4_bytes / 2**20,
             "tokens_per_s": nf4_speed}]
    for spec in SETTINGS:
        # Built from the fp32 model so that every teacher quantizes the same weights.
        teacher = build_negative_teacher(fp32, config=TeacherConfig.from_spec(spec))
        report = memory_report(teacher)
        row = {"model": f"teacher `{spec}`", "bits_per_weight": report["bits_per_weight"],
               "mib": report["own_total"] / 2**20, "tokens_per_s": None, "once_tokens_per_s": None}
        if timed:
            row["tokens_per_s"] = tokens_per_second(teacher, tokenizer, prompts, args.new_tokens, args.repeats)
            with materialized(teacher):
                row["once_tokens_per_s"] = tokens_per_second(teacher, tokenizer, prompts, args.new_tokens, args.repeats)
        rows.append(row)
        del teacher
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    run = {"command": " ".join(["python benchmarks/bench_teacher.py", *sys.argv[1:]]),
           "date": time.strftime("%Y-%m-%d"), "commit": commit, "model": args.model,
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                      f"torch {torch.__version__}", "batch": args.batch, "new_tokens": args.new_tokens,
           "nf4_mib": nf4_bytes / 2**20, "rows": rows}
    atomic_write_json(Path(args.output) / f"{'memory' if args.memory_only else 'memory_speed'}.json", run)
    print(teacher_table(run))


if __name__ == "__main__":
    main()
