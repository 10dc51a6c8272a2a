"""`PackedLinear`: a frozen linear layer stored as packed low-bit codes plus scales, and its dequantize-once mode."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .packing import pack_codes, unpack_codes
from .quantizers import dequantize, fake_quantize_activations, quantize
from .spec import TeacherConfig

logger = logging.getLogger(__name__)


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


def dequantize_once_fits(layers: list[PackedLinear], free_bytes: int | None, dtype: torch.dtype) -> bool:
    """Whether dequantizing `layers` once pays: always on the CPU (`free_bytes` None), where dequantizing at every
    decoding step dominates generation; on a GPU when its free memory holds their `dtype` copy twice over."""
    if free_bytes is None:
        return True
    needed = sum(layer.out_features * layer.in_features for layer in layers) * torch.finfo(dtype).bits // 8
    return 2 * needed <= free_bytes


@contextlib.contextmanager
def materialized(teacher: nn.Module, enabled: bool | None = True) -> Iterator[nn.Module]:
    """Dequantize each packed layer once and keep it until the block ends (one `generate` call), instead
    of at every forward: faster decoding, at the price of a transient full-precision copy of those layers.
    `enabled=None` decides by `dequantize_once_fits` from the device's measured free memory, logged once."""
    layers = [m for m in teacher.modules() if isinstance(m, PackedLinear)]
    if enabled is None and layers:
        enabled = _decide(teacher, layers)
    layers = layers if enabled else []
    try:
        for layer in layers:
            layer.keep_dequantized = True
        yield teacher
    finally:
        for layer in layers:
            layer.keep_dequantized, layer._dequantized = False, None


def _decide(teacher: nn.Module, layers: list[PackedLinear]) -> bool:
    device = layers[0].packed.device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    dtype = next((p.dtype for p in teacher.parameters() if p.is_floating_point()), torch.float32)
    fits = dequantize_once_fits(layers, free, dtype)
    if getattr(teacher, "_dequantize_once_decided", None) != fits:
        teacher._dequantize_once_decided = fits
        where = "on the CPU" if free is None else f"{free / 2**30:.1f} GiB free on {device}"
        logger.info("teacher: dequantizing its packed layers %s per generate call (%s)",
                    "once" if fits else "at every forward", where)
    return fits
