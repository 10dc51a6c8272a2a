"""`checkpoint_kd`: token-level distillation from the unquantized checkpoint, a loss term beside TRL's.

At every position of the chosen answer, the policy's next-token distribution is pulled toward the checkpoint's
(the same weights before 4-bit quantization; `chosen_checkpoint`, loaded once, shared with
`chosen_source: checkpoint`), by TRL's generalized Jensen-Shannon divergence (`GKDTrainer.generalized_jsd_loss`,
arXiv 2306.13649): `checkpoint_kd_beta` 0 is the forward KL(checkpoint || policy), 1 the reverse KL, between
them the generalized JSD; over the full vocabulary, at `checkpoint_kd_temperature`. It reads no rejected side:
`loss_type: [sft, checkpoint_kd]` with `loss_weights: [0, 1]` is distillation alone, and
`[sigmoid, sft, checkpoint_kd]` adds it to the preference loss.
"""

from __future__ import annotations

import warnings

import torch

from ..models import eval_mode
from .chosen_sources import CheckpointSource

CHECKPOINT_KD = "checkpoint_kd"


def checkpoint_divergence(policy_logits: torch.Tensor, checkpoint_logits: torch.Tensor, labels: torch.Tensor, *,
                          beta: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
    """Mean divergence over the positions whose label is not -100 (logits `(batch, positions, vocab)`)."""
    with warnings.catch_warnings():  # trl.experimental says, on import, that its API may change: pinned <1.17
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss(policy_logits.float(), checkpoint_logits.float(), labels=labels,
                                           beta=beta, temperature=temperature)


def checkpoint_model(trainer):
    """The unquantized checkpoint: the chosen source's, when it is `checkpoint`; else loaded once here."""
    source = trainer.chosen_source
    if not isinstance(source, CheckpointSource):
        source = trainer.__dict__.setdefault("_distillation_checkpoint", CheckpointSource())
    return source.answer_model(trainer.accelerator.unwrap_model(trainer.model), trainer.args)


def checkpoint_kd_term(trainer, inputs, chosen_logits) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`checkpoint_kd` on the chosen half of TRL's batch: the policy's logits from TRL's forward, one checkpoint
    forward."""
    half = inputs["input_ids"].shape[0] // 2
    input_ids, attention_mask = inputs["input_ids"][:half], inputs["attention_mask"][:half]
    labels = input_ids[:, 1:].masked_fill(~inputs["completion_mask"][:half, 1:].bool(), -100)
    checkpoint = checkpoint_model(trainer)
    with torch.no_grad(), eval_mode(checkpoint):
        target = checkpoint(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    loss = checkpoint_divergence(chosen_logits(), target, labels, beta=trainer.args.checkpoint_kd_beta,
                                 temperature=trainer.args.checkpoint_kd_temperature)
    return loss, {"loss": loss.detach()}
