"""Bit-packing of quantizer codes into uint8 storage.

2-bit codes (ternary, int2) use transformers' BitNet packing (4 codes per byte along rows), 4-bit
codes two nibbles per byte, and 1- and 3-bit codes bit planes (8 codes per byte per plane).
"""

from __future__ import annotations

import functools

import torch
from transformers.integrations.bitnet import pack_weights, unpack_weights

# transformers wraps `unpack_weights` in torch.compile; on CPU the compiled kernel is ~30x slower
# than the eager function for our shapes, and compiles once per shape. Use the eager one.
_unpack_weights_eager = getattr(unpack_weights, "__wrapped__", unpack_weights)



@functools.cache
def _plane_shifts(device: torch.device) -> torch.Tensor:
    """0..7 on `device`, made once per device: a copy from the CPU at every call would make the host wait for the
    GPU once per layer and decoding step."""
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a uint8 (rows, cols) tensor of `bits`-bit codes."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D, got shape {tuple(codes.shape)}")
    if bits == 2:
        # pack_weights expects values in {-1, 0, 1, 2} and adds 1 in place: hand it a fresh tensor.
        return pack_weights(codes.to(torch.int16) - 1)
    if bits not in (1, 3, 4):
        raise ValueError(f"bits={bits} cannot be packed; allowed: 1, 2, 3, 4")
    flat = codes.reshape(-1)
    if bits == 4:
        flat = torch.nn.functional.pad(flat, (0, flat.numel() % 2))
        return flat[0::2] | (flat[1::2] << 4)
    padded = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    planes = [((padded >> b) & 1).reshape(-1, 8) for b in range(bits)]
    return torch.stack([(p << _plane_shifts(p.device)).sum(-1, dtype=torch.uint8) for p in planes])


def unpack_codes(packed: torch.Tensor, bits: int, shape: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Inverse of `pack_codes`: returns uint8 codes of `shape`."""
    rows, cols = shape
    if bits == 2:
        # uint8 arithmetic wraps, so unpack's "− 1" and our "+ 1" cancel exactly.
        return _unpack_weights_eager(packed, dtype=torch.uint8)[:rows] + 1
    if bits == 4:
        return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(-1)[: rows * cols].reshape(rows, cols)
    shifts = _plane_shifts(packed.device)
    codes = torch.zeros(packed.shape[1] * 8, dtype=torch.uint8, device=packed.device)
    for b in range(bits):  # one temporary per plane
        plane = packed[b].unsqueeze(-1) >> shifts
        codes |= plane.bitwise_and_(1).bitwise_left_shift_(b).view(-1)
    return codes[: rows * cols].reshape(rows, cols)


def packed_nbytes(rows: int, cols: int, bits: int) -> int:
    """Bytes `pack_codes` uses for a (rows, cols) tensor of `bits`-bit codes."""
    if bits == 2:
        return -(-rows // 4) * cols
    if bits == 4:
        return -(-(rows * cols) // 2)
    return bits * -(-(rows * cols) // 8)
