"""Negative teacher: bits per weight, memory against the NF4 policy, generation throughput vs fp32.

    python benchmarks/bench_teacher.py [--batch 8] [--new-tokens 32] [--repeats 2]

Every number in one run, on the same prompts (the bundled eval split), batch and length.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hf_negteacher import TeacherConfig, build_negative_teacher, load_causal_lm, load_tokenizer, memory_report
from hf_negteacher.data.rows import load_rows, to_prompt_answer
from hf_negteacher.models import DEFAULT_MODEL, base_model_info, nf4_config
from hf_negteacher.teacher.layer import materialized

SETTINGS = ["ternary", "ternary,activation_bits=0", "binary", "int2", "int3", "int4", "int4,strength=0.5"]


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
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    prompts = [to_prompt_answer(r, tokenizer).prompt for r in load_rows("bundled:eval")[: args.batch]]
    fp32 = load_causal_lm(args.model)
    nf4 = load_causal_lm(args.model, quantization=nf4_config())
    nf4_bytes = nf4.get_memory_footprint()
    fp32_speed = tokens_per_second(fp32, tokenizer, prompts, args.new_tokens, args.repeats)
    nf4_speed = tokens_per_second(nf4, tokenizer, prompts, args.new_tokens, args.repeats)

    print(f"model {args.model}; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; batch {args.batch}, {args.new_tokens} new tokens, greedy\n")
    print("| model | bits/weight (block Linears) | own memory (MiB) | own / NF4 policy footprint | "
          "tokens/s | speed / fp32 | dequantized once per generate: tokens/s | speed / fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| fp32 base ({base_model_info(fp32).weights}) | 32 | {fp32.get_memory_footprint() / 2**20:.1f} | "
          f"{fp32.get_memory_footprint() / nf4_bytes:.2f}x | {fp32_speed:.1f} | 1.00x | | |")
    print(f"| NF4 policy (double quant) | ~4.1 | {nf4_bytes / 2**20:.1f} | 1.00x | {nf4_speed:.1f} | "
          f"{nf4_speed / fp32_speed:.2f}x | | |")
    for spec in SETTINGS:
        # Built from the fp32 model so that every teacher quantizes the same weights.
        teacher = build_negative_teacher(fp32, config=TeacherConfig.from_spec(spec))
        report = memory_report(teacher)
        speed = tokens_per_second(teacher, tokenizer, prompts, args.new_tokens, args.repeats)
        with materialized(teacher):
            once = tokens_per_second(teacher, tokenizer, prompts, args.new_tokens, args.repeats)
        print(f"| teacher `{spec}` | {report['bits_per_weight']:.2f} | {report['own_total'] / 2**20:.1f} | "
              f"{report['own_total'] / nf4_bytes:.2f}x | {speed:.1f} | {speed / fp32_speed:.2f}x | {once:.1f} | "
              f"{once / fp32_speed:.2f}x |")
        del teacher


if __name__ == "__main__":
    main()
