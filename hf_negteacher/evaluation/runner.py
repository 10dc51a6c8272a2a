"""Score every model of an evaluation on the same rows and write the report: what `negteacher eval` runs.

The variants are the unquantized checkpoint, the 4-bit base, the base + adapter and the teacher (or two
adapters side by side for `--compare`); each gets perplexity by every engine and, on prompt/answer data,
generated-answer quality and held-out preference accuracy, and multiple-choice accuracy where the rows allow.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic_write import atomic_write_text
from ..data.rows import PromptAnswer
from ..generation import ProcessorFactory
from ..teacher.contrastive import ContrastSettings, contrast_with, teacher_for_decoding
from .comparison import write_comparison
from .generation_quality import QualitySettings, generation_rows
from .multiple_choice import ChoiceDataError, choice_rows, end_of_turn_text, round_trip_items
from .perplexity import (
    EvalData,
    answer_rows,
    builtin_perplexity,
    checkpoint_kl_rows,
    lm_eval_metrics,
    perplexity_metrics,
)
from .preference import preference_rows
from .report import ADAPTER_SUFFIX, EvalRow, write_table
from .statistics import Difference, RowScores, metric_rows, metrics, paired_bootstrap

logger = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """What `negteacher eval` measures, and how."""

    engines: Sequence[str]
    window: int
    stride: int
    batch_size: int
    quality: QualitySettings | None = None
    """Generated-answer quality and preference accuracy (prompt/answer data); None: perplexity only."""
    contrast: ContrastSettings | None = None
    """Decode every model but the teacher contrastively against the teacher; None: plain decoding."""
    dequantize_once: bool | None = None
    bootstrap_resamples: int = 1000


@dataclass
class EvalOutcome:
    table: list[EvalRow]
    notes: list[str]
    differences: dict[str, Difference] = field(default_factory=dict)
    """A - B with paired intervals, when two adapters were compared."""


def model_variants(model, *, teacher=None, full_precision=None) -> Iterator[tuple[str, object]]:
    """(name, model) for each row of the table; the base row is `model` with its adapter disabled,
    valid until the next item is requested."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base_name = "4-bit base" if getattr(base, "is_loaded_in_4bit", False) else "base"
    if full_precision is not None:
        yield "unquantized checkpoint", full_precision
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield base_name, model
        yield f"{base_name} {ADAPTER_SUFFIX}", model
    else:
        yield base_name, model
    if teacher is not None:
        yield "negative teacher", teacher


def adapter_variants(model, adapter_names: Sequence[str]) -> Iterator[tuple[str, object]]:
    """(name, model) with each of the PEFT model's loaded adapters active in turn."""
    for name in adapter_names:
        model.set_adapter(name)
        yield name, model


def score_models(variants: Iterable[tuple[str, object]], scorer: Callable[[object], Mapping[str, float]]
                 ) -> list[EvalRow]:
    return [EvalRow(name, dict(scorer(model))) for name, model in variants]


@dataclass
class ModelScores:
    """One model's row of the table, its per-row scores (for paired comparisons) and its generations."""

    row: EvalRow
    rows: RowScores
    generations: list[dict]


def score_variant(model, tokenizer, data: EvalData, *, engines: Sequence[str], window: int, stride: int,
                  batch_size: int, quality: QualitySettings | None = None,
                  negatives: Sequence[str] | None = None, name: str = "model",
                  processor: ProcessorFactory | None = None, judge=None, checkpoint=None) -> ModelScores:
    """Every metric for one model: perplexity by each engine; on prompt/answer data with `quality`, also
    generated-answer quality (decoded with `processor` when given, e.g. contrastive decoding), (with
    `negatives`) held-out preference accuracy and (with a frozen `judge` model, on definitions rows) the round
    trip: the judge picks each row's word among 5 from the generated definition; on data with multiple-choice
    items, their accuracy, bare and with the end of turn after each option; with the unquantized `checkpoint`,
    the token KL from it on the reference answers (what quantization recovery closes)."""
    if not data.pairs:
        scored = perplexity_metrics(model, tokenizer, data, engines=engines, window=window, stride=stride,
                                    batch_size=batch_size)
        return ModelScores(EvalRow(name, scored, dict.fromkeys(scored, len(data.texts))), {}, [])
    rows: RowScores = {"answers": answer_rows(model, tokenizer, data.pairs, batch_size=batch_size)}
    if checkpoint is not None:
        rows["checkpoint_kl"] = checkpoint_kl_rows(model, checkpoint, tokenizer, data.pairs, batch_size=batch_size)
    generations: list[dict] = []
    if quality is not None:
        rows["generation"], generations = generation_rows(model, tokenizer, data.pairs, quality, processor)
        if negatives is not None:
            rows["preference"] = preference_rows(model, tokenizer, data.pairs, negatives, batch_size=batch_size)
        if judge is not None and data.roundtrip_rows:
            try:
                items = round_trip_items(data.roundtrip_rows, [g["answers"][0] for g in generations], tokenizer)
            except ChoiceDataError as error:
                logger.warning("no round trip on %s: %s", data.source, error)
            else:
                rows["roundtrip"] = {"roundtrip_correct": choice_rows(judge, tokenizer, items,
                                                                      batch_size=batch_size)["choice_correct"]}
    if data.choices:
        rows["choice"] = choice_rows(model, tokenizer, data.choices, batch_size=batch_size,
                                     end_of_turn=end_of_turn_text(tokenizer))
    scored, counts = metrics(rows), metric_rows(rows)
    if "lm-eval" in engines:
        by_lm_eval = lm_eval_metrics(model, tokenizer, data, window=window, batch_size=batch_size)
        scored |= by_lm_eval
        counts |= {key: counts[key.replace("/lm-eval", "/builtin")] for key in by_lm_eval}
    return ModelScores(EvalRow(name, scored, counts), rows, generations)


