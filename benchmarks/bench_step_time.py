"""Step time of NegativeTeacherTrainer on cached (offline) negatives vs trl.DPOTrainer on the same pairs.

    python benchmarks/bench_step_time.py [--steps 10] [--rounds 2]

Same NF4 SmolLM2-135M policy, LoRA, pairs, batch, max_length and loss; the two trainers alternate for
`--rounds` rounds so that drift in the machine's speed hits both alike. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, load_causal_lm, load_tokenizer, nf4_config
from hf_negteacher.data.rows import load_jsonl, load_rows
from hf_negteacher.models import DEFAULT_MODEL, checkpoint_weights

COMMON = dict(use_cpu=True, bf16=False, per_device_train_batch_size=4, max_length=128, gradient_checkpointing=False,
              learning_rate=2e-4, loss_type=["sigmoid", "sft"], report_to=[], save_strategy="no", logging_steps=1,
              seed=0)


def lora() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")


def seconds_per_step(trainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - start) / trainer.state.global_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    weights = checkpoint_weights(DEFAULT_MODEL)
    rows = load_rows("bundled:train")[: 4 * args.steps]
    work = Path(tempfile.mkdtemp(prefix="bench-step-"))
    # Generate the pairs once; both trainers then train on exactly this file.
    NegativeTeacherTrainer(load_causal_lm(DEFAULT_MODEL, quantization=nf4_config()),
                           NegativeTeacherConfig(output_dir=str(work), negatives_mode="offline", max_steps=1, **COMMON),
                           rows, processing_class=tokenizer, peft_config=lora(), teacher_weights=weights)
    pairs = load_jsonl(work / "negatives.jsonl")
    plain_pairs = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs]
    times: dict[str, list[float]] = {"NegativeTeacherTrainer (offline negatives)": [], "trl.DPOTrainer": []}
    for _ in range(args.rounds):
        ours = NegativeTeacherTrainer(
            load_causal_lm(DEFAULT_MODEL, quantization=nf4_config()),
            NegativeTeacherConfig(output_dir=str(work / "ours"), negatives_mode="offline", max_steps=args.steps,
                                  **COMMON),
            pairs, processing_class=tokenizer, peft_config=lora(), teacher_weights=weights)
        times["NegativeTeacherTrainer (offline negatives)"].append(seconds_per_step(ours))
        theirs = DPOTrainer(load_causal_lm(DEFAULT_MODEL, quantization=nf4_config()),
                            args=DPOConfig(output_dir=str(work / "trl"), max_steps=args.steps, **COMMON),
                            train_dataset=Dataset.from_list(plain_pairs),
                            processing_class=tokenizer, peft_config=lora())
        times["trl.DPOTrainer"].append(seconds_per_step(theirs))
    baseline = sum(times["trl.DPOTrainer"]) / args.rounds
    print(f"\nNF4 SmolLM2-135M + LoRA r16, batch 4, max_length 128, {args.steps} steps x {args.rounds} rounds, "
          f"{len(pairs)} cached pairs\n")
    print("| trainer | s/step (each round) | mean | ratio to trl.DPOTrainer |")
    print("|---|---|---|---|")
    for name, values in times.items():
        mean = sum(values) / len(values)
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | {mean:.2f} | {mean / baseline:.2f}x |")


if __name__ == "__main__":
    main()
