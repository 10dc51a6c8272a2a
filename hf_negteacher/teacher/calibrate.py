"""Sweep the teacher's strength: how much worse than the policy is each low-bit setting?"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic_write import atomic_write, atomic_write_json, atomic_write_text
from ..data.rows import PromptAnswer
from ..generation import GenerationSettings, generate_answers
from ..logprobs import answer_logprobs, perplexity
from .build import build_negative_teacher, memory_report
from .spec import TeacherConfig

logger = logging.getLogger(__name__)

DEFAULT_TARGET_RATIO = 2.5
"""Teacher/policy reference perplexity ratio to aim for; see README "The strength dial"."""
TARGET_TOLERANCE = 1.25
"""A setting whose ratio is within this factor of the target reaches it; otherwise `calibrate` warns."""


@dataclass
class SettingResult:
    setting: str
    teacher_ppl: float
    ratio: float
    trivial_fraction: float
    """Pairs (reference, teacher sample) the policy already separates by > `trivial_margin` nats/token."""
    inverted_fraction: float
    """Pairs whose teacher sample the policy finds likelier per token than the reference (gap < 0)."""
    gap_quantiles: tuple[float, float, float]
    """The 10th, 50th and 90th percentile of the policy's per-token gap, reference minus teacher sample."""
    bits_per_weight: float
    own_megabytes: float
    sample: str


