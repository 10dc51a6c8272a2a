"""Held-out perplexity by two engines side by side: the built-in scorer and lm-evaluation-harness.

Prompt/answer data is scored answer-only (the reference given its prompt); plain text (a `text`
column, a .txt file) by sliding windows. Metric keys read `<metric>/<engine>`.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..data.rows import DataFormatError, PromptAnswer, fit_answers, load_rows, text_documents, validate_rows
from ..logprobs import answer_logprobs, completion_kl, sliding_window_logprob
from .multiple_choice import ChoiceDataError, ChoiceItem, choice_items, round_trip_rows
from .statistics import answer_perplexity

logger = logging.getLogger(__name__)

ENGINES = ("builtin", "lm-eval")


class EvalConfigError(ValueError):
    """An evaluation setting that cannot work (engine, window, stride), found before any model loads."""


@dataclass(frozen=True)
class EvalData:
    """Held-out data: prompt/answer pairs, or plain-text documents; and, from rows that name a word, its part
    of speech and its definition, multiple-choice items (`multiple_choice.choice_items`)."""

    source: str
    pairs: list[PromptAnswer] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    choices: list[ChoiceItem] = field(default_factory=list)
    roundtrip_rows: list[dict] = field(default_factory=list)
    """Definitions rows as multiple-choice rows, aligned with `pairs`: a judge picks each row's word from its
    generated definition (`multiple_choice.round_trip_items`)."""


def load_eval_data(source: str, tokenizer, *, limit: int | None = None, text_column: str = "text",
                   max_length: int | None = None) -> EvalData:
    """Read and check `source` (see `formats.load_rows`) before any model is loaded."""
    rows = load_rows(source)
    rows = rows[:limit] if limit else rows
    texts = text_documents(rows, text_column)
    if texts is not None:
        return EvalData(source, texts=texts)
    try:
        pairs = validate_rows(rows, tokenizer, max_length)
    except DataFormatError as error:
        raise DataFormatError(f"{source}: {error}; or plain text in a {text_column!r} column") from None
    pairs = fit_answers(pairs, tokenizer, max_length, source)[0]
    choices = []
    if all(row.get("word") and row.get("pos") and row.get("definition") for row in rows):
        try:
            choices = choice_items(rows, tokenizer)
        except ChoiceDataError as error:
            logger.info("%s: no multiple-choice score (%s)", source, error)
    return EvalData(source, pairs=pairs, choices=choices, roundtrip_rows=[] if choices else round_trip_rows(rows))


def check_engines(engines: Sequence[str]) -> None:
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or not engines:
        raise EvalConfigError(f"engines: expected some of {', '.join(ENGINES)}, got {list(engines)}")
    if "lm-eval" in engines:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise EvalConfigError("engine lm-eval needs lm-evaluation-harness: "
                                  "pip install 'hf-negteacher[eval]'") from None


def check_window(window: int, stride: int, context: int) -> None:
    """The sliding window must fit the model's context (`max_position_embeddings`)."""
    if window > context:
        raise EvalConfigError(f"window={window} is larger than the model's context of {context} tokens "
                         "(max_position_embeddings); lower window")
    if not 1 <= stride <= window:
        raise EvalConfigError(f"stride={stride}: expected 1 <= stride <= window={window}")


def builtin_perplexity(model, tokenizer, data: EvalData, *, window: int | None = None, stride: int | None = None,
                       batch_size: int = 16) -> dict[str, float]:
    """Answer-only perplexity (pairs) or sliding-window token/word perplexity and bits per byte (texts,
    which need `window` and `stride`)."""
    if data.pairs:
        return {key: float(value[0]) for key, value in
                answer_perplexity(answer_rows(model, tokenizer, data.pairs, batch_size=batch_size)).items()}
    if window is None or stride is None:
        raise EvalConfigError("sliding-window perplexity of plain text needs window and stride")
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    total = tokens = 0
    for text in tqdm(data.texts, desc=f"sliding windows ({window}/{stride})"):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        logprob, count = sliding_window_logprob(model, ids, window=window, stride=stride, prefix_token_id=prefix,
                                                batch_size=batch_size)
        total, tokens = total + logprob, tokens + count
    words = sum(len(re.split(r"\s+", t.strip())) for t in data.texts)
    size = sum(len(t.encode("utf-8")) for t in data.texts)
    return {"token_perplexity/builtin": math.exp(-total / tokens), "word_perplexity/builtin": math.exp(-total / words),
            "bits_per_byte/builtin": -total / size / math.log(2)}


def answer_rows(model, tokenizer, pairs: Sequence[PromptAnswer], *, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per row: the reference answer's summed log-probability given its prompt, its tokens and bytes."""
    scores = answer_logprobs(model, tokenizer, [p.prompt for p in pairs], [p.answer for p in pairs],
                             batch_size=batch_size, progress=True)
    return {"answer_logprob": np.array([s for s, _ in scores]), "answer_tokens": np.array([n for _, n in scores]),
            "answer_bytes": np.array([len(p.answer.encode("utf-8")) for p in pairs])}


def checkpoint_kl_rows(model, checkpoint, tokenizer, pairs: Sequence[PromptAnswer], *, batch_size: int = 16
                       ) -> dict[str, np.ndarray]:
    """Per row: the summed token KL(checkpoint || model) over the reference answer given its prompt, and its
    tokens (tokenized as `answer_rows` tokenizes them)."""
    prompts = tokenizer([p.prompt for p in pairs], add_special_tokens=False).input_ids
    answers = tokenizer([p.answer for p in pairs], add_special_tokens=False).input_ids
    scores = completion_kl(model, checkpoint, prompts, answers, pad_token_id=tokenizer.pad_token_id,
                           batch_size=batch_size, progress=True)
    return {"kl_sum": np.array([s for s, _ in scores]), "kl_tokens": np.array([n for _, n in scores])}


def lm_eval_metrics(model, tokenizer, data: EvalData, *, window: int, batch_size: int = 16,
                       task_dir: str | None = None) -> dict[str, float]:
    """The same data through our lm-eval tasks (`loglikelihood` for pairs, `loglikelihood_rolling` with
    disjoint windows of `window` tokens for texts, `multiple_choice` for choice items)."""
    from .lm_eval_glue import run_tasks, write_tasks

    with tempfile.TemporaryDirectory() as scratch:
        task_dir = task_dir or scratch
        tasks = write_tasks(task_dir, tokenizer, pairs=data.pairs, texts=data.texts, choices=data.choices)
        metrics = run_tasks(model, tokenizer, task_dir, tasks, max_length=window, batch_size=batch_size)
    return {f"{name}/lm-eval": value for name, value in metrics.items()}


def perplexity_metrics(model, tokenizer, data: EvalData, *, engines: Sequence[str], window: int, stride: int,
                       batch_size: int = 16) -> dict[str, float]:
    """Every engine's metrics for one model."""
    metrics = {}
    if "builtin" in engines:
        metrics |= builtin_perplexity(model, tokenizer, data, window=window, stride=stride, batch_size=batch_size)
    if "lm-eval" in engines:
        metrics |= lm_eval_metrics(model, tokenizer, data, window=window, batch_size=batch_size)
    return metrics
