"""Does it help? Per-row held-out scores of one model, their aggregates, and paired bootstrap intervals:
over rows (`paired_bootstrap`), or over training seeds and then rows (`seed_row_bootstrap`).

Rows are grouped: `answers` (reference log-probability and tokens -> answer perplexity), `generation`
(greedy or sampled answers against the references), `choice` (multiple choice), `roundtrip` (a frozen judge
picks the word from each generated definition), `preference` (reference vs the teacher's held-out negative),
`checkpoint_kl` (the token KL from the unquantized checkpoint on the reference answers).
A group's rows are the same for every model, so two models compare row by row. numpy and scipy only: the
benchmark report runs on a machine without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

RowScores = dict[str, dict[str, np.ndarray]]
GENERATION_METRICS = {"rougeL": "rougeL", "chrF": "chrF", "words": "words", "empty": "empty_fraction",
                      "cut_off": "cut_off_fraction", "exact_match": "exact_match", "accepted_match": "accepted_match",
                      "first_word_match": "first_word_match", "accepted_anywhere": "accepted_anywhere"}
"""Per-row key of the `generation` group -> its metric (the mean over rows)."""
MEAN_METRICS = {"choice": {"choice_correct": "choice_accuracy/builtin",
                           "choice_correct_ended": "choice_accuracy_ended/builtin"},
                "roundtrip": {"roundtrip_correct": "roundtrip_accuracy"},
                "preference": {"preference_correct": "preference_accuracy",
                               "preference_correct_per_token": "preference_accuracy_per_token",
                               "preference_margin": "preference_margin"},
                "generation": GENERATION_METRICS}


def answer_perplexity(rows: dict[str, np.ndarray], index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Token-weighted answer perplexity and bits per byte over the rows `index` selects (resamples x rows)."""
    index = np.arange(len(rows["answer_logprob"]))[None] if index is None else index
    total = rows["answer_logprob"][index].sum(1)
    return {"answer_perplexity/builtin": np.exp(-total / rows["answer_tokens"][index].sum(1)),
            "answer_bits_per_byte/builtin": -total / rows["answer_bytes"][index].sum(1) / math.log(2)}


