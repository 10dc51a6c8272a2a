"""The GPU check: one command that shows, on one GPU with no network, whether the teacher is right and fast there.

Random weights at real shapes (nothing large travels): SmolLM2-135M for the logits of every quantizer on the GPU
against the CPU, for per-row seeded sampling against the CPU and for 10 online training steps against
`trl.DPOTrainer` on cached pairs; Llama-3.2-1B for the teacher's speed against the bf16 model (dequantizing per
forward and once per generate call); one Llama-3.1-8B block for the packed teacher's memory, scaled to 32 blocks.
Writes one markdown table per part to `--out`.

On the GPU machine (torch, transformers, peft and accelerate installed; TRL, bitsandbytes and the network absent),
carry TRL's wheel (pure Python, 0.9 MB) and SmolLM2's tokenizer (3.4 MB) in the working tree; if
`python -c "import datasets"` fails there, also `pip download --no-deps datasets pyarrow dill xxhash multiprocess`
(42 MB, pyarrow nearly all of it):

    pip download --no-deps "trl==1.16.0" -d wheels/                  # here
    python benchmarks/gpu_check.py --save_tokenizer gpu_tokenizer/   # here
    pip install --no-deps wheels/*.whl && \
        PYTHONPATH=. python benchmarks/gpu_check.py --tokenizer gpu_tokenizer --out gpu_check.md   # there

Without bitsandbytes the training part runs the policy in bf16 and says so (NF4 needs its CUDA library, 125 MB).
`python benchmarks/gpu_check.py --tiny --device cpu` runs every part at tiny shapes; the suite does, so it cannot rot.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import LlamaConfig, LlamaForCausalLM

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, build_negative_teacher, memory_report
from hf_negteacher.data.rows import load_jsonl, load_rows
from hf_negteacher.generation import GenerationSettings, generate_negative_ids
from hf_negteacher.models import DEFAULT_MODEL, load_tokenizer
from hf_negteacher.teacher.layer import materialized
from hf_negteacher.teacher.spec import QUANTIZER_BITS

SHAPES = {
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, tie_word_embeddings=True),
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, tie_word_embeddings=True),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, tie_word_embeddings=False),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=True)
TEACHER = "int3"  # every block: the setting FSDP / ZeRO-3 need, and the heaviest per-forward dequantization


def random_model(shape: dict, vocab_size: int, dtype: torch.dtype, num_hidden_layers: int | None = None,
                 seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    layers = {"num_hidden_layers": num_hidden_layers} if num_hidden_layers else {}
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=512, **{**shape, **layers})
    return LlamaForCausalLM(config).to(dtype).eval()


def logits_agreement(shape: dict, vocab_size: int, device: str) -> list[list[str]]:
    """Per quantizer: the teacher quantized and run on `device` against the same teacher on the CPU."""
    model = random_model(shape, vocab_size, torch.float32)
    ids = torch.randint(0, vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    on_device = copy.deepcopy(model).to(device)
    rows = []
    for quantizer in QUANTIZER_BITS:
        with torch.no_grad():
            expected = build_negative_teacher(model, quantizer).eval()(input_ids=ids).logits
            got = build_negative_teacher(on_device, quantizer).eval()(input_ids=ids.to(device)).logits.cpu()
        error = ((got - expected).abs().max() / expected.abs().max()).item()
        agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
        rows.append([quantizer, f"{error:.1e}", f"{agree:.1%}"])
    return rows


def sampling_agreement(shape: dict, vocab_size: int, device: str) -> list[list[str]]:
    """Per-row seeded sampling (what lookahead relies on) on `device` against the CPU: on a GPU every token's noise
    is hashed (no host sync), on the CPU only the kept tokens'. Answers differ only where the devices' logits differ
    enough to change a draw."""
    model = random_model(shape, vocab_size, torch.float32)
    model.generation_config.eos_token_id = None  # random weights: run every answer to its full length
    prompts = torch.randint(1, vocab_size, (8, 16), generator=torch.Generator().manual_seed(1)).tolist()
    settings = GenerationSettings(max_new_tokens=16, temperature=0.7, top_p=0.95, batch_size=8)

    def answers(on):
        return generate_negative_ids(on, prompts, settings, seed=0, pad_token_id=0, stop_token_ids=[],
                                     num_return_sequences=2, synced_gpus=False, prompt_seeds=list(range(8)))

    expected, got = answers(model), answers(copy.deepcopy(model).to(device))
    pairs = [(a, b) for x, y in zip(expected, got, strict=True) for a, b in zip(x, y, strict=True)]
    same_tokens = sum(sum(u == v for u, v in zip(a, b, strict=True)) for a, b in pairs)
    return [[f"{len(pairs)} answers of 16 tokens, temperature 0.7, top-p 0.95",
             f"{sum(a == b for a, b in pairs)}/{len(pairs)}", f"{same_tokens / sum(len(a) for a, _ in pairs):.1%}"]]


def tokens_per_second(model, prompts: list[list[int]], new_tokens: int, device: str) -> float:
    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0, batch_size=len(prompts))
    _synchronize(device)
    start = time.perf_counter()
    answers = generate_negative_ids(model, prompts, settings, seed=0, pad_token_id=0, stop_token_ids=[],
                                    synced_gpus=False)
    _synchronize(device)
    return sum(len(a[0]) for a in answers) / (time.perf_counter() - start)


def speed(shape: dict, vocab_size: int, device: str, batch: int, new_tokens: int) -> list[list[str]]:
    """Greedy tokens per second of the bf16 model and of its packed teacher (per forward, dequantized once)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = random_model(shape, vocab_size, dtype).to(device)
    model.generation_config.eos_token_id = None  # random weights: run every answer to its full length
    teacher = build_negative_teacher(model, TEACHER).eval()
    prompts = torch.randint(1, vocab_size, (batch, 16), generator=torch.Generator().manual_seed(0)).tolist()
    tokens_per_second(model, prompts[:2], 2, device)  # warm-up (kernels, allocator)
    base = tokens_per_second(model, prompts, new_tokens, device)
    per_forward = tokens_per_second(teacher, prompts, new_tokens, device)
    with materialized(teacher):
        once = tokens_per_second(teacher, prompts, new_tokens, device)
    return [[f"the model ({str(dtype).removeprefix('torch.')})", f"{base:.0f}", "1.00x"],
            [f"teacher {TEACHER}, dequantized per forward", f"{per_forward:.0f}", f"{per_forward / base:.2f}x"],
            [f"teacher {TEACHER}, dequantized once per generate", f"{once:.0f}", f"{once / base:.2f}x"]]


