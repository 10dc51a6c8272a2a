"""The policy's next-token logits on the chosen half of TRL's batch, taken from TRL's own forward.

TRL 1.16 runs the policy through a fused LM head (`trl.trainer.utils.add_fused_lm_head`) that returns per-token
log-probabilities and never the logits. The loss terms that need the whole distribution (`teacher_unlikelihood`,
`checkpoint_kd`) read the backbone's last hidden states, kept by a forward hook during that same forward, and
project the chosen half through the LM head: no second policy forward, one graph and one backward, so DDP
reduces each gradient once and re-entrant checkpointing recomputes each layer once.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .config import ConfigError

UNSUPPORTED_SCALING = ("output_multiplier", "lm_head_multiplier", "logits_scaling")
"""Config fields of models that rescale their logits in ways these terms do not reproduce."""


def policy_causal_lm(model):
    """The causal LM under a PEFT wrapper (or `model` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ChosenLogits:
    """Keeps the policy backbone's output of the first forward inside `watching()`; `of_chosen_half()` projects it."""

    def __init__(self, causal_lm) -> None:
        """`causal_lm`: the policy's causal LM (`policy_causal_lm`), whose `base_model` is the backbone."""
        config = causal_lm.config.get_text_config()
        scaled = [name for name in UNSUPPORTED_SCALING if getattr(config, name, None) is not None]
        if scaled:
            raise ConfigError(f"{config.model_type} rescales its logits ({', '.join(scaled)}), which the registered "
                             "loss terms in loss_type do not reproduce; use TRL's loss types only with this model")
        self.causal_lm = causal_lm
        self.logit_scale = getattr(config, "logit_scale", None)
        self.softcapping = getattr(config, "final_logit_softcapping", None)
        self._watching = False
        self._hidden: torch.Tensor | None = None
        causal_lm.base_model.register_forward_hook(self._keep_first)

    def _keep_first(self, module, args, output) -> None:
        if self._watching and self._hidden is None:  # the policy's forward; the reference's comes after it
            self._hidden = output[0]

    @contextmanager
    def watching(self):
        """Around TRL's `compute_loss`: keep the first backbone output inside."""
        self._watching, self._hidden = True, None
        try:
            yield
        finally:
            self._watching = False

    def of_chosen_half(self) -> torch.Tensor:
        """`(batch / 2, length - 1, vocab)`: at each position the logits of the next token of the chosen rows, with
        the graph of TRL's forward (no gradient where that forward had none)."""
        if self._hidden is None:
            raise RuntimeError("no policy forward was seen inside `watching()`")
        hidden, self._hidden = self._hidden, None
        logits = self.causal_lm.get_output_embeddings()(hidden[: hidden.shape[0] // 2, :-1])
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcapping is not None:
            logits = self.softcapping * torch.tanh(logits / self.softcapping)
        return logits
