"""Loss terms beside TRL's: registered once with what they need, combined through `loss_type` / `loss_weights`.

TRL's `DPOTrainer` raises on a `loss_type` it does not know, so the trainer splits the registered terms out
of TRL's lists and adds each, weighted, to TRL's loss in `compute_loss`. Adding a term is one `register_loss`
call (plus its test); neither the trainer nor the config names a term.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..models import eval_mode
from .distillation import CHECKPOINT_KD, checkpoint_kd_term
from .token_loss import TEACHER_UNLIKELIHOOD, teacher_unlikelihood


@dataclass(frozen=True)
class LossTerm:
    """A loss term: `compute(trainer, inputs, chosen_logits) -> (loss, statistics to log under name/...)`, on TRL's
    concatenated batch ([chosen; rejected] halves, with `completion_mask`). `chosen_logits` is a callable giving the
    policy's `(batch / 2, length - 1, vocab)` next-token logits on the chosen half, from TRL's own forward
    (`policy_logits.ChosenLogits`), computed once when a term first calls it."""

    name: str
    compute: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    reads_rejected: bool
    """False: the term never reads the rejected side (beside `sft`, no negatives need to be generated)."""
    pulls_reference_up: bool
    """False: alone (or only with such terms) it cannot train; the config refuses that."""


LOSS_TERMS: dict[str, LossTerm] = {}


def register_loss(term: LossTerm) -> LossTerm:
    """Make `term.name` a valid `loss_type` entry."""
    LOSS_TERMS[term.name] = term
    return term


def split_loss_types(loss_types: Sequence[str], loss_weights: Sequence[float]
                     ) -> tuple[list[str], list[float], list[tuple[LossTerm, float]]]:
    """TRL's loss types and weights, in order, and the registered terms with their weights."""
    pairs = list(zip(loss_types, loss_weights, strict=True))
    trl = [(t, w) for t, w in pairs if t not in LOSS_TERMS]
    return [t for t, _ in trl], [w for _, w in trl], [(LOSS_TERMS[t], float(w)) for t, w in pairs if t in LOSS_TERMS]


def check_loss_types(loss_types: Sequence[str]) -> None:
    """At least one entry must pull the reference up (a TRL loss type, or a term that does)."""
    if all(t in LOSS_TERMS and not LOSS_TERMS[t].pulls_reference_up for t in loss_types):
        raise ValueError(f"loss_type={list(loss_types)}: {', '.join(loss_types)} only push tokens down; add a loss "
                         f"that pulls the reference up, e.g. [sft, {loss_types[0]}]")


def reads_rejected(loss_types: Sequence[str]) -> bool:
    """Whether any entry reads the rejected side (TRL's types do, except `sft`)."""
    return any(LOSS_TERMS[t].reads_rejected if t in LOSS_TERMS else t != "sft" for t in loss_types)


def _teacher_unlikelihood_term(trainer, inputs, chosen_logits) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`teacher_unlikelihood` on the chosen half of the batch: the policy's logits from TRL's forward, one teacher
    forward."""
    half = inputs["input_ids"].shape[0] // 2
    input_ids, attention_mask = inputs["input_ids"][:half], inputs["attention_mask"][:half]
    positions = inputs["completion_mask"][:half, 1:].bool()
    with torch.no_grad(), eval_mode(trainer.teacher):
        teacher_logits = trainer.teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    loss, stats = teacher_unlikelihood(chosen_logits()[positions], teacher_logits[:, :-1][positions],
                                       input_ids[:, 1:][positions], trainer.args.teacher_token_top_k)
    return loss, {"loss": loss.detach(), **stats}


register_loss(LossTerm(TEACHER_UNLIKELIHOOD, _teacher_unlikelihood_term, reads_rejected=False,
                       pulls_reference_up=False))

register_loss(LossTerm(CHECKPOINT_KD, checkpoint_kd_term, reads_rejected=False, pulls_reference_up=True))
