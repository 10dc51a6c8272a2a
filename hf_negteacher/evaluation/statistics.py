"""Does it help? Per-row held-out scores of one model, their aggregates, and paired bootstrap intervals.

Rows are grouped: `answers` (reference log-probability and tokens -> answer perplexity), `generation`
(greedy or sampled answers against the references), `preference` (reference vs the teacher's held-out
negative). A group's rows are the same for every model, so two models compare row by row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .perplexity import answer_perplexity

RowScores = dict[str, dict[str, np.ndarray]]


def aggregate(scores: RowScores, index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each metric over the rows `index` selects (shape resamples x rows; None: every row once)."""
    out: dict[str, np.ndarray] = {}
    for group, rows in scores.items():
        n = len(next(iter(rows.values())))
        idx = np.arange(n)[None] if index is None else index[group] if isinstance(index, Mapping) else index
        pick = {key: values[idx] for key, values in rows.items()}
        if group == "answers":
            out |= answer_perplexity(rows, idx)
        elif group == "generation":
            for key, name in (("rougeL", "rougeL"), ("chrF", "chrF"), ("words", "words"),
                              ("empty", "empty_fraction"), ("cut_off", "cut_off_fraction"),
                              ("exact_match", "exact_match"), ("accepted_match", "accepted_match")):
                if key in pick:
                    out[name] = pick[key].mean(1)
        elif group == "choice":
            out["choice_accuracy/builtin"] = pick["choice_correct"].mean(1)
        elif group == "preference":
            out["preference_accuracy"] = pick["preference_correct"].mean(1)
            out["preference_accuracy_per_token"] = pick["preference_correct_per_token"].mean(1)
            out["preference_margin"] = pick["preference_margin"].mean(1)
    return out


def metrics(scores: RowScores) -> dict[str, float]:
    return {key: float(values[0]) for key, values in aggregate(scores).items()}


@dataclass(frozen=True)
class Difference:
    a: float
    b: float
    difference: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        """Half the interval's width: about the smallest difference these rows could have told from zero."""
        return (self.high - self.low) / 2


def paired_bootstrap(a: RowScores, b: RowScores, *, resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, Difference]:
    """For every metric, A - B on the same rows with a paired percentile bootstrap interval over rows
    (`scipy.stats.bootstrap` over the row indices of each group, one generator seeded once)."""
    if set(a) != set(b):
        raise ValueError(f"the two models were scored on different row groups: {sorted(a)} vs {sorted(b)}")
    sizes = {group: len(next(iter(a[group].values()))) for group in a}
    for group, n in sizes.items():
        if n != len(next(iter(b[group].values()))):
            raise ValueError(f"row group {group!r}: {n} rows for A, {len(next(iter(b[group].values())))} for B")
    rng = np.random.default_rng(seed)
    point_a, point_b = metrics(a), metrics(b)
    result = {}
    for group, n in sizes.items():
        keys = list(aggregate({group: a[group]}))

        def difference(index: np.ndarray, axis: int = -1, group: str = group, keys: list = keys) -> np.ndarray:
            index = np.atleast_2d(index)  # scipy asks once for the point estimate (one row of indices)
            sample_a, sample_b = aggregate({group: a[group]}, index), aggregate({group: b[group]}, index)
            out = np.stack([sample_a[key] - sample_b[key] for key in keys])
            return out if len(index) > 1 else out[:, 0]

        interval = stats.bootstrap((np.arange(n),), difference, n_resamples=resamples, vectorized=True,
                                   method="percentile", confidence_level=confidence, rng=rng).confidence_interval
        for key, low, high in zip(keys, interval.low, interval.high, strict=True):
            result[key] = Difference(point_a[key], point_b[key], point_a[key] - point_b[key], float(low), float(high))
    return {key: result[key] for key in point_a}
