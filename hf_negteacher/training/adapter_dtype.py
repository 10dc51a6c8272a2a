"""The dtype of the trainable LoRA weights, which TRL sets for quantized models and a resume would change.

TRL casts a quantized model's trainable LoRA weights to bfloat16 (QLoRA's GPU recipe), whatever the compute dtype;
the Trainer resumes a PEFT model with `load_adapter`, whose default `autocast_adapter_dtype` upcasts bfloat16
adapters to float32 (TRL 1.16, PEFT 0.21)."""

from __future__ import annotations

import torch


def adapter_in_float32(model: torch.nn.Module) -> None:
    """Trainable bfloat16 weights back to float32: with float32 compute, bfloat16 weights round away every update
    smaller than 1/256 of a weight."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype == torch.bfloat16:
            parameter.data = parameter.data.float()


class KeepsAdapterDtypeOnResume:
    """A `transformers.Trainer` mixin (put it first): the trainable weights a checkpoint restores keep the dtype
    they trained in, so a resumed run goes on in the precision of the run it resumes. Hooks the Trainer's
    `_load_from_checkpoint`, which runs before the optimizer is built, so its state loads in that dtype too."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = self.model if model is None else model
        dtypes = {name: param.dtype for name, param in target.named_parameters() if param.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])
