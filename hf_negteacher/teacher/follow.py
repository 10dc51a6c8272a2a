"""A teacher that follows the policy: the checkpoint's weights plus the LoRA delta, quantized again.

SPIN's opponent is the latest model; a fixed teacher is a crippled copy of the *starting* weights. These
helpers give the weights to rebuild it from (`build_negative_teacher(..., weights=policy_weights(...))`)
and move a teacher's packed state in and out of a checkpoint, so a resumed run continues with the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..atomic_write import atomic_write
from .build import _quantizable_linears, _source_weight, _without_adapter
from .layer import PackedLinear
from .spec import TeacherConfig

TEACHER_STATE = "negteacher_teacher.safetensors"
"""The teacher's packed codes and scales, written into each checkpoint when the teacher follows the policy."""


class PolicyWeights(Mapping[str, torch.Tensor]):
    """`{name.weight: W + delta}` for every layer the teacher quantizes: the checkpoint's tensor `W` (from
    `weights`, else the layer's own, dequantized when 4-bit) plus the active LoRA adapters' delta (PEFT's
    `get_delta_weight`), on the CPU in float32. Each is merged when it is read, so a teacher rebuilt from it
    holds one merged layer at a time instead of every one (about 14 GB for Llama-8B blocks 0-15)."""

    def __init__(self, model: nn.Module, config: TeacherConfig, weights: Mapping[str, torch.Tensor] | None = None):
        base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._layers = {f"{name}.weight": (name, layer) for name, layer in _quantizable_linears(base_model, config)}
        self._weights = weights

    @torch.no_grad()
    def __getitem__(self, key: str) -> torch.Tensor:
        name, layer = self._layers[key]
        weight = _source_weight(name, _without_adapter(layer), self._weights).detach().float().cpu()
        if isinstance(layer, BaseTunerLayer) and not layer.disable_adapters:
            for adapter in layer.active_adapters:
                if adapter in getattr(layer, "lora_A", {}):
                    weight = weight + layer.get_delta_weight(adapter).detach().float().cpu()
        return weight

    def __contains__(self, key: object) -> bool:  # Mapping's own would merge the layer to find out
        return key in self._layers

    def __iter__(self):
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)


def policy_weights(model: nn.Module, config: TeacherConfig,
                   weights: Mapping[str, torch.Tensor] | None = None) -> PolicyWeights:
    """The weights to rebuild the teacher from: the checkpoint's plus the policy's LoRA delta (`PolicyWeights`)."""
    return PolicyWeights(model, config, weights)


def packed_state(teacher: nn.Module) -> dict[str, torch.Tensor]:
    """The teacher's own tensors (every `PackedLinear`'s codes and scales) by name."""
    return {f"{name}.{key}": tensor.detach().cpu().contiguous()
            for name, module in teacher.named_modules() if isinstance(module, PackedLinear)
            for key, tensor in (("packed", module.packed), ("scales", module.scales))}


def save_teacher_state(teacher: nn.Module, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    state = packed_state(teacher)
    return atomic_write(Path(folder) / TEACHER_STATE, lambda tmp: save_file(state, tmp))


@torch.no_grad()
def load_teacher_state(teacher: nn.Module, folder: str | Path) -> bool:
    """Copy a saved packed state into `teacher` (same spec and model); False when `folder` holds none."""
    from safetensors.torch import load_file

    path = Path(folder) / TEACHER_STATE
    if not path.is_file():
        return False
    saved = load_file(str(path))
    current = dict(teacher.named_modules())
    expected = packed_state(teacher)
    if set(saved) != set(expected):
        raise ValueError(f"{path}: its tensors do not match this teacher's layers (another teacher spec or model?)")
    for key, tensor in saved.items():
        module_name, attribute = key.rsplit(".", 1)
        getattr(current[module_name], attribute).copy_(tensor)
    return True