def checkpoint_kl(rows: dict[str, np.ndarray], index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Token-weighted mean KL(checkpoint || model) over the reference answers of the rows `index` selects."""
    index = np.arange(len(rows["kl_sum"]))[None] if index is None else index
    return {"checkpoint_kl/builtin": rows["kl_sum"][index].sum(1) / rows["kl_tokens"][index].sum(1)}


def aggregate(scores: RowScores, index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each metric over the rows `index` selects (shape resamples x rows; None: every row once)."""
    out: dict[str, np.ndarray] = {}
    for group, rows in scores.items():
        n = len(next(iter(rows.values())))
        idx = np.arange(n)[None] if index is None else index[group] if isinstance(index, Mapping) else index
        pick = {key: values[idx] for key, values in rows.items()}
        if group == "answers":
            out |= answer_perplexity(rows, idx)
        elif group == "checkpoint_kl":
            out |= checkpoint_kl(rows, idx)
        else:
            out |= {name: pick[key].mean(1) for key, name in MEAN_METRICS.get(group, {}).items() if key in pick}
    return out


def metrics(scores: RowScores) -> dict[str, float]:
    return {key: float(values[0]) for key, values in aggregate(scores).items()}


def metric_rows(scores: RowScores) -> dict[str, int]:
    """How many rows each metric of `aggregate` averages over."""
    counts: dict[str, int] = {}
    for group, rows in scores.items():
        n = len(next(iter(rows.values())))
        names = (answer_perplexity(rows) if group == "answers" else checkpoint_kl(rows) if group == "checkpoint_kl"
                 else MEAN_METRICS.get(group, {}).values())
        counts |= dict.fromkeys(names, n)
    return counts


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


@dataclass(frozen=True)
class SeedDifference(Difference):
    per_seed: tuple[float, ...] = ()
    """A - B for each training seed (A's run minus B's run with the same seed, or minus B's single run)."""
    over_seeds: bool = True
    """Whether the interval resamples seeds too (two-level); False: rows only (fewer than `min_seeds` seeds)."""


def seed_row_bootstrap(a_runs: Sequence[RowScores], b_runs: Sequence[RowScores], *, resamples: int = 2000,
                       seed: int = 0, confidence: float = 0.95, min_seeds: int = 3) -> dict[str, SeedDifference]:
    """For every metric, A - B averaged over training seeds, with a two-level paired bootstrap interval: each
    resample draws seeds with replacement, then rows with replacement for the drawn seeds (the same rows for A
    and B), and averages the drawn seeds' differences. Every seed is scored on the same items, so one row draw
    serves all of a resample's seeds (independent draws per seed would shrink the items' variance by the number
    of seeds). Seed-to-seed variance of training is then in the interval, which a bootstrap over rows of
    seed-averaged scores leaves out. `a_runs[i]` pairs with `b_runs[i]` (same seed); a
    single B run (an untrained model) pairs with every A run. With fewer than `min_seeds` seeds the seeds cannot
    be resampled usefully: the interval is over rows of seed-averaged scores (`over_seeds` False). Only the row
    groups and per-row scores that every run of both sides holds are compared (a run scored before a score existed
    lacks it)."""
    b_runs = list(b_runs) * len(a_runs) if len(b_runs) == 1 else list(b_runs)
    if len(a_runs) != len(b_runs) or not a_runs:
        raise ValueError(f"{len(a_runs)} runs of A and {len(b_runs)} of B: expected one B run per seed, or one B run")
    a_runs, b_runs = _shared_scores([*a_runs, *b_runs], len(a_runs))
    per_seed = [{key: float(d[0]) for key, d in _differences(aggregate(run_a), aggregate(run_b)).items()}
                for run_a, run_b in zip(a_runs, b_runs, strict=True)]
    if len(a_runs) < min_seeds:
        rows_only = paired_bootstrap(_seed_mean(a_runs), _seed_mean(b_runs), resamples=resamples, seed=seed,
                                     confidence=confidence)
        return {key: SeedDifference(d.a, d.b, float(np.mean([p[key] for p in per_seed])), d.low, d.high,
                                    tuple(p[key] for p in per_seed), over_seeds=False) for key, d in rows_only.items()}
    rng = np.random.default_rng(seed)
    n_seeds = len(a_runs)
    drawn_seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    total: dict[str, np.ndarray] = {}
    for group in a_runs[0]:
        n = len(next(iter(a_runs[0][group].values())))
        index = rng.integers(0, n, size=(resamples, n))
        by_seed = [_differences(aggregate({group: a[group]}, index), aggregate({group: b[group]}, index))
                   for a, b in zip(a_runs, b_runs, strict=True)]
        for key in by_seed[0]:
            total[key] = np.stack([d[key] for d in by_seed])[drawn_seeds, np.arange(resamples)[:, None]].mean(1)
    tail = (1 - confidence) / 2 * 100
    point_a = {k: float(np.mean(v)) for k, v in _metric_lists(a_runs).items()}
    point_b = {k: float(np.mean(v)) for k, v in _metric_lists(b_runs).items()}
    return {key: SeedDifference(point_a[key], point_b[key], float(np.mean([p[key] for p in per_seed])),
                                float(np.percentile(total[key], tail)), float(np.percentile(total[key], 100 - tail)),
                                tuple(p[key] for p in per_seed)) for key in per_seed[0]}


def _differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """A - B metric by metric, matched by name: two runs may hold their row groups in different orders (one
    scored later, or backfilled)."""
    return {key: a[key] - b[key] for key in a}


def _shared_scores(runs: Sequence[RowScores], split: int) -> tuple[list[RowScores], list[RowScores]]:
    """Every run cut to the groups and per-row keys all of them hold; then split into the first `split` and the
    rest."""
    groups = set.intersection(*(set(run) for run in runs))
    keys = {g: set.intersection(*(set(run[g]) for run in runs)) for g in groups}
    cut = [{g: {k: run[g][k] for k in run[g] if k in keys[g]} for g in run if g in groups} for run in runs]
    return cut[:split], cut[split:]


def _seed_mean(runs: Sequence[RowScores]) -> RowScores:
    """Each row's scores averaged over the runs."""
    return {group: {key: np.mean([run[group][key] for run in runs], axis=0) for key in runs[0][group]}
            for group in runs[0]}


def _metric_lists(runs: Sequence[RowScores]) -> dict[str, list[float]]:
    listed: dict[str, list[float]] = {}
    for run in runs:
        for key, value in metrics(run).items():
            listed.setdefault(key, []).append(value)
    return listed
