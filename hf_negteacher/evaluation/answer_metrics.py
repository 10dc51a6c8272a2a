"""Generated answers against references: ROUGE-L (rouge_score), chrF (sacrebleu), length, empty answers."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache


@cache
def _rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"])


@cache
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of lower-cased words), 0..1."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF (character 1-6-grams, beta 2, sacrebleu's defaults), 0..100."""
    return _chrf().sentence_score(prediction, [reference]).score


def word_count(text: str) -> int:
    return len(text.split())


def answer_quality(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per answer: rougeL, chrF, words, empty (1.0 when the answer is blank)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return {"rougeL": [rouge_l(p, r) for p, r in zip(predictions, references, strict=True)],
            "chrF": [chrf(p, r) for p, r in zip(predictions, references, strict=True)],
            "words": [float(word_count(p)) for p in predictions],
            "empty": [float(not p.strip()) for p in predictions]}
