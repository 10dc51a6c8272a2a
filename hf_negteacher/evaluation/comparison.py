"""The report of `negteacher eval --compare A B`: every metric's A - B with its paired bootstrap interval."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from ..atomic_write import atomic_write, atomic_write_json, atomic_write_text
from .report import format_value, metric_label
from .statistics import Difference


def compare_markdown(differences: Mapping[str, Difference], a: str, b: str, rows: Mapping[str, int] | None = None,
                     confidence: float = 0.95) -> str:
    """The comparison table; `rows`: how many rows each metric used."""
    rows = rows or {}
    lines = [f"A = {a}, B = {b}: A - B on the same rows, paired bootstrap {confidence:.0%} interval over rows", "",
             "| metric | A | B | A - B | interval | half-width | | rows |", "|---|---|---|---|---|---|---|---|"]
    for key, d in differences.items():
        verdict = "differs" if d.excludes_zero else "within noise"
        lines.append(f"| {metric_label(key)} | {format_value(d.a)} | {format_value(d.b)} | {d.difference:+.4g} | "
                     f"[{d.low:+.4g}, {d.high:+.4g}] | {d.half_width:.3g} | {verdict} | {rows.get(key, '-')} |")
    return "\n".join(lines)


def write_comparison(differences: Mapping[str, Difference], a: str, b: str, output_dir: str | Path,
                     rows: Mapping[str, int] | None = None) -> None:
    """`compare.md`, `compare.json` and `compare.png` (each difference with its interval) in `output_dir`."""
    output_dir = Path(output_dir)
    atomic_write_text(output_dir / "compare.md", compare_markdown(differences, a, b, rows) + "\n")
    atomic_write_json(output_dir / "compare.json",
                      {"a": a, "b": b, "differences": {k: {**asdict(d), "half_width": d.half_width}
                                                       for k, d in differences.items()}})
    atomic_write(output_dir / "compare.png", lambda path: _plot_differences(differences, a, b, path))


def _plot_differences(differences: Mapping[str, Difference], a: str, b: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(differences), 1, figsize=(6, 0.7 * len(differences) + 1), squeeze=False)
    for ax, (key, d) in zip(axes[:, 0], differences.items(), strict=True):
        ax.errorbar([d.difference], [0], xerr=[[d.difference - d.low], [d.high - d.difference]], fmt="o",
                    color="tab:red" if d.excludes_zero else "tab:gray", capsize=4)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks([])
        ax.set_ylabel(metric_label(key), rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{a} - {b}, 95% paired bootstrap", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