def adapter_perplexity_table(model, tokenizer, pairs: Sequence[PromptAnswer], *, teacher=None,
                             full_precision=None, batch_size: int = 16) -> list[EvalRow]:
    """Built-in held-out answer perplexity of every variant (the table written after training)."""
    data = EvalData("held-out", pairs=list(pairs))
    table = score_models(model_variants(model, teacher=teacher, full_precision=full_precision),
                         lambda m: builtin_perplexity(m, tokenizer, data, batch_size=batch_size))
    for row in table:
        row.rows = dict.fromkeys(row.metrics, len(pairs))
    return table


def evaluate(variants: Iterable[tuple[str, object]], tokenizer, data: EvalData, settings: EvalSettings, *,
             teacher, teacher_spec: str, output_dir: str | Path, negatives: Sequence[str] | None = None,
             compare: Sequence[str] = (), notes: Sequence[str] = (), judge=None, checkpoint=None) -> EvalOutcome:
    """Score each (name, model) of `variants` and write `eval.md/json/png` (and `generations.jsonl` on
    prompt/answer data with quality metrics) in `output_dir`; with `compare` (the two adapters' names),
    also `compare.md/json/png` with every metric's A - B and its paired bootstrap interval. `notes` lead the
    table's footnotes (which weights each row is, for example). `judge`: the frozen model of the round trip;
    `checkpoint`: the unquantized checkpoint, for every model's token KL from it on the reference answers."""
    contrast = settings.contrast
    decoding = teacher_for_decoding(teacher, settings.dequantize_once) if contrast else contextlib.nullcontext()
    with decoding:
        scores = [score_variant(model, tokenizer, data, engines=settings.engines, window=settings.window,
                                stride=settings.stride, batch_size=settings.batch_size, quality=settings.quality,
                                negatives=negatives, name=name, judge=judge, checkpoint=checkpoint,
                                processor=contrast_with(teacher, contrast) if contrast and model is not teacher
                                else None)
                  for name, model in variants]
    outcome = EvalOutcome([s.row for s in scores], [*notes, *_notes(teacher_spec, data, settings)])
    used = len(scores[0].rows.get("preference", {}).get("preference_correct", data.pairs)) if scores else 0
    if used < len(data.pairs):
        outcome.notes.append(f"preference: {used} of {len(data.pairs)} rows; the other {len(data.pairs) - used} "
                             "teacher negatives came back empty or equal to the reference and are left out")
    output_dir = Path(output_dir)
    if settings.quality is not None and data.pairs:
        write_generations(output_dir / "generations.jsonl", data, scores, negatives)
    write_table(outcome.table, data.source, output_dir, outcome.notes)
    if compare:
        outcome.differences = paired_bootstrap(scores[0].rows, scores[1].rows,
                                               resamples=settings.bootstrap_resamples)
        write_comparison(outcome.differences, compare[0], compare[1], output_dir, scores[0].row.rows)
    return outcome


def _notes(teacher_spec: str, data: EvalData, settings: EvalSettings) -> list[str]:
    """The table's footnotes: what was decoded and scored, in words."""
    notes = [f"teacher: {teacher_spec}"]
    if data.texts:
        notes.append(f"built-in: windows of {settings.window} tokens, stride {settings.stride}; lm-eval: disjoint "
                     f"windows of {settings.window}")
    quality, contrast = settings.quality, settings.contrast
    if quality is not None and data.pairs:
        sampling = "greedy" if quality.temperature <= 0 else f"temperature {quality.temperature}, top_p {quality.top_p}"
        if contrast:
            sampling += (f", contrastive decoding against the teacher (beta {contrast.beta}, alpha {contrast.alpha}; "
                         "the teacher's own answers plain)")
        notes.append(f"answers: first {min(quality.generation_rows, len(data.pairs))} rows, {sampling}, "
                     f"{quality.num_samples} per prompt, at most {quality.max_new_tokens} new tokens; preference: "
                     f"reference vs one teacher negative per row")
    if data.choices:
        notes.append(f"multiple choice: {len(data.choices)} items, given the definition which of "
                     f"{len(data.choices[0].choices)} words of the same part of speech (highest log-likelihood of "
                     "the bare word; 'ended': of the word followed by the end of turn)")
    if data.roundtrip_rows and quality is not None:
        notes.append("round trip: the unquantized checkpoint (untrained) picks the word among 5 (same part of speech) "
                     "from each generated definition, the word itself masked")
    return notes


def write_generations(path: str | Path, data: EvalData, scores: Sequence[ModelScores],
                      negatives: Sequence[str] | None = None) -> None:
    """One JSON line per prompt: the prompt, the reference, the teacher's negative, each model's answers."""
    count = max((len(s.generations) for s in scores), default=0)
    lines = []
    for i, pair in enumerate(data.pairs[:count]):
        record = {"row": i, "prompt": pair.prompt, "reference": pair.answer}
        if negatives is not None:
            record["teacher_negative"] = negatives[i]
        record["models"] = {s.row.model: s.generations[i] for s in scores if i < len(s.generations)}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))

