"""Generation of rejected answers by the negative teacher: batched, left-padded, seeded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class GenerationSettings:
    """How the teacher samples its answers."""

    max_new_tokens: int = 48
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    batch_size: int = 16

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "max_new_tokens": self.max_new_tokens}


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[str], settings: GenerationSettings, *,
                     progress: bool = False, desc: str = "generating") -> list[str]:
    """Answers to `prompts` (already chat-templated text), one per prompt, decoded without specials.

    Deterministic for a seed: each batch is sampled under `seed + index of its first prompt`, and
    the global RNG state is restored afterwards.
    """
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), settings.batch_size), desc=desc, disable=not progress):
            batch = tokenizer(list(prompts[start:start + settings.batch_size]), return_tensors="pt",
                              padding=True, add_special_tokens=False).to(device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(settings.seed + start)
                output = model.generate(**batch, **settings.generate_kwargs(), use_cache=True,
                                        pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            answers.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
    return answers
