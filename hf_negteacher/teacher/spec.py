"""Settings of the negative teacher: which quantizer, how coarse, which blocks, how strong."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

QUANTIZER_BITS: dict[str, int] = {"ternary": 2, "binary": 1, "int2": 2, "int3": 3, "int4": 4}
"""Quantizer name -> bits used to store one code (ternary codes take 2 bits when packed)."""

GRANULARITIES = ("tensor", "channel", "group")


class TeacherConfigError(ValueError):
    """A teacher setting is invalid; the message names the field and the allowed values."""


@dataclass
class TeacherConfig:
    """How the low-bit copy of the policy is made.

    The dial, from weakest to strongest: more bits, smaller groups, fewer quantized blocks, lower
    `strength`. `strength` is λ in `W_neg = W + λ·(Q(W) − W)`; below 1 the teacher computes
    `λ·Q(W)x + (1 − λ)·Wx` with `W` the policy's own (shared) layer, so it costs no extra memory.
    """

    quantizer: str = "ternary"
    granularity: str | None = None
    """`tensor`, `channel` (one scale per output row) or `group`; default: `tensor` for ternary and
    binary (as BitNet), `group` for int2/int3/int4."""
    group_size: int = 64
    """Input columns sharing one scale when `granularity` is `group`."""
    blocks: list[int] | None = None
    """Indices of the decoder blocks to quantize (negative counts from the end); None: all."""
    strength: float = 1.0
    """λ in (0, 1]: 1 is the full low-bit copy."""
    activation_bits: int | None = None
    """Per-token absmax activation quantization; default 8 for ternary (as BitNet b1.58), else
    off. 0 switches it off."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def bits(self) -> int:
        return QUANTIZER_BITS[self.quantizer]

    @property
    def resolved_granularity(self) -> str:
        if self.granularity is not None:
            return self.granularity
        return "tensor" if self.quantizer in ("ternary", "binary") else "group"

    @property
    def resolved_activation_bits(self) -> int | None:
        if self.activation_bits is None:
            return 8 if self.quantizer == "ternary" else None
        return self.activation_bits or None

    def validate(self) -> None:
        if self.quantizer not in QUANTIZER_BITS:
            raise TeacherConfigError(
                f"teacher quantizer={self.quantizer!r} is unknown; allowed: {', '.join(QUANTIZER_BITS)}"
            )
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise TeacherConfigError(
                f"teacher granularity={self.granularity!r} is unknown; allowed: {', '.join(GRANULARITIES)}"
            )
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise TeacherConfigError(f"teacher group_size={self.group_size!r} must be a positive integer")
        if not 0.0 < float(self.strength) <= 1.0:
            raise TeacherConfigError(f"teacher strength={self.strength!r} must be in (0, 1]")
        if self.activation_bits is not None and not (self.activation_bits == 0 or 2 <= self.activation_bits <= 16):
            raise TeacherConfigError(
                f"teacher activation_bits={self.activation_bits!r} must be 0 (off) or between 2 and 16"
            )
        if self.blocks is not None and not all(isinstance(b, int) for b in self.blocks):
            raise TeacherConfigError(f"teacher blocks={self.blocks!r} must be a list of block indices")

    def check_blocks(self, count: int) -> None:
        """Refuse block indices a model of `count` decoder blocks does not have, naming them as ranges."""
        outside = sorted({b for b in self.blocks or () if not -count <= b < count})
        if outside:
            raise TeacherConfigError(f"teacher blocks={_format_blocks(self.blocks)}: the model has {count} decoder "
                                     f"blocks (0-{count - 1}, or -{count}..-1 from the end); "
                                     f"{_format_blocks(outside)} are not among them")

    def to_spec(self) -> str:
        """Compact text form, e.g. `int3,group_size=64,blocks=0-14`; `from_spec` reads it back."""
        parts = [self.quantizer]
        defaults = TeacherConfig(quantizer=self.quantizer)
        for f in dataclasses.fields(self):
            if f.name == "quantizer":
                continue
            value = getattr(self, f.name)
            if value == getattr(defaults, f.name):
                continue
            if f.name == "group_size" and self.resolved_granularity != "group":
                continue
            if f.name == "blocks":
                value = _format_blocks(value)
            parts.append(f"{f.name}={value}")
        return ",".join(parts)

    @classmethod
    def from_spec(cls, spec: str) -> TeacherConfig:
        """Parse `quantizer[,field=value...]`, e.g. `int4,group_size=128` or `ternary,strength=0.3`."""
        name, *assignments = [p.strip() for p in spec.split(",") if p.strip()]
        kwargs: dict[str, Any] = {"quantizer": name}
        known = {f.name for f in dataclasses.fields(cls)}
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or key not in known or key == "quantizer":
                raise TeacherConfigError(
                    f"teacher spec {spec!r}: {assignment!r} is not `field=value` with field one of "
                    f"{', '.join(sorted(known - {'quantizer'}))}"
                )
            kwargs[key] = _parse_value(key, raw, spec)
        return cls(**kwargs)


def _parse_value(key: str, raw: str, spec: str) -> Any:
    try:
        if key == "blocks":
            return _parse_blocks(raw)
        if key == "strength":
            return float(raw)
        if key in ("group_size", "activation_bits"):
            return int(raw)
    except ValueError:
        raise TeacherConfigError(f"teacher spec {spec!r}: cannot read {key}={raw!r}") from None
    return raw


def _parse_blocks(raw: str) -> list[int]:
    """`0-3+8+10-11` -> [0, 1, 2, 3, 8, 10, 11] (`+` separates items since `,` separates fields)."""
    blocks: list[int] = []
    for item in raw.split("+"):
        start, dash, end = item.partition("-")
        if dash and start:
            blocks.extend(range(int(start), int(end) + 1))
        else:
            blocks.append(int(item))
    return blocks


def _format_blocks(blocks: list[int]) -> str:
    runs: list[list[int]] = []
    for b in blocks:
        if runs and b == runs[-1][-1] + 1 and b >= 0:
            runs[-1].append(b)
        else:
            runs.append([b])
    return "+".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def default_grid() -> list[TeacherConfig]:
    """The calibration grid, weakest first (its `blocks` fit a 30-block model such as SmolLM2-135M). On SmolLM2
    (the Q4_1 GGUF dequantized to fp32, bundled eval rows) these gave teacher/policy reference-perplexity ratios
    of about 1.5, 2.7, 3.2, 5, 11, 32, 1.3 and 210."""
    specs = [
        "int4",
        "int3,blocks=0-14",
        "int3,blocks=15-29",
        "int3,group_size=32",
        "int3",
        "int3,group_size=192",
        "ternary,strength=0.25",
        "ternary,strength=0.5",
    ]
    return [TeacherConfig.from_spec(s) for s in specs]


__all__ = ["QUANTIZER_BITS", "TeacherConfig", "TeacherConfigError", "default_grid"]
