"""The evaluation table: each model variant (full-precision base, 4-bit base, + adapter, teacher) scored
on the same rows; markdown, JSON, a PNG chart and model-index entries for the card."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from huggingface_hub import EvalResult

from ..atomic_write import atomic_write, atomic_write_json, atomic_write_text
from ..data.rows import PromptAnswer
from ..generation import ProcessorFactory
from ..hub import dataset_label
from .generation_quality import QualitySettings, generation_rows
from .perplexity import EvalData, answer_rows, builtin_perplexity, lm_eval_perplexity, perplexity_metrics
from .preference import preference_rows
from .statistics import RowScores, metrics

LABELS = {
    "answer_perplexity": "answer ppl", "answer_bits_per_byte": "answer bits/byte", "token_perplexity": "token ppl",
    "word_perplexity": "word ppl", "byte_perplexity": "byte ppl", "bits_per_byte": "bits/byte",
    "rougeL": "ROUGE-L", "chrF": "chrF", "words": "words", "empty_fraction": "empty", "cut_off_fraction": "cut off",
    "preference_accuracy": "pref. acc.", "preference_accuracy_per_token": "pref. acc. per token",
    "preference_margin": "pref. margin (nats)",
}
ADAPTER_SUFFIX = "+ adapter"


@dataclass
class EvalRow:
    model: str
    metrics: dict[str, float]


def model_variants(model, *, teacher=None, full_precision=None) -> Iterator[tuple[str, object]]:
    """(name, model) for each row of the table; the base row is `model` with its adapter disabled,
    valid until the next item is requested."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base_name = "4-bit base" if getattr(base, "is_loaded_in_4bit", False) else "base"
    if full_precision is not None:
        yield "full-precision base", full_precision
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
                  processor: ProcessorFactory | None = None) -> ModelScores:
    """Every metric for one model: perplexity by each engine; on prompt/answer data with `quality`, also
    generated-answer quality (decoded with `processor` when given, e.g. contrastive decoding) and (with
    `negatives`) held-out preference accuracy."""
    if not data.pairs:
        return ModelScores(EvalRow(name, perplexity_metrics(model, tokenizer, data, engines=engines, window=window,
                                                            stride=stride, batch_size=batch_size)), {}, [])
    rows: RowScores = {"answers": answer_rows(model, tokenizer, data.pairs, batch_size=batch_size)}
    generations: list[dict] = []
    if quality is not None:
        rows["generation"], generations = generation_rows(model, tokenizer, data.pairs, quality, processor)
        if negatives is not None:
            rows["preference"] = preference_rows(model, tokenizer, data.pairs, negatives, batch_size=batch_size)
    scored = metrics(rows)
    if "lm-eval" in engines:
        scored |= lm_eval_perplexity(model, tokenizer, data, window=window, batch_size=batch_size)
    return ModelScores(EvalRow(name, scored), rows, generations)


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


def adapter_perplexity_table(model, tokenizer, pairs: Sequence[PromptAnswer], *, teacher=None,
                             full_precision=None, batch_size: int = 16) -> list[EvalRow]:
    """Built-in held-out answer perplexity of every variant (the table written after training)."""
    data = EvalData("held-out", pairs=list(pairs))
    return score_models(model_variants(model, teacher=teacher, full_precision=full_precision),
                        lambda m: builtin_perplexity(m, tokenizer, data, batch_size=batch_size))


def metric_label(key: str) -> str:
    name, _, engine = key.partition("/")
    return f"{LABELS.get(name, name)} [{engine}]" if engine else LABELS.get(name, name)


def _columns(rows: Sequence[EvalRow]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row.metrics))


def format_value(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.3f}" if abs(value) >= 1 else f"{value:.4f}"


def to_markdown(rows: Sequence[EvalRow], dataset: str, notes: Sequence[str] = ()) -> str:
    columns = _columns(rows)
    lines = [f"held-out evaluation on {dataset}", *notes, "",
             "| model | " + " | ".join(metric_label(c) for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join([r.model, *(format_value(r.metrics[c]) if c in r.metrics else "-" for c in columns)])
              + " |" for r in rows]
    return "\n".join(lines)


def write_table(rows: Sequence[EvalRow], dataset: str, output_dir: str | Path, notes: Sequence[str] = (),
                extra: Mapping[str, object] | None = None) -> None:
    """`eval.md`, `eval.json` and the bar chart `eval.png` in `output_dir`."""
    output_dir = Path(output_dir)
    atomic_write_text(output_dir / "eval.md", to_markdown(rows, dataset, notes) + "\n")
    atomic_write_json(output_dir / "eval.json",
                      {"dataset": dataset, "notes": list(notes), "rows": [asdict(r) for r in rows], **(extra or {})})
    atomic_write(output_dir / "eval.png", lambda path: _plot(rows, dataset, path))


def _plot(rows: Sequence[EvalRow], dataset: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns(rows)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns) + 1, 4), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        scored = [r for r in rows if column in r.metrics]
        bars = ax.bar([r.model for r in scored], [r.metrics[column] for r in scored], color="tab:blue")
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        if "perplexity" in column:
            ax.set_yscale("log")
        ax.set_title(metric_label(column), fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.suptitle(f"held-out evaluation on {dataset}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def to_eval_results(rows: Sequence[EvalRow], dataset: str) -> list[EvalResult]:
    """The adapter's row, every metric, as model-index entries for the model card."""
    label = dataset_label(dataset)
    return [EvalResult(task_type="text-generation", dataset_type=label, dataset_name=label,
                       metric_type=key.partition("/")[0], metric_name=metric_label(key), metric_value=round(value, 4))
            for r in rows if r.model.endswith(ADAPTER_SUFFIX) for key, value in r.metrics.items()]
