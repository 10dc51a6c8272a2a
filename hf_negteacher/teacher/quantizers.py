"""Weight quantizers: a float matrix -> unsigned integer codes + scales, and back.

Every quantizer is `W ≈ (codes − offset) · scale`, with one scale per tensor, per output row, or
per group of `group_size` consecutive input columns of a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import TeacherConfig, TeacherConfigError

_EPS = 1e-8


@dataclass
class QuantizedWeight:
    codes: torch.Tensor
    """uint8, shape (out_features, in_features), values in [0, 2**bits)."""
    scales: torch.Tensor
    """float, shape (1, 1), (out_features, 1) or (out_features, in_features // group_size)."""
    offset: int
    """Code of the level 0: `value = (code − offset) · scale`."""


def levels(config: TeacherConfig) -> tuple[int, int]:
    """Smallest and largest integer level the quantizer emits (before scaling)."""
    if config.quantizer == "ternary":
        return -1, 1
    if config.quantizer == "binary":
        return -1, 1  # sign: codes 0 and 1 stand for -1 and +1
    half = 2 ** (config.bits - 1)
    return -half, half - 1


def _grouped(weight: torch.Tensor, config: TeacherConfig) -> torch.Tensor:
    """View `weight` as (rows, groups, columns per group) for the configured granularity."""
    out_features, in_features = weight.shape
    granularity = config.resolved_granularity
    if granularity == "tensor":
        return weight.reshape(1, 1, -1)
    if granularity == "channel":
        return weight.reshape(out_features, 1, in_features)
    if in_features % config.group_size:
        raise TeacherConfigError(
            f"teacher group_size={config.group_size} does not divide in_features={in_features} of a "
            f"{tuple(weight.shape)} weight; choose a divisor of {in_features} or granularity=channel"
        )
    return weight.reshape(out_features, in_features // config.group_size, config.group_size)


def quantize(weight: torch.Tensor, config: TeacherConfig) -> QuantizedWeight:
    """Quantize a 2-D float weight. Does not modify `weight`."""
    if weight.dim() != 2:
        raise TeacherConfigError(f"can only quantize 2-D Linear weights, got shape {tuple(weight.shape)}")
    w = _grouped(weight.detach().float(), config)
    if config.quantizer == "binary":
        scale = w.abs().mean(dim=-1, keepdim=True).clamp(min=_EPS)
        q = torch.where(w >= 0, 1, -1)
        codes = (q > 0).to(torch.uint8)
        offset = 0  # decoded as 2·code − 1, see dequantize
    else:
        low, high = levels(config)
        if config.quantizer == "ternary":  # BitNet b1.58: absmean scaling
            scale = w.abs().mean(dim=-1, keepdim=True).clamp(min=_EPS)
        else:  # symmetric round-to-nearest: absmax maps to the largest positive level
            scale = (w.abs().amax(dim=-1, keepdim=True) / high).clamp(min=_EPS)
        q = torch.round(w / scale).clamp(low, high)
        offset = -low
        codes = (q + offset).to(torch.uint8)
    rows = weight.shape[0] if config.resolved_granularity != "tensor" else 1
    return QuantizedWeight(
        codes=codes.reshape(weight.shape),
        scales=scale.reshape(rows, -1),
        offset=offset,
    )


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, offset: int, quantizer: str, dtype: torch.dtype
) -> torch.Tensor:
    """Codes + scales -> float weight of shape `codes.shape`, built in place in one float tensor (this runs at
    every forward where the teacher is not dequantized once)."""
    out_features, in_features = codes.shape
    values = codes.to(dtype)  # a new tensor: codes are uint8
    if quantizer == "binary":
        values.mul_(2).sub_(1)
    else:
        values.sub_(offset)
    rows, groups = scales.shape
    values.view(rows, groups, -1).mul_(scales.to(dtype).unsqueeze(-1))
    return values


def fake_quantize_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-token absmax quantization of activations to `bits` (BitNet), returned dequantized."""
    high = 2 ** (bits - 1) - 1
    scale = high / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-high - 1, high) / scale
