"""What the negative teacher costs: online generation overhead, peak memory of the training process, and the
memory of rebuilding the teacher from the policy.

    python benchmarks/bench_cost.py [--parts online memory rebuild recovery] [--steps 8] [--memory-steps 2]

Online overhead (`online`): NegativeTeacherTrainer at the default recipe's settings (NF4 SmolLM2-135M, LoRA r16,
batch 4, int3 teacher on blocks 0-14, 32-token negatives), the share of step time spent generating, with and without
dequantizing the teacher once per generate call; negatives generated per micro-batch (as before
`negatives_lookahead`), per optimizer step and 8 steps ahead, at batch 4 and at batch 1 x gradient accumulation 4;
and with repeated examples at refresh_every 1 and 3 (the share is the run's total time generating over its
training time). Memory (`memory`): peak resident set size while training, in separate processes
(2 steps each): trl.DPOTrainer on the 4-bit policy alone and NegativeTeacherTrainer with the packed teacher, both on
the same cached teacher pairs; the packed teacher and a naive full-precision teacher copy generating online. Rebuild
(`rebuild`): the peak resident memory of rebuilding the teacher from the LoRA policy (what the following teacher and
strength feedback do), merging each layer as it is read and, as before, every layer at once, beside the packed
teacher's own memory and one block's fp32 weights. Recovery (`recovery`): a step of `recover.yaml`'s setting (prompts
alone, SFT on the unquantized checkpoint's best-of-4 answers) writing those answers, then reading them back from
disk (`checkpoint_answers.py`, as the quality benchmark's runs share them), with TRL's reference forward and without
it (shipped: `loss_type: [sft]` reads no reference), alternating. Linux only (/proc/self/status). Run it alone on
the machine. Each part's table is printed and saved with its setting as a run file `<part>.json` under `--output`
(default `benchmarks/runs/bench_cost/`, committed), which `report.py` reprints.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, load_causal_lm, load_tokenizer, nf4_config
from hf_negteacher.atomic_write import atomic_write_json
from hf_negteacher.data.rows import load_jsonl, load_rows, without_reference
from hf_negteacher.models import DEFAULT_MODEL, checkpoint_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_answers import CachedCheckpointSource  # noqa: E402  (sibling modules, run as a script)
from report import cost_table  # noqa: E402

COMMON = dict(use_cpu=True, bf16=False, per_device_train_batch_size=4, max_length=128, gradient_checkpointing=False,
              learning_rate=2e-4, report_to=[], save_strategy="no", logging_steps=1, seed=0,
              negatives_max_new_tokens=32, negatives_temperature=0.7)
MEMORY_CASES = {
    "dpo-policy-only": "trl.DPOTrainer, 4-bit policy alone, cached teacher pairs",
    "packed-offline": "NegativeTeacherTrainer + packed teacher int3 blocks 0-14, same cached pairs",
    "packed-online": "NegativeTeacherTrainer + packed teacher, online negatives (CPU defaults)",
    "naive-fp32-copy": "NegativeTeacherTrainer + a full-precision (fp32) teacher copy, online negatives",
}
REBUILD_CASES = {
    "lazy": "merged layer by layer as the teacher reads them (PolicyWeights)",
    "eager": "every merged layer held at once (a dict, as before)",
}
TEACHER = "int3,blocks=0-14"


def lora() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")


def online_run(tokenizer, weights, rows, steps: int, chosen=None, reference_forward: bool = False,
               **overrides) -> tuple[float, float]:
    """(seconds per step, share of training time spent generating: negatives, and chosen answers where the chosen
    source `chosen` writes them). `reference_forward`: run TRL's reference forward even where no loss reads it."""
    with tempfile.TemporaryDirectory() as work:
        args = NegativeTeacherConfig(output_dir=work, max_steps=steps, **{**COMMON, **overrides})
        trainer = NegativeTeacherTrainer(load_causal_lm(DEFAULT_MODEL, quantization=nf4_config()), args, rows,
                                         processing_class=tokenizer, peft_config=lora(), teacher_weights=weights,
                                         chosen_source=chosen)
        if reference_forward:  # as TRL's own DPOTrainer does
            trainer.skips_reference = trainer.precompute_ref_logps = False
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    return total / steps, trainer.online.generation_seconds / total


