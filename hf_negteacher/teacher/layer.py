"""`PackedLinear`: a frozen linear layer stored as packed low-bit codes plus scales, and its dequantize-once mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .packing import pack_codes, unpack_codes
from .quantizers import dequantize, fake_quantize_activations, quantize
from .spec import TeacherConfig


class PackedLinear(nn.Module):
    """A frozen linear layer whose weight is stored as packed low-bit codes plus scales.

    With `strength` < 1 it returns `strength·Q(W)x + (1 − strength)·base(x)`, `base` being the
    source model's own layer (shared, not copied).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, config: TeacherConfig,
                 base: nn.Module | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.quantizer = config.quantizer
        self.bits = config.bits
        self.activation_bits = config.resolved_activation_bits
        self.strength = float(config.strength)
        quantized = quantize(weight, config)
        self.offset = quantized.offset
        self.register_buffer("packed", pack_codes(quantized.codes, self.bits))
        self.register_buffer("scales", quantized.scales.to(torch.float16))
        self.register_buffer("bias", bias, persistent=False)
        self.base = base if self.strength < 1.0 else None
        self.requires_grad_(False)
        self.keep_dequantized = False  # set by `materialized` for the length of a generate call
        self._dequantized: torch.Tensor | None = None

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.packed, self.bits, (self.out_features, self.in_features))

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes(), self.scales, self.offset, self.quantizer, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.keep_dequantized:
            weight = self.dequantized_weight(x.dtype)
        else:
            if self._dequantized is None or self._dequantized.dtype != x.dtype:
                self._dequantized = self.dequantized_weight(x.dtype)
            weight = self._dequantized
        x_in = fake_quantize_activations(x, self.activation_bits) if self.activation_bits else x
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = F.linear(x_in, weight, bias)
        if self.base is not None:
            y = self.strength * y + (1.0 - self.strength) * self.base(x).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"quantizer={self.quantizer}, scales={tuple(self.scales.shape)}, "
                f"activation_bits={self.activation_bits}, strength={self.strength}")


def dequantize_once_by_default() -> bool:
    """Whether `materialized` is worth it by default: without CUDA (plain-PyTorch dequantization is slow
    there), not on GPU (where the transient full-precision copy costs scarce memory)."""
    return not torch.cuda.is_available()


@contextlib.contextmanager
def materialized(teacher: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Dequantize each packed layer once and keep it until the block ends (one `generate` call), instead
    of at every forward: faster decoding, at the price of a transient full-precision copy of those layers."""
    layers = [m for m in teacher.modules() if isinstance(m, PackedLinear)] if enabled else []
    try:
        for layer in layers:
            layer.keep_dequantized = True
        yield teacher
    finally:
        for layer in layers:
            layer.keep_dequantized, layer._dequantized = False, None

