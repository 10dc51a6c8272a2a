"""`NegativeFilter`: which generated negatives are dropped (empty, equal to the reference, duplicates), counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class NegativeFilter:
    """Which negatives are dropped; `counts` tallies what was generated and why anything was dropped."""

    empty: bool = True
    equal_to_reference: bool = True
    duplicates: bool = True

    def __post_init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def apply(self, negatives: Sequence, reference, kept: Sequence = ()) -> list:
        """The negatives (token-id lists or texts) of one prompt that pass the filters; `kept`: this
        prompt's negatives already accepted (a resample must not duplicate them)."""
        new: list = []
        for negative in negatives:
            self.counts["generated"] += 1
            reason = self._reason(negative, reference, [*kept, *new])
            if reason:
                self.counts[f"filtered_{reason}"] += 1
            else:
                new.append(negative)
        return new

    def _reason(self, negative, reference, kept: list) -> str | None:
        normalized = negative.strip() if isinstance(negative, str) else list(negative)
        if self.empty and not normalized:
            return "empty"
        if self.equal_to_reference and normalized == (reference.strip() if isinstance(reference, str) else reference):
            return "equal_to_reference"
        if self.duplicates and normalized in kept:
            return "duplicate"
        return None

    @property
    def filtered(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("filtered_"))

    @property
    def filtered_fraction(self) -> float:
        return self.filtered / self.counts["generated"] if self.counts["generated"] else 0.0