def memory_case(case: str, steps: int, pairs_file: str) -> None:
    """Run one memory case in this process and print its resident memory after setup and peak while training."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    pairs = load_jsonl(pairs_file)
    policy = load_causal_lm(DEFAULT_MODEL, quantization=nf4_config())
    with tempfile.TemporaryDirectory() as work:
        if case == "dpo-policy-only":
            plain = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
            common = {k: v for k, v in COMMON.items() if not k.startswith("negatives_")}
            trainer = DPOTrainer(policy, args=DPOConfig(output_dir=work, max_steps=steps, loss_type=["sigmoid", "sft"],
                                                        **common),
                                 train_dataset=Dataset.from_list(plain), processing_class=tokenizer, peft_config=lora())
        else:
            online = case != "packed-offline"
            teacher = load_causal_lm(DEFAULT_MODEL).eval().requires_grad_(False) if case == "naive-fp32-copy" else None
            mode = "online" if online else "offline"
            args = NegativeTeacherConfig(output_dir=work, max_steps=steps, negatives_mode=mode, **COMMON)
            rows = load_rows("bundled:train")[: 4 * steps] if online else pairs
            trainer = NegativeTeacherTrainer(policy, args, rows, processing_class=tokenizer, peft_config=lora(),
                                             teacher=teacher, teacher_weights=checkpoint_weights(DEFAULT_MODEL))
        gc.collect()
        setup = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
        trainer.train()
        print(f"SETUP_RSS_MIB {setup:.1f}")
    print(f"PEAK_RSS_MIB {_status_mib('VmHWM'):.1f}")


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=["online", "memory", "rebuild", "recovery"],
                        default=["online", "memory", "rebuild"])
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "runs" / "bench_cost"))
    parser.add_argument("--memory-case", choices=MEMORY_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--rebuild-case", choices=REBUILD_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        memory_case(args.memory_case, args.memory_steps, args.pairs_file)
        return
    if args.rebuild_case:
        rebuild_case(args.rebuild_case)
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    header = {"command": " ".join(["python benchmarks/bench_cost.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"), "commit": commit, "model": DEFAULT_MODEL,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}", "load_average": os.getloadavg()[0]}
    measures = {"memory": lambda: {"memory_steps": args.memory_steps, "rows": measure_memory(args.memory_steps)},
                "online": lambda: {"steps": args.steps, "rows": measure_online(args.steps)},
                "rebuild": lambda: {"rows": measure_rebuild()},
                "recovery": lambda: {"steps": args.steps, "rows": measure_recovery(args.steps)}}
    for part in args.parts:
        run = {**header, "part": part, **measures[part]()}
        atomic_write_json(Path(args.output) / f"{part}.json", run)
        print(cost_table(run) + "\n")


def measure_memory(steps: int) -> list[dict]:
    """Resident memory after setup and peak while training of each memory case, each in its own process."""
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    # The teacher's negatives for the first 4 * steps rows, generated once; the fixed-pair cases train on them.
    NegativeTeacherTrainer(load_causal_lm(DEFAULT_MODEL, quantization=nf4_config()),
                           NegativeTeacherConfig(output_dir=str(work), negatives_mode="offline", max_steps=1, **COMMON),
                           load_rows("bundled:train")[: 4 * steps], processing_class=load_tokenizer(DEFAULT_MODEL),
                           peft_config=lora(), teacher_weights=checkpoint_weights(DEFAULT_MODEL))
    rows = []
    for case, label in MEMORY_CASES.items():
        command = [sys.executable, __file__, "--memory-case", case, "--memory-steps", str(steps),
                   "--pairs-file", str(work / "negatives.jsonl")]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append({"run": label, "setup_mib": float(out.split("SETUP_RSS_MIB")[-1].split()[0]),
                     "peak_mib": float(out.split("PEAK_RSS_MIB")[-1].split()[0])})
    return rows


def rebuild_case(case: str) -> None:
    """Rebuild the teacher from the LoRA policy in this process; print resident memory after setup and the peak
    of the rebuild, the rebuilt teacher's own memory and one block's fp32 weights (MiB)."""
    from peft import get_peft_model

    from hf_negteacher import build_negative_teacher, memory_report
    from hf_negteacher.teacher.follow import policy_weights
    from hf_negteacher.teacher.spec import TeacherConfig

    config = TeacherConfig.from_spec(TEACHER)
    checkpoint = {name: tensor.clone() for name, tensor in checkpoint_weights(DEFAULT_MODEL).items()}  # in memory
    policy = get_peft_model(load_causal_lm(DEFAULT_MODEL, quantization=nf4_config()), lora())
    teacher = build_negative_teacher(policy, config=config, weights=checkpoint)
    merged = policy_weights(policy, config, checkpoint)
    block = sum(checkpoint[key].numel() for key in merged if ".layers.0." in key) * 4 / 2**20
    gc.collect()
    setup = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    teacher = build_negative_teacher(policy, config=config, weights=dict(merged) if case == "eager" else merged)
    print(f"SETUP_RSS_MIB {setup:.1f}")
    print(f"PEAK_RSS_MIB {_status_mib('VmHWM'):.1f}")
    print(f"OWN_MIB {memory_report(teacher)['own_total'] / 2**20:.1f}")
    print(f"BLOCK_MIB {block:.1f}")


def measure_rebuild() -> list[dict]:
    """Each rebuild case in its own process: its peak above the resident memory before it."""
    rows = []
    for case, label in REBUILD_CASES.items():
        out = subprocess.run([sys.executable, __file__, "--rebuild-case", case], check=True, capture_output=True,
                             text=True).stdout
        read = {key: float(out.split(key)[-1].split()[0]) for key in ("SETUP_RSS_MIB", "PEAK_RSS_MIB", "OWN_MIB",
                                                                       "BLOCK_MIB")}
        rows.append({"run": label, "setup_mib": read["SETUP_RSS_MIB"], "peak_mib": read["PEAK_RSS_MIB"],
                     "teacher_mib": read["OWN_MIB"], "block_mib": read["BLOCK_MIB"]})
    return rows


def measure_online(steps: int) -> list[dict]:
    """Seconds per step and the share of it spent generating negatives, for each online setting."""
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    weights = checkpoint_weights(DEFAULT_MODEL)
    rows = load_rows("bundled:train")[: 4 * steps]
    repeated = rows[: 4 * steps // 3 + 1] * 3  # each example seen about 3 times
    settings = {
        "default (each example once), dequantize per forward": dict(rows=rows, teacher_dequantize_once=False),
        "default (each example once), dequantize once per generate": dict(rows=rows, teacher_dequantize_once=True),
        "default, each micro-batch generating its own (negatives_lookahead 0)": dict(rows=rows, negatives_lookahead=0),
        "default, 8 steps' negatives per generate call (negatives_lookahead 8)": dict(rows=rows, negatives_lookahead=8),
        "batch 1 x gradient accumulation 4, per micro-batch (negatives_lookahead 0)": dict(
            rows=rows, per_device_train_batch_size=1, gradient_accumulation_steps=4, negatives_lookahead=0),
        "batch 1 x gradient accumulation 4, one call per step (negatives_lookahead 1)": dict(
            rows=rows, per_device_train_batch_size=1, gradient_accumulation_steps=4),
        "batch 1 x gradient accumulation 4, negatives_lookahead 8": dict(
            rows=rows, per_device_train_batch_size=1, gradient_accumulation_steps=4, negatives_lookahead=8),
        "examples seen ~3 times, refresh_every 1": dict(rows=repeated),
        "examples seen ~3 times, refresh_every 3": dict(rows=repeated, refresh_every=3),
    }
    results = []
    for name, overrides in settings.items():
        per_step, share = online_run(tokenizer, weights, overrides.pop("rows"), steps, **overrides)
        results.append({"setting": name, "s_per_step": per_step, "generation_share": share})
    return results


def measure_recovery(steps: int, rounds: int = 2) -> list[dict]:
    """Seconds per step of `recover.yaml`'s setting and the share spent writing the checkpoint's answers: writing
    them, then reading them from disk with and without TRL's reference forward, alternating for `rounds` rounds."""
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    weights = checkpoint_weights(DEFAULT_MODEL)
    rows = [without_reference(row) for row in load_rows("bundled:reverse-train")[: 4 * steps]]
    recovery = dict(chosen_source="checkpoint", chosen_num_samples=4, loss_type=["sft"])
    with tempfile.TemporaryDirectory() as answers:
        def run(setting: str, reference_forward: bool) -> dict:
            per_step, share = online_run(tokenizer, weights, rows, steps, CachedCheckpointSource(Path(answers)),
                                         reference_forward, **recovery)
            return {"setting": setting, "s_per_step": per_step, "generation_share": share}

        results = [run("writing the checkpoint's answers, reference forward run", True)]
        for _ in range(rounds):
            results += [run("answers read from disk, reference forward run (as TRL's DPOTrainer)", True),
                        run("answers read from disk, no reference forward (shipped)", False)]
    return results


if __name__ == "__main__":
    main()
