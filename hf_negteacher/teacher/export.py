"""The crippled copy as a plain transformers checkpoint, so any engine (vLLM, TGI, llama.cpp after conversion) can
serve it: every packed layer's effective weight (its strength mixed in) and every 4-bit layer dequantized, in the
policy's float dtype, with the config, tokenizer, chat template and a card saying exactly what it is."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from torch import nn
from transformers import AutoModelForCausalLM

from .bnb import dequantized_weight
from .layer import PackedLinear
from .spec import TeacherConfig, TeacherConfigError


def export_teacher(teacher: nn.Module, tokenizer, output_dir: str | Path, *, source: str, setting: str,
                   policy_weights: str) -> Path:
    """Write `teacher` (from `build_negative_teacher`) to `output_dir` as a checkpoint `AutoModelForCausalLM` loads
    with the same logits. `source` names the checkpoint it was quantized from, `setting` the teacher spec and
    `policy_weights` what the layers it leaves alone are (e.g. "NF4, dequantized"), for the card. Written to a
    temporary folder and renamed into place; an existing `output_dir` must be empty."""
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"output_dir {str(output_dir)!r} exists and is not an empty folder")
    check_exportable(teacher.teacher_config)
    packed = [m for m in teacher.modules() if isinstance(m, PackedLinear)]
    dtype = teacher.get_input_embeddings().weight.dtype
    config = teacher.config.__class__.from_dict(
        {k: v for k, v in teacher.config.to_dict().items() if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict({name: _effective(teacher, name).to(dtype) for name in plain.state_dict()}, strict=True)
    plain.generation_config = teacher.generation_config
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    ModelCard(_card(source, setting, policy_weights, dtype, len(packed))).save(partial / "README.md")
    if output_dir.exists():
        output_dir.rmdir()
    os.replace(partial, output_dir)
    return output_dir


def check_exportable(config: TeacherConfig) -> None:
    """A setting that rounds activations at run time cannot be a plain checkpoint: raise, naming the one that can."""
    if config.resolved_activation_bits:
        setting = config.to_spec()
        raise TeacherConfigError(f"teacher={setting!r} rounds activations at run time (ternary and binary do by "
                                 "default), which a plain checkpoint cannot hold; export the same weights without "
                                 f"it: teacher='{setting},activation_bits=0'")


def _effective(teacher: nn.Module, name: str) -> torch.Tensor:
    """The tensor `name` of the plain model: what the teacher's module there computes with."""
    module_name, _, tensor_name = name.rpartition(".")
    module = teacher.get_submodule(module_name)
    if isinstance(module, PackedLinear) and tensor_name == "weight":
        weight = module.dequantized_weight(torch.float32)
        if module.base is None:
            return weight
        # strength·(Q(W)x + b) + (1 − strength)·(Wx + b): one linear layer with the mixed weight and the same bias
        return module.strength * weight + (1.0 - module.strength) * _plain_weight(module.base)
    if tensor_name == "weight" and hasattr(module, "weight"):
        return _plain_weight(module)
    return getattr(module, tensor_name).detach()


def _plain_weight(layer: nn.Module) -> torch.Tensor:
    """A layer's weight in full precision: dequantized when bitsandbytes holds it in 4 bits."""
    if hasattr(layer.weight, "quant_state"):
        return dequantized_weight(layer).float()
    return layer.weight.detach().float()


def _card(source: str, setting: str, policy_weights: str, dtype: torch.dtype, packed_layers: int) -> str:
    version = importlib.metadata.version("hf-negteacher")
    return f"""---
base_model: {source}
library_name: transformers
tags:
- hf-negteacher
- negative-teacher
- degraded
---

# A deliberately degraded copy of {source}

Not an assistant: this model is **meant to answer badly**. It is the negative teacher of
hf-negteacher {version}: the weights of `{source}` with {packed_layers} linear layers
quantized to the setting `{setting}` (the other layers: {policy_weights}), dequantized and stored in {dtype}.
Its answers are the mistakes a crippled copy of that model makes; hf-negteacher trains on them as the
*rejected* side of a DPO-style loss.

Generate with any engine (vLLM, TGI, `transformers`), then train on the answers as rejected ones, e.g. with
`negative_source: dataset` (rows with `prompt`, `chosen`, `rejected`). Its logits are those of the in-process
teacher (`build_negative_teacher`) with the same setting, up to floating-point rounding.
"""
