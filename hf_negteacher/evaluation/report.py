"""The evaluation table: each model variant (unquantized checkpoint, 4-bit base, + adapter, teacher) scored
on the same rows; markdown, JSON, a PNG chart and model-index entries for the card."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from huggingface_hub import EvalResult

from ..atomic_write import atomic_write, atomic_write_json, atomic_write_text
from ..hub import dataset_label

LABELS = {
    "answer_perplexity": "answer ppl", "answer_bits_per_byte": "answer bits/byte", "token_perplexity": "token ppl",
    "word_perplexity": "word ppl", "byte_perplexity": "byte ppl", "bits_per_byte": "bits/byte",
    "rougeL": "ROUGE-L", "chrF": "chrF", "words": "words", "empty_fraction": "empty", "cut_off_fraction": "cut off",
    "preference_accuracy": "pref. acc.", "preference_accuracy_per_token": "pref. acc. per token",
    "preference_margin": "pref. margin (nats)", "exact_match": "exact match", "accepted_match": "any accepted",
    "choice_accuracy": "multiple choice acc.", "choice_accuracy_ended": "multiple choice acc., ended",
    "first_word_match": "first word right", "accepted_anywhere": "word anywhere", "roundtrip_accuracy": "round trip",
    "checkpoint_kl": "token KL from checkpoint",
}
ADAPTER_SUFFIX = "+ adapter"


@dataclass
class EvalRow:
    model: str
    metrics: dict[str, float]
    rows: dict[str, int] = field(default_factory=dict)
    """How many rows (documents for plain text, items for multiple choice) each metric used."""


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
    counts = column_rows(rows)
    if counts:
        lines.append("| rows used | " + " | ".join(str(counts.get(c, "-")) for c in columns) + " |")
    return "\n".join(lines)


def column_rows(rows: Sequence[EvalRow]) -> dict[str, int]:
    """Each column's number of rows (the same for every model that has the column)."""
    return {key: count for row in reversed(rows) for key, count in row.rows.items()}


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
        ax.set_title(metric_label(column), fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.suptitle(f"held-out evaluation on {dataset}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def card_block(rows: Sequence[EvalRow], dataset: str) -> str:
    """The card's evaluation on one dataset: each metric of the adapter beside its base's (the same model
    with the adapter off), and the rows it used."""
    adapter = next(r for r in rows if r.model.endswith(ADAPTER_SUFFIX))
    base_name = adapter.model.removesuffix(ADAPTER_SUFFIX).strip()
    base = next((r for r in rows if r.model == base_name), EvalRow(base_name, {}))
    lines = [f"### {dataset_label(dataset)}", "", f"| metric | {base_name} | {adapter.model} | rows |",
             "|---|---|---|---|"]
    lines += [f"| {metric_label(key)} | {format_value(base.metrics[key]) if key in base.metrics else '-'} | "
              f"{format_value(value)} | {adapter.rows.get(key, '-')} |" for key, value in adapter.metrics.items()]
    return "\n".join(lines)


def to_eval_results(rows: Sequence[EvalRow], dataset: str) -> list[EvalResult]:
    """The adapter's row, every metric, as model-index entries for the model card."""
    label = dataset_label(dataset)
    return [EvalResult(task_type="text-generation", dataset_type=label, dataset_name=label,
                       metric_type=key.partition("/")[0], metric_name=metric_label(key), metric_value=round(value, 4))
            for r in rows if r.model.endswith(ADAPTER_SUFFIX) for key, value in r.metrics.items()]
