"""Held-out preference accuracy: does a model prefer the reference to a teacher negative cached once per setting?"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..atomic_write import atomic_write_json
from ..data.rows import PromptAnswer
from ..generation import GenerationSettings, generate_answers
from ..logprobs import answer_logprobs
from ..models import eval_mode, model_identity
from ..teacher.layer import materialized
from .perplexity import EvalConfigError


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
    with eval_mode(teacher), materialized(teacher):
        negatives = generate_answers(teacher, tokenizer, [p.prompt for p in pairs], settings, progress=True,
                                     desc="held-out negatives")
    atomic_write_json(path, {"teacher": teacher_key, "settings": asdict(settings), "negatives": negatives})
    return negatives

