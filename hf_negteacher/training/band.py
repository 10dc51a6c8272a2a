"""Pairs in the informative band: the implicit reward margin of a candidate pair before it is trained on.

DPO's gradient on a pair is weighted by sigmoid(-margin), margin = beta [(log pi - log pi_ref)(chosen) -
(log pi - log pi_ref)(rejected)]: a pair the policy already separates by a wide margin teaches almost nothing
(Selective DPO, arXiv 2502.09650; "sweet spot" pairs, arXiv 2502.16825). Under `loss_type: [sigmoid_norm]` the
sigmoid sees each side's log-ratio divided by its token count, and so does the band. The trainer scores each new
candidate this way and treats one outside `[band_min_margin, band_max_margin]` as filtered: resampled, then
filled if still short (`band/filtered_fraction`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from accelerate.utils import is_peft_model
from trl.trainer.utils import use_adapter

from ..logprobs import completion_logprobs
from ..models import eval_mode


@torch.no_grad()
def pair_margins(trainer, prompts: Sequence[list[int]], chosen: Sequence[list[int]],
                 rejected: Sequence[list[int]], suffixes: Sequence[list[int]]) -> list[float]:
    """Per pair, the reward margin that TRL's sigmoid loss weights, under the current policy and its reference
    (the adapter disabled, TRL's way, or `trainer.ref_model`), answers scored with their end-of-answer
    `suffixes`: summed over tokens, or per token where the loss is length-normalized (`per_token_margins`)."""
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(policy) and trainer.ref_model is None:
        reference = policy
        reference_context = use_adapter(policy, adapter_name="ref" if "ref" in policy.peft_config else None)
    else:
        reference, reference_context = trainer.ref_model, contextlib.nullcontext()
    answers = [list(c) + list(s) for c, s in zip(chosen, suffixes, strict=True)]
    answers += [list(r) + list(s) for r, s in zip(rejected, suffixes, strict=True)]
    contexts = list(prompts) * 2
    pad, batch = trainer.processing_class.pad_token_id, trainer.args.generation_batch_size

    def sums(model) -> torch.Tensor:
        with eval_mode(model):
            scores = completion_logprobs(model, contexts, answers, pad_token_id=pad, batch_size=batch)
        return torch.tensor([total for total, _ in scores], dtype=torch.float64)

    on_policy = sums(policy)
    with reference_context:
        on_reference = sums(reference)
    ratio = on_policy - on_reference
    if per_token_margins(trainer.args.loss_type):
        ratio /= torch.tensor([max(len(answer), 1) for answer in answers], dtype=torch.float64)
    count = len(chosen)
    return (trainer.args.beta * (ratio[:count] - ratio[count:])).tolist()


def per_token_margins(loss_types: Sequence[str]) -> bool:
    """Whether the loss's sigmoid sees per-token log-ratios: `sigmoid_norm` without a summed `sigmoid` beside it."""
    return "sigmoid_norm" in loss_types and "sigmoid" not in loss_types


def in_band(margin: float, low: float | None, high: float | None) -> bool:
    return (low is None or margin >= low) and (high is None or margin <= high)
