"""Does it help? Per-row held-out scores of one model, their aggregates, and paired bootstrap intervals.

Rows are grouped: `answers` (reference log-probability and tokens -> answer perplexity), `generation`
(greedy or sampled answers against the references), `preference` (reference vs the teacher's held-out
negative). A group's rows are the same for every model, so two models compare row by row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .answer_metrics import answer_quality
from .files import atomic_write_json
from .formats import PromptAnswer
from .models import model_identity
from .negatives import GenerationSettings, ProcessorFactory, generate_answers, generate_negative_ids, stop_token_ids
from .perplexity_eval import EvalConfigError, answer_perplexity
from .scoring import answer_logprobs

RowScores = dict[str, dict[str, np.ndarray]]


@dataclass
class QualitySettings:
    """How held-out answers are generated for the quality metrics."""

    generation_rows: int = 100
    max_new_tokens: int = 64
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def check(self) -> None:
        for name in ("generation_rows", "max_new_tokens", "num_samples", "batch_size"):
            if getattr(self, name) <= 0:
                raise EvalConfigError(f"{name}={getattr(self, name)}: expected a positive integer")
        if self.num_samples > 1 and self.temperature <= 0:
            raise EvalConfigError(f"num_samples={self.num_samples} with temperature 0 (greedy) repeats one answer; "
                                  "set temperature > 0")

    def generation(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  top_p=self.top_p, seed=self.seed, batch_size=self.batch_size)


def generation_rows(model, tokenizer, pairs: Sequence[PromptAnswer], settings: QualitySettings,
                    processor: ProcessorFactory | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Per prompt: mean rougeL, chrF, words, empty and cut-off (no end of turn within max_new_tokens) over
    `num_samples` answers; and one readable record per prompt. `processor`: as in `generate_answers`
    (contrastive decoding)."""
    from tqdm.auto import tqdm

    pairs = list(pairs)[: settings.generation_rows]
    prompt_ids = tokenizer([p.prompt for p in pairs], add_special_tokens=False).input_ids
    generated = []
    for start in tqdm(range(0, len(pairs), settings.batch_size), desc="generating answers"):
        generated += generate_negative_ids(
            model, prompt_ids[start:start + settings.batch_size], settings.generation(), seed=settings.seed + start,
            pad_token_id=tokenizer.pad_token_id, stop_token_ids=stop_token_ids(tokenizer, model),
            num_return_sequences=settings.num_samples, processor=processor)
    answers = [[tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in samples] for samples in generated]
    flat = answer_quality([a for samples in answers for a in samples],
                          [p.answer for p, samples in zip(pairs, answers, strict=True) for _ in samples])
    flat["cut_off"] = [float(len(ids) >= settings.max_new_tokens) for samples in generated for ids in samples]
    rows = {key: np.array(values).reshape(len(pairs), settings.num_samples).mean(1) for key, values in flat.items()}
    records = [{"answers": samples, "rougeL": float(rows["rougeL"][i]), "chrF": float(rows["chrF"][i])}
               for i, samples in enumerate(answers)]
    return rows, records


def preference_rows(model, tokenizer, pairs: Sequence[PromptAnswer], negatives: Sequence[str], *,
                    batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per row with a usable negative: does the model give the reference a higher answer log-probability
    than the teacher's negative (summed, and per token), and by how much (summed)."""
    kept = [(p, n) for p, n in zip(pairs, negatives, strict=True) if n.strip() and n.strip() != p.answer.strip()]
    if not kept:
        raise EvalConfigError("every held-out negative is empty or equal to its reference")
    prompts = [p.prompt for p, _ in kept]
    reference = np.array(answer_logprobs(model, tokenizer, prompts, [p.answer for p, _ in kept], batch_size=batch_size))
    negative = np.array(answer_logprobs(model, tokenizer, prompts, [n for _, n in kept], batch_size=batch_size))
    per_token = reference[:, 0] / reference[:, 1] > negative[:, 0] / negative[:, 1]
    return {"preference_correct": (reference[:, 0] > negative[:, 0]).astype(float),
            "preference_correct_per_token": per_token.astype(float),
            "preference_margin": reference[:, 0] - negative[:, 0]}


def heldout_negatives(teacher, tokenizer, pairs: Sequence[PromptAnswer], settings: GenerationSettings, *,
                      teacher_key: str, cache_dir: str | Path) -> list[str]:
    """One negative per held-out prompt from the teacher, generated once at `settings.seed` and cached under
    a key of the teacher setting, the model (`models.model_identity`), the sampling settings and the rows."""
    key = hashlib.sha256(json.dumps({"teacher": teacher_key, "model": model_identity(teacher, tokenizer),
                                     "settings": asdict(settings),
                                     "rows": [[p.prompt, p.answer] for p in pairs]}).encode()).hexdigest()[:20]
    path = Path(cache_dir) / "heldout_negatives" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["negatives"]
    from .lowbit import inference_mode, materialized

    with inference_mode(teacher), materialized(teacher):
        negatives = generate_answers(teacher, tokenizer, [p.prompt for p in pairs], settings, progress=True,
                                     desc="held-out negatives")
    atomic_write_json(path, {"teacher": teacher_key, "settings": asdict(settings), "negatives": negatives})
    return negatives


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
                              ("empty", "empty_fraction"), ("cut_off", "cut_off_fraction")):
                out[name] = pick[key].mean(1)
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


def paired_bootstrap(a: RowScores, b: RowScores, *, resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, Difference]:
    """For every metric, A - B on the same rows with a paired percentile bootstrap interval over rows."""
    if set(a) != set(b):
        raise ValueError(f"the two models were scored on different row groups: {sorted(a)} vs {sorted(b)}")
    rng = np.random.default_rng(seed)
    index = {}
    for group in a:
        n = len(next(iter(a[group].values())))
        if n != len(next(iter(b[group].values()))):
            raise ValueError(f"row group {group!r}: {n} rows for A, {len(next(iter(b[group].values())))} for B")
        index[group] = rng.integers(0, n, size=(resamples, n))
    point_a, point_b = metrics(a), metrics(b)
    sample_a, sample_b = aggregate(a, index), aggregate(b, index)
    tail = (1 - confidence) / 2
    result = {}
    for key in point_a:
        low, high = np.quantile(sample_a[key] - sample_b[key], [tail, 1 - tail])
        result[key] = Difference(point_a[key], point_b[key], point_a[key] - point_b[key], float(low), float(high))
    return result
