"""Held-out evaluation of a trained adapter: reference-answer perplexity with and without it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from huggingface_hub import EvalResult

from .files import atomic_write, atomic_write_json, atomic_write_text
from .formats import PromptAnswer
from .hub import dataset_label
from .scoring import answer_logprobs, perplexity


@dataclass
class EvalRow:
    model: str
    answer_perplexity: float
    tokens: int


def adapter_perplexity_table(model, tokenizer, pairs: Sequence[PromptAnswer], *, teacher=None,
                             full_precision=None, batch_size: int = 16) -> list[EvalRow]:
    """Held-out reference-answer perplexity of the full-precision base (when given), the 4-bit base,
    the base + adapter and the teacher, on the same rows."""
    prompts, answers = [p.prompt for p in pairs], [p.answer for p in pairs]

    def row(name: str, scorer) -> EvalRow:
        scores = answer_logprobs(scorer, tokenizer, prompts, answers, batch_size=batch_size, progress=True)
        return EvalRow(name, perplexity(scores), sum(n for _, n in scores))

    rows = [row("full-precision base", full_precision)] if full_precision is not None else []
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            rows.append(row("4-bit base", model))
    rows.append(row("4-bit base + adapter", model))
    if teacher is not None:
        rows.append(row("negative teacher", teacher))
    return rows


def to_markdown(rows: Sequence[EvalRow], dataset: str) -> str:
    lines = [f"held-out reference-answer perplexity on {dataset}", "",
             "| model | answer ppl | tokens |", "|---|---|---|"]
    lines += [f"| {r.model} | {r.answer_perplexity:.3f} | {r.tokens} |" for r in rows]
    return "\n".join(lines)


def write_table(rows: Sequence[EvalRow], dataset: str, output_dir: str | Path) -> None:
    """`eval.md`, `eval.json` and the bar chart `eval.png` in `output_dir`."""
    output_dir = Path(output_dir)
    atomic_write_text(output_dir / "eval.md", to_markdown(rows, dataset) + "\n")
    atomic_write_json(output_dir / "eval.json", {"dataset": dataset, "rows": [asdict(r) for r in rows]})
    atomic_write(output_dir / "eval.png", lambda path: _plot(rows, dataset, path))


def _plot(rows: Sequence[EvalRow], dataset: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    bars = ax.bar([r.model for r in rows], [r.answer_perplexity for r in rows], color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("held-out answer perplexity (log scale)")
    ax.set_title(f"Reference-answer perplexity on {dataset}")
    ax.tick_params(axis="x", rotation=15, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def to_eval_results(rows: Sequence[EvalRow], dataset: str) -> list[EvalResult]:
    """The adapter's row as a model-index entry for the model card."""
    label = dataset_label(dataset)
    return [EvalResult(task_type="text-generation", dataset_type=label, dataset_name=label,
                       metric_type="perplexity", metric_name="held-out answer perplexity",
                       metric_value=round(r.answer_perplexity, 4))
            for r in rows if r.model == "4-bit base + adapter"]
