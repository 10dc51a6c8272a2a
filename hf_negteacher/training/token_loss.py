"""A token-level negative loss that needs no generation: unlikelihood on the teacher's guesses.

At every position of the reference answer, the negative teacher's `top_k` most likely next tokens,
except the reference token itself, are the mistakes a crippled copy of the model would make there;
the policy is trained to give them less probability (unlikelihood training, Welleck et al. 2019):
`-log(1 - p_policy(v))` per such token, averaged over reference tokens. It is a loss type beside
TRL's (`loss_type: [sft, teacher_unlikelihood]`), weighted by `loss_weights` like them.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import selective_log_softmax

TEACHER_UNLIKELIHOOD = "teacher_unlikelihood"
# log(1 - p) is clamped here so a token the policy is certain of gives a large but finite loss.
_MAX_PROBABILITY = 1 - 1e-6


def teacher_unlikelihood(policy_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                         top_k: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss over reference positions (rows of the `(tokens, vocab)` logits; `labels` the reference
    tokens) and detached statistics: `teacher_wrong` (share of positions whose teacher top-1 is not the
    reference) and `negative_prob` (mean policy probability of the pushed-down tokens)."""
    candidates = teacher_logits.topk(top_k, dim=-1).indices
    negative = candidates != labels.unsqueeze(-1)
    probs = selective_log_softmax(policy_logits.float(), candidates).exp()
    unlikely = -torch.log1p(-probs.clamp(max=_MAX_PROBABILITY)) * negative
    loss = unlikely.sum() / max(labels.numel(), 1)
    with torch.no_grad():
        stats = {"teacher_wrong": negative[:, 0].float().mean(),
                 "negative_prob": (probs * negative).sum() / negative.sum().clamp(min=1)}
    return loss, stats

