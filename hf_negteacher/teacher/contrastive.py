"""Contrastive decoding with the negative teacher as the amateur.

Each next token is scored `(1 + beta) * log p_policy - beta * log p_teacher` over the tokens the policy
itself finds plausible (`p_policy >= alpha * max p_policy`), the logit form of Contrastive Decoding
(Li et al. 2022; O'Brien & Lewis 2023). The teacher is a degraded copy of the same weights, so the
contrast removes what a crippled self would also say. It plugs into `generate` as a `LogitsProcessor`
that runs the teacher on the new tokens with the teacher's own KV cache (the shape of transformers'
`UnbatchedClassifierFreeGuidanceLogitsProcessor`, plus position ids for left-padded batches).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LogitsProcessor

from ..generation import GenerationSettings, generate_answers
from ..models import eval_mode
from .layer import materialized


class ContrastiveDecodingError(ValueError):
    """Contrastive-decoding settings out of range."""


@dataclass(frozen=True)
class ContrastSettings:
    """How strongly the teacher is subtracted (`beta`) and which tokens stay candidates (`alpha`).

    Defaults: the best of the sweep in `benchmarks/bench_decoding.py` (SmolLM2-135M + SFT adapter, by
    ROUGE-L). There no setting beat plain greedy decoding (docs/findings.md, a validation reading).
    """

    beta: float = 0.5
    alpha: float = 0.3

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            raise ContrastiveDecodingError(f"contrastive beta={self.beta}: expected >= 0")
        if not 0 < self.alpha <= 1:
            raise ContrastiveDecodingError(f"contrastive alpha={self.alpha}: expected in (0, 1]")


class TeacherContrastLogitsProcessor(LogitsProcessor):
    """Contrastive scores against `teacher` for one `generate` call (it keeps that call's teacher cache).

    Args:
        teacher: the negative teacher (any causal LM with the policy's tokenizer).
        attention_mask: the prompt batch's attention mask, as passed to `generate` (left padding).
        settings: `beta` and `alpha`.

    Greedy and sampling are supported; beam search is not (the teacher's cache is not reordered).
    With `beta=0` the output is the policy's log-probabilities restricted to the plausible tokens, so
    greedy decoding is unchanged.
    """

    def __init__(self, teacher: nn.Module, attention_mask: torch.Tensor, settings: ContrastSettings) -> None:
        self.teacher = teacher
        self.settings = settings
        self._attention_mask = attention_mask
        self._cache = None
        self._seen = 0

    @torch.no_grad()
    def teacher_log_probs(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """The teacher's next-token log-probabilities after `input_ids`, feeding only unseen tokens."""
        mask = self._attention_mask.to(input_ids.device)
        if mask.shape[0] != input_ids.shape[0]:  # num_return_sequences expands the batch inside generate
            mask = mask.repeat_interleave(input_ids.shape[0] // mask.shape[0], dim=0)
        new = input_ids[:, self._seen:]
        if self._seen:
            mask = torch.cat([mask, mask.new_ones(new.shape)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1]:]
        output = self.teacher(input_ids=new, attention_mask=mask, position_ids=positions,
                              past_key_values=self._cache, use_cache=True)
        self._cache, self._attention_mask, self._seen = output.past_key_values, mask, input_ids.shape[1]
        return torch.log_softmax(output.logits[:, -1].float(), dim=-1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        policy = torch.log_softmax(scores.float(), dim=-1)
        teacher = self.teacher_log_probs(input_ids)
        contrast = (1 + self.settings.beta) * policy - self.settings.beta * teacher
        implausible = policy < policy.max(dim=-1, keepdim=True).values + math.log(self.settings.alpha)
        return contrast.masked_fill(implausible, -math.inf).to(scores.dtype)


def contrast_with(teacher: nn.Module, settings: ContrastSettings) -> Callable[[torch.Tensor], LogitsProcessor]:
    """A processor factory for `negatives.generate_answers(..., processor=...)`: one fresh processor
    (and teacher cache) per generate call."""
    return lambda attention_mask: TeacherContrastLogitsProcessor(teacher, attention_mask, settings)


@contextlib.contextmanager
def teacher_for_decoding(teacher: nn.Module, dequantize_once: bool | None = None) -> Iterator[nn.Module]:
    """The teacher in inference mode, its packed layers dequantized once for the block (default: where it fits,
    `layer.materialized`)."""
    with eval_mode(teacher), materialized(teacher, dequantize_once):
        yield teacher


def contrastive_answers(model: nn.Module, teacher: nn.Module, tokenizer, prompts: Sequence[str],
                        generation: GenerationSettings, contrast: ContrastSettings, *,
                        dequantize_once: bool | None = None, progress: bool = False) -> list:
    """Answers to chat-templated `prompts` from `model` (e.g. the 4-bit policy + adapter), decoded
    contrastively against `teacher`; greedy when `generation.temperature` is 0. As `generate_answers`."""
    with teacher_for_decoding(teacher, dequantize_once):
        return generate_answers(model, tokenizer, prompts, generation, progress=progress,
                                desc="contrastive decoding", processor=contrast_with(teacher, contrast))
