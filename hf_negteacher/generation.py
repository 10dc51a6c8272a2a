"""Generation of rejected answers by the negative teacher: batched, left-padded, seeded, filtered."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from trl.trainer.utils import pad

from .row_sampling import RowSeededSampling, row_seeds


@dataclass
class GenerationSettings:
    """How answers are sampled: the sampling fields of a `transformers.GenerationConfig`
    (`generation_config` builds it), plus the seed and the batch size, which `generate` has no field for."""

    max_new_tokens: int = 48
    temperature: float = 0.7
    """0: greedy."""
    top_p: float = 0.95
    top_k: int = 0
    """0: off."""
    seed: int = 0
    batch_size: int = 16

    def generation_config(self, **fields) -> GenerationConfig:
        """These settings (and `fields`) as a `GenerationConfig`, checked by transformers. What it leaves unset
        (end-of-turn tokens, ...) comes from the model's own generation config when `generate` runs."""
        if self.temperature <= 0:
            sampling = {"do_sample": False}
        else:
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, **sampling, **fields)

    def with_max_new_tokens(self, max_new_tokens: int | None) -> GenerationSettings:
        """These settings with the length limit `max_new_tokens` (None: unchanged)."""
        return self if max_new_tokens is None else replace(self, max_new_tokens=max_new_tokens)


# Makes a fresh logits processor for one generate call from that call's attention mask (it may keep state,
# such as contrastive decoding's teacher cache).
ProcessorFactory = Callable[[torch.Tensor], LogitsProcessor]


def _seeded_generate(model, batch: dict, settings: GenerationSettings, seed: int, pad_token_id: int,
                     num_return_sequences: int = 1, processor: ProcessorFactory | None = None,
                     synced_gpus: bool | None = None) -> torch.Tensor:
    """`model.generate` under `seed`, leaving the global RNG state as it was; returns new tokens only."""
    device = batch["input_ids"].device
    extra = {} if processor is None else {"logits_processor": LogitsProcessorList([processor(batch["attention_mask"])])}
    if synced_gpus is not None:
        extra["synced_gpus"] = synced_gpus
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        config = settings.generation_config(use_cache=True, pad_token_id=pad_token_id,
                                            num_return_sequences=num_return_sequences)
        output = model.generate(**batch, generation_config=config, **extra)
    return output[:, batch["input_ids"].shape[1]:]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[str], settings: GenerationSettings, *,
                     num_return_sequences: int = 1, progress: bool = False, desc: str = "generating",
                     processor: ProcessorFactory | None = None, synced_gpus: bool | None = None) -> list:
    """Answers to `prompts` (already chat-templated text), decoded without special tokens.

    One string per prompt, or a list of `num_return_sequences` strings per prompt when that is > 1.
    Deterministic for a seed: each batch is sampled under `seed + index of its first prompt`.
    `processor` adds a logits processor made per batch (for example `contrastive.contrast_with`);
    `synced_gpus` as in `generate_negative_ids`.
    """
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list = []
    try:
        for start in tqdm(range(0, len(prompts), settings.batch_size), desc=desc, disable=not progress):
            batch = tokenizer(list(prompts[start:start + settings.batch_size]), return_tensors="pt",
                              padding=True, add_special_tokens=False).to(device)
            new_tokens = _seeded_generate(model, batch, settings, settings.seed + start, tokenizer.pad_token_id,
                                          num_return_sequences, processor, synced_gpus)
            texts = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            if num_return_sequences == 1:
                answers.extend(texts)
            else:
                answers.extend(texts[i:i + num_return_sequences] for i in range(0, len(texts), num_return_sequences))
    finally:
        tokenizer.padding_side = padding_side
    return answers


@torch.no_grad()
def generate_negative_ids(model, prompt_ids: Sequence[Sequence[int]], settings: GenerationSettings, *,
                          seed: int, pad_token_id: int, stop_token_ids: Sequence[int],
                          num_return_sequences: int = 1, processor: ProcessorFactory | None = None,
                          synced_gpus: bool | None = None,
                          prompt_seeds: Sequence[int] | None = None) -> list[list[list[int]]]:
    """Per prompt (token ids), `num_return_sequences` generated answers as token ids, cut before the
    first stop token. Prompts are left-padded in batches of `settings.batch_size`; `processor` as in
    `generate_answers`. `synced_gpus=False` for a model no process shares (the teacher): under ZeRO-3,
    transformers' default would make processes that generate different numbers of times wait forever.
    With `prompt_seeds` (one per prompt) each prompt's samples depend on its own seed only, not on `seed` or on
    the prompts it is batched with (`row_sampling`)."""
    row_seeded = prompt_seeds is not None and settings.temperature > 0
    if row_seeded and processor is not None:
        raise ValueError("prompt_seeds samples through its own logits processor; pass no processor with it")
    device = next(model.parameters()).device
    stops = set(stop_token_ids)
    results: list[list[list[int]]] = []
    for start in range(0, len(prompt_ids), settings.batch_size):
        prompts = prompt_ids[start:start + settings.batch_size]
        if row_seeded:  # each prompt repeated, decoded greedily through its own draws
            batch = _left_padded([ids for ids in prompts for _ in range(num_return_sequences)], pad_token_id, device)
            sampling = RowSeededSampling(row_seeds(prompt_seeds[start:start + settings.batch_size],
                                                   num_return_sequences), batch["input_ids"].shape[1],
                                         settings.temperature, settings.top_k, settings.top_p)
            new_tokens = _seeded_generate(model, batch, replace(settings, temperature=0.0), 0, pad_token_id, 1,
                                          lambda _, sampling=sampling: sampling, synced_gpus)
        else:
            batch = _left_padded(prompts, pad_token_id, device)
            new_tokens = _seeded_generate(model, batch, settings, seed + start, pad_token_id, num_return_sequences,
                                          processor, synced_gpus)
        answers = [_cut_at_stop(row, stops) for row in new_tokens.tolist()]
        results.extend(answers[i:i + num_return_sequences] for i in range(0, len(answers), num_return_sequences))
    return results


def _left_padded(prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device) -> dict[str, torch.Tensor]:
    chunk = [torch.tensor(list(ids), dtype=torch.long) for ids in prompt_ids]
    return {"input_ids": pad(chunk, pad_token_id, padding_side="left").to(device),
            "attention_mask": pad([torch.ones_like(ids) for ids in chunk], 0, padding_side="left").to(device)}


def stop_token_ids(tokenizer, model) -> list[int]:
    """Tokens that end an answer: EOS, padding, and the model's configured end-of-turn tokens."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None and not (isinstance(i, float) and math.isnan(i)))


def _cut_at_stop(ids: list[int], stops: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stops:
            return ids[:position]
    return ids