def teacher_memory(shape: dict, vocab_size: int) -> list[list[str]]:
    """The packed teacher's own memory for one block, times the number of blocks, against the bf16 blocks."""
    model = random_model(shape, vocab_size, torch.bfloat16, num_hidden_layers=1)
    report = memory_report(build_negative_teacher(model, TEACHER))
    blocks = shape["num_hidden_layers"]
    block_bf16 = sum(p.numel() * 2 for p in model.model.layers[0].parameters())
    own = report["own_total"]
    return [[f"{blocks} blocks, bf16", f"{blocks * block_bf16 / 2**30:.2f}", "1.00x"],
            [f"{blocks} blocks, teacher {TEACHER} (codes + scales)", f"{blocks * own / 2**30:.2f}",
             f"{own / block_bf16:.3f}x"]]


def training(shape: dict, tokenizer, device: str, steps: int) -> tuple[str, list[list[str]]]:
    """`steps` online NegativeTeacherTrainer steps against trl.DPOTrainer on the pairs the teacher wrote offline."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    nf4 = device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    precision = "NF4 (bitsandbytes) + LoRA" if nf4 else ("bf16 + LoRA (no bitsandbytes)" if device == "cuda"
                                                          else "fp32 + LoRA (CPU)")
    common = dict(use_cpu=device == "cpu", bf16=device == "cuda", per_device_train_batch_size=4, max_length=128,
                  gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=1, seed=0)
    rows = load_rows("bundled:train")[: 4 * steps]
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")

    def policy():
        model = random_model(shape, len(tokenizer), torch.bfloat16 if device == "cuda" else torch.float32)
        if nf4:
            from transformers import BitsAndBytesConfig

            with tempfile.TemporaryDirectory() as folder:
                model.save_pretrained(folder)
                quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                  bnb_4bit_compute_dtype=torch.bfloat16)
                return LlamaForCausalLM.from_pretrained(folder, device_map=device, quantization_config=quantization)
        return model

    results = {}
    with tempfile.TemporaryDirectory() as work:
        negatives = dict(negatives_max_new_tokens=32, teacher=TEACHER)
        NegativeTeacherTrainer(policy(), NegativeTeacherConfig(output_dir=f"{work}/offline", negatives_mode="offline",
                                                               max_steps=1, **negatives, **common),
                               rows, processing_class=tokenizer, peft_config=lora)
        pairs = [{k: r[k] for k in ("prompt", "chosen", "rejected")}
                 for r in load_jsonl(f"{work}/offline/negatives.jsonl")]
        trainers = {
            "trl.DPOTrainer, cached teacher pairs": lambda: DPOTrainer(
                policy(), args=DPOConfig(output_dir=f"{work}/trl", max_steps=steps, **common),
                train_dataset=Dataset.from_list(pairs), processing_class=tokenizer, peft_config=lora),
            "NegativeTeacherTrainer, online negatives": lambda: NegativeTeacherTrainer(
                policy(), NegativeTeacherConfig(output_dir=f"{work}/ours", max_steps=steps, **negatives, **common),
                rows, processing_class=tokenizer, peft_config=lora),
        }
        for name, make in trainers.items():
            trainer = make()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            trainer.train()
            seconds = (time.perf_counter() - start) / steps
            shares = [e["negatives/generation_time_share"] for e in trainer.state.log_history
                      if "negatives/generation_time_share" in e]
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if device == "cuda" else "-"
            results[name] = (seconds, f"{sum(shares) / len(shares):.0%}" if shares else "-", peak)
            del trainer
    baseline = results["trl.DPOTrainer, cached teacher pairs"][0]
    return precision, [[name, f"{s:.3f}", f"{s / baseline:.2f}x", share, peak]
                       for name, (s, share, peak) in results.items()]


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the suite's CPU run)")
    parser.add_argument("--tokenizer", default=DEFAULT_MODEL, help="a folder from --save_tokenizer, or a model")
    parser.add_argument("--save_tokenizer", help="write SmolLM2's tokenizer to this folder (to carry) and stop")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="gpu_check.md")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(DEFAULT_MODEL if args.save_tokenizer else args.tokenizer)
    if args.save_tokenizer:
        tokenizer.save_pretrained(args.save_tokenizer)
        return args.save_tokenizer
    small, fast, large = (TINY, TINY, TINY) if args.tiny else (SHAPES["SmolLM2-135M"], SHAPES["Llama-3.2-1B"],
                                                               SHAPES["Llama-3.1-8B"])
    names = ("tiny",) * 3 if args.tiny else ("SmolLM2-135M", "Llama-3.2-1B", "Llama-3.1-8B")
    vocab = 256 if args.tiny else 128_256
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    parts = [f"## GPU check on {card}: torch {torch.__version__}, random weights at real shapes\n"]
    parts.append(table(f"Teacher logits on {args.device} against the CPU ({names[0]} shape, fp32)",
                       ["quantizer", "max |difference| / max |logit|", "same top-1 token"],
                       logits_agreement(small, vocab if args.tiny else 49_152, args.device)))
    parts.append(table(f"Per-row seeded sampling on {args.device} against the CPU ({names[0]} shape, fp32)",
                       ["drawn", "identical answers", "identical tokens"],
                       sampling_agreement(small, vocab if args.tiny else 49_152, args.device)))
    batch, new_tokens = (2, 4) if args.tiny else (16, 64)
    parts.append(table(f"Greedy tokens per second, batch {batch}, {new_tokens} new tokens ({names[1]} shape)",
                       ["model", "tokens/s", "ratio"], speed(fast, vocab, args.device, batch, new_tokens)))
    parts.append(table(f"Teacher memory ({names[2]} shape, one block measured)", ["weights", "GiB", "ratio"],
                       teacher_memory(large, vocab)))
    precision, rows = training(small, tokenizer, args.device, args.steps)
    parts.append(table(f"{args.steps} training steps, {names[0]} shape, {precision}, batch 4",
                       ["trainer", "s/step", "ratio", "generation share", "peak GPU GiB"], rows))
    text = "\n".join(parts)
    Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
