"""Sampling whose draws belong to each prompt, not to its batch: the same answer for a prompt and seed whichever
prompts share its generate call, so negatives can be generated ahead in large batches.

`generate`'s sampling draws from one random stream for the whole batch. Here each row's next token is the
Gumbel-max draw `argmax(logits / temperature + g)` over the tokens top-k / top-p keep, with `g` computed from a
counter-based hash of (row seed, position, token): no random state, identical on every device and batching
(up to the floating-point differences padding makes in the logits). `generate` then decodes greedily.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

_MULTIPLIERS = (6364136223846793005, 1442695040888963407, 0x3F58476D1CE4E5B9, 0x14D049BB133111EB)
_LOW_52 = (1 << 52) - 1


def row_seeds(seeds: Sequence[int], num_return_sequences: int) -> torch.Tensor:
    """One seed per generated row: each prompt's seed for its `num_return_sequences` rows, in `generate`'s order."""
    return torch.tensor([seed * 1_000_003 + j for seed in seeds for j in range(num_return_sequences)],
                        dtype=torch.long)


def _int64(value: int) -> int:
    """`value` wrapped to int64, as int64 tensor arithmetic wraps."""
    return (value + 2**63) % 2**64 - 2**63


def hashed_uniform(seeds: torch.Tensor, position: int, tokens: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), one per (seed, token) pair (broadcast), a function of (seed, position, token)
    only."""
    a, b, c, d = _MULTIPLIERS
    x = seeds * a + _int64(position * b) + tokens  # int64 arithmetic wraps around, as a hash wants
    x = (x ^ ((x >> 31) & ((1 << 33) - 1))) * c
    x = (x ^ ((x >> 29) & ((1 << 35) - 1))) * d
    x = x ^ ((x >> 32) & ((1 << 32) - 1))
    return (((x >> 8) & _LOW_52).double() + 0.5) / (_LOW_52 + 1)


class RowSeededSampling(LogitsProcessor):
    """Turns greedy decoding into sampling with a seed per row (`row_seeds`): temperature, then top-k and top-p as
    transformers' warpers apply them, then the Gumbel-max draw; every other token gets -inf."""

    def __init__(self, seeds: torch.Tensor, prompt_length: int, temperature: float, top_k: int, top_p: float):
        self.seeds, self.prompt_length = seeds, prompt_length
        self._device_seeds: torch.Tensor | None = None
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        if self._device_seeds is None or self._device_seeds.device != scores.device:
            self._device_seeds = self.seeds.to(scores.device)  # once per call, not at every token
        return with_gumbel_noise(scores, self._device_seeds, input_ids.shape[1] - self.prompt_length,
                                 sparse=scores.device.type == "cpu")


def with_gumbel_noise(scores: torch.Tensor, seeds: torch.Tensor, position: int, sparse: bool) -> torch.Tensor:
    """`scores` plus each row's Gumbel noise at `position` (-inf stays -inf). `sparse` hashes only the finite
    scores (what top-k / top-p keep: on the CPU, far less work than the vocabulary); dense hashes every token and
    never waits on the device (finding the finite scores would, at every token). Both give the same values."""
    if not sparse:
        tokens = torch.arange(scores.shape[-1], device=scores.device)
        return scores - torch.log(-torch.log(hashed_uniform(seeds[:, None], position, tokens))).to(scores.dtype)
    rows, tokens = torch.isfinite(scores).nonzero(as_tuple=True)
    uniform = hashed_uniform(seeds[rows], position, tokens)
    drawn = torch.full_like(scores, -float("inf"))
    drawn[rows, tokens] = scores[rows, tokens] - torch.log(-torch.log(uniform)).to(scores.dtype)
    return drawn