@dataclass
class CalibrationReport:
    policy_ppl: float
    target_ratio: float
    trivial_margin: float
    rows: int
    sample_prompt: str
    sample_reference: str
    settings: list[SettingResult] = field(default_factory=list)

    @property
    def recommended(self) -> SettingResult:
        """The setting whose ratio is closest to the target, in log space."""
        return min(self.settings, key=lambda s: abs(math.log(s.ratio / self.target_ratio)))

    def warnings(self) -> list[str]:
        """What the user should know before training on the recommendation: no setting near the target, and
        settings where most pairs are inverted."""
        found = []
        best = self.recommended
        if abs(math.log(best.ratio / self.target_ratio)) > math.log(TARGET_TOLERANCE):
            direction = "weaker" if best.ratio > self.target_ratio else "stronger"
            found.append(f"no setting came within {TARGET_TOLERANCE - 1:.0%} of the target ratio "
                         f"{self.target_ratio:g}x: `{best.setting}` ({best.ratio:.3g}x) is only the closest; add "
                         f"{direction} settings to --grid (fewer blocks or a higher strength dial the teacher down, "
                         "more blocks or fewer bits up), or accept a different target")
        inverted = [s for s in self.settings if s.inverted_fraction > 0.5]
        if inverted:
            listed = ", ".join(f"`{s.setting}` {s.inverted_fraction:.0%}" for s in inverted)
            found.append(f"most pairs are inverted for {listed}: the policy already finds the teacher's sample "
                         "likelier per token than the reference, so the references are far from what the model "
                         "writes. Training on such pairs mostly teaches the references' style (as SFT would), not "
                         "away from the teacher's mistakes, and no teacher strength changes that: check that the "
                         "prompts and references are in the format the model was tuned on")
        return found

    def to_markdown(self) -> str:
        lines = [
            f"policy reference-answer perplexity: {self.policy_ppl:.2f} ({self.rows} rows)",
            "",
            f"| teacher setting | bits/weight | teacher ppl | ratio | trivial pairs (gap > {self.trivial_margin:g}) | "
            "inverted (gap < 0) | gap p10 / p50 / p90 | sample answer |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in self.settings:
            mark = " **(recommended)**" if s is self.recommended else ""
            sample = s.sample.replace("|", "\\|").replace("\n", " ")[:80]
            gaps = " / ".join(f"{q:.2f}" for q in s.gap_quantiles)
            lines.append(f"| `{s.setting}`{mark} | {s.bits_per_weight:.2f} | {s.teacher_ppl:.4g} | "
                         f"{s.ratio:.3g}x | {s.trivial_fraction:.0%} | {s.inverted_fraction:.0%} | {gaps} | {sample} |")
        lines += ["", f"target ratio {self.target_ratio:g}x -> recommended teacher: `{self.recommended.setting}`",
                  "gap: the policy's log-likelihood per token of the reference minus that of the teacher's sample, "
                  "before training (an empty sample counts as inf). The trainer's band (band_min_margin, "
                  "band_max_margin) bounds DPO's implicit reward margin instead, which is 0 for every pair at "
                  "step 0 and grows as training separates the pairs.",
                  f"sample prompt: {self.sample_prompt!r}; reference: {self.sample_reference!r}"]
        lines += [f"\n**warning:** {warning}" for warning in self.warnings()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "recommended": self.recommended.setting, "warnings": self.warnings()}

    def write(self, output_dir: str | Path) -> dict[str, Path]:
        """Write `calibration.json`, `calibration.md` and `calibration.png` into `output_dir`."""
        output_dir = Path(output_dir)
        return {
            "json": atomic_write_json(output_dir / "calibration.json", self.to_dict()),
            "markdown": atomic_write_text(output_dir / "calibration.md", self.to_markdown() + "\n"),
            "plot": atomic_write(output_dir / "calibration.png", self._plot),
        }

    def _plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [s.setting for s in self.settings]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names)), 4.5))
        colors = ["tab:red" if s is self.recommended else "tab:blue" for s in self.settings]
        ax.bar(names, [s.ratio for s in self.settings], color=colors)
        ax.axhline(self.target_ratio, color="black", linestyle="--", label=f"target {self.target_ratio:g}x")
        ax.set_yscale("log")
        ax.set_ylabel("teacher / policy reference perplexity")
        ax.set_title(f"Negative teacher strength (policy ppl {self.policy_ppl:.1f})")
        for i, s in enumerate(self.settings):
            ax.annotate(f"{s.trivial_fraction:.0%} trivial", (i, s.ratio), ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", rotation=35, labelsize=8)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
        plt.close(fig)


def calibrate(model, tokenizer, pairs: Sequence[PromptAnswer], grid: Sequence[TeacherConfig], *,
              weights: Mapping[str, torch.Tensor] | None = None, target_ratio: float = DEFAULT_TARGET_RATIO,
              generation: GenerationSettings | None = None, trivial_margin: float = 2.0, batch_size: int = 16,
              progress: bool = True) -> CalibrationReport:
    """Score the references under `model` and under a teacher built from it for each setting.

    `weights`: the checkpoint's full-precision tensors (see `build_negative_teacher`)."""
    if not pairs:
        raise ValueError("calibrate needs at least one prompt/answer pair")
    if not grid:
        raise ValueError("calibrate needs at least one teacher setting in the grid")
    if target_ratio <= 1:
        raise ValueError(f"target_ratio={target_ratio} must be > 1 (a teacher worse than the policy)")
    generation = generation or GenerationSettings(batch_size=batch_size)
    prompts = [p.prompt for p in pairs]
    answers = [p.answer for p in pairs]
    reference_scores = answer_logprobs(model, tokenizer, prompts, answers, batch_size=batch_size)
    report = CalibrationReport(
        policy_ppl=perplexity(reference_scores), target_ratio=target_ratio, trivial_margin=trivial_margin,
        rows=len(pairs), sample_prompt=prompts[0], sample_reference=answers[0],
    )
    for config in grid:
        teacher = build_negative_teacher(model, config=config, weights=weights)
        teacher_ppl = perplexity(answer_logprobs(teacher, tokenizer, prompts, answers, batch_size=batch_size))
        negatives = generate_answers(teacher, tokenizer, prompts, generation, progress=progress,
                                     desc=f"teacher {config.to_spec()}")
        negative_scores = answer_logprobs(model, tokenizer, prompts, negatives, batch_size=batch_size)
        gaps = torch.tensor(pair_gaps(reference_scores, negative_scores), dtype=torch.float64)
        report.settings.append(SettingResult(
            setting=config.to_spec(),
            teacher_ppl=teacher_ppl,
            ratio=teacher_ppl / report.policy_ppl,
            trivial_fraction=(gaps > trivial_margin).double().mean().item(),
            inverted_fraction=(gaps < 0).double().mean().item(),
            gap_quantiles=tuple(torch.quantile(gaps, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
                                               interpolation="lower").tolist()),
            bits_per_weight=memory_report(teacher)["bits_per_weight"],
            own_megabytes=memory_report(teacher)["own_total"] / 2**20,
            sample=negatives[0],
        ))
        logger.info("teacher %s: ppl %.4g (%.3gx)", config.to_spec(), teacher_ppl, report.settings[-1].ratio)
        del teacher
    return report


def pair_gaps(chosen: Sequence[tuple[float, int]], rejected: Sequence[tuple[float, int]]) -> list[float]:
    """Per pair, the chosen answer's log-likelihood per token minus the rejected one's (inf for an empty
    rejected answer: trivially separated)."""
    return [chosen_sum / max(chosen_n, 1) - rejected_sum / rejected_n if rejected_n else math.inf
            for (chosen_sum, chosen_n), (rejected_sum, rejected_n) in zip(chosen, rejected, strict=True)]
