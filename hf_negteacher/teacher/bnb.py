"""The bitsandbytes backend: the full-precision weight of a 4-bit (or 8-bit) layer, for quantizing it again."""

from __future__ import annotations

import copy

import torch
from peft.utils.integrations import dequantize_module_weight
from torch import nn


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """PEFT's `dequantize_module_weight`, plus bitsandbytes' CPU inference layout.

    After an eval-mode, no-grad forward on a CPU with AVX512-BF16, `Linear4bit` repacks its weight
    for its CPU kernel (`packing_format_for_cpu`); PEFT's helper then returns garbage (bnb 0.50,
    peft 0.21). Undo the repacking on a copy of the quant state, leaving the layer as it is.
    """
    quant_state = getattr(getattr(layer, "weight", None), "quant_state", None)
    if getattr(quant_state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse, dequantize_4bit

        qweight, state = _convert_weight_packed_for_cpu_inverse(layer.weight.data, copy.deepcopy(quant_state))
        return dequantize_4bit(qweight, state)
    return dequantize_module_weight(layer)

