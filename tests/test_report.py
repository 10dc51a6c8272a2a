"""The model-free report: it runs where torch cannot be imported, it reprints RESULTS.md from the committed run
files, and every figure the README quotes is in its output."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"[+-]?\d+\.\d{3}\b")
"""A quoted result: a score or a difference to three decimals (the report's format)."""


@pytest.fixture(scope="module")
def report_output(tmp_path_factory) -> str:
    blocked = tmp_path_factory.mktemp("no_torch")
    for name in ("torch", "transformers", "trl", "peft"):
        (blocked / name).mkdir()
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(blocked), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_report_runs_without_torch_and_reprints_results_md(report_output):
    assert "## Verdicts" in report_output and "multiple choice" in report_output
    assert report_output == (ROOT / "benchmarks" / "RESULTS.md").read_text()  # RESULTS.md is the report, as written


def test_every_figure_the_readme_quotes_is_in_the_report(report_output):
    quoted = FIGURE.findall((ROOT / "README.md").read_text())
    assert quoted  # the README does quote results
    missing = sorted({figure for figure in quoted if figure not in report_output})
    assert not missing, f"README figures no run file regenerates: {missing}"


def test_every_sealed_run_was_chosen_in_a_committed_file_before_it_was_scored():
    import json

    import yaml

    chosen = yaml.safe_load((ROOT / "benchmarks" / "sealed_choices.yaml").read_text())["settings"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import FILE_NAME, SLUGS

    sealed = sorted((ROOT / "benchmarks" / "runs" / "bench_quality").glob("*/*-test/*.json"))
    for path in sealed:
        match = FILE_NAME.fullmatch(path.name)
        run = json.loads(path.read_text())
        assert run.get("sealed_choice_commit"), path.name  # --final recorded which committed choice it scored
        method, task = SLUGS[match["slug"]], path.parent.name.removesuffix("-test")
        assert method == "untrained" or any(
            c["task"] == task and c["steps"] == int(match["steps"]) and method in c["methods"]
            and int(match["seed"]) in c["seeds"] for c in chosen), path.name


def choice_run(correct: list[int]) -> dict:
    """A run file's record holding only multiple-choice rows (what `gap_closed` reads)."""
    return {"seed": 0, "metrics": {"choice_accuracy/builtin": sum(correct) / len(correct)},
            "rows": {"choice": {"choice_correct": correct, "choice_correct_ended": correct}}}


def test_the_recovery_table_says_whether_a_method_passes_the_checkpoint_on_the_same_items():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import CHECKPOINT, UNTRAINED, gap_closed

    split = "reverse-validation-500"
    found = {(split, 0, UNTRAINED): [choice_run([1] * 40 + [0] * 160)],      # 0.20
             (split, 0, CHECKPOINT): [choice_run([1] * 100 + [0] * 100)],    # 0.50
             (split, 9, "po_checkpoint_kd"): [choice_run([1] * 180 + [0] * 20)],  # the checkpoint's items and 80 more
             (split, 9, "po_checkpoint_distill"): [choice_run([1] * 100 + [0] * 100)],  # the checkpoint's items
             (split, 9, "po_checkpoint_qdpo"): [choice_run([1] * 60 + [0] * 140)]}
    text = gap_closed(found, split, 9, ["po_checkpoint_kd", "po_checkpoint_distill", "po_checkpoint_qdpo"])
    header, rule, *rows = (line for line in text.splitlines() if line.startswith("|"))
    assert header.endswith("| method - checkpoint: does it pass it? |")
    assert all(line.count("|") == header.count("|") for line in [rule, *rows])
    kd, distill, qdpo = rows
    assert "| 0.900 | 233% [" in kd and "| +0.400 [" in kd and kd.endswith(": passes it |")
    assert distill.endswith("| +0.000 [+0.000, +0.000]: no measurable difference |")
    assert "| -0.200 [" in qdpo and qdpo.endswith(": falls short |")


def test_a_table_of_the_untrained_model_alone_has_its_scores_and_no_difference_table():
    """`bench_quality.py --untrained_only` (the checkpoint, scored as recovery's ceiling on a split)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality_runs import TASKS, UNTRAINED, report

    text = report({UNTRAINED: [choice_run([1] * 3 + [0]) | {"seed": None}]}, TASKS["reverse"], "alone")
    assert "| untrained | 1 |  |  | 0.75 |" in text and "method - untrained" not in text


def test_the_budget_table_averages_each_method_over_its_seeds_at_every_budget_it_ran():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import budget

    def run(choice: float, kl: float | None = None) -> dict:
        return {"metrics": {"choice_accuracy/builtin": choice} | ({"checkpoint_kl/builtin": kl} if kl else {})}

    split = "reverse-validation-500"
    found = {(split, 48, "po_checkpoint_distill"): [run(0.5, 0.9), run(0.7)],
             (split, 192, "po_checkpoint_distill"): [run(0.6, 0.4), run(0.8, 0.6)],
             (split, 192, "po_checkpoint_kd"): [run(0.55, 0.2)]}
    text = budget(found, split, ["po_checkpoint_distill", "po_checkpoint_kd", "po_checkpoint_qdpo"])
    header, rule, distill, kd = (line for line in text.splitlines() if line.startswith("|"))
    assert header == "| method | 48 steps | 192 steps |"
    assert distill.endswith("| 0.600 (2) / 0.900 (1) | 0.700 (2) / 0.500 (2) |")
    assert kd.endswith("|  | 0.550 (1) / 0.200 (1) |")  # no run at 48 steps: an empty cell; qdpo: no row
    sealed = {("reverse-test", steps, method): runs for (_, steps, method), runs in found.items()}
    assert budget(sealed, "reverse-test", ["po_checkpoint_distill"]) is None  # never chosen on the sealed split


def test_a_verdict_against_several_baselines_sets_every_arm_against_the_strongest_on_validation():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import verdicts

    def runs(correct: int, seeds=(0, 1)) -> list[dict]:
        return [choice_run([1] * correct + [0] * (200 - correct)) | {"seed": seed} for seed in seeds]

    choice = {"question": "which arms?", "task": "reverse", "validated_on": "reverse-validation-500", "steps": 9,
              "seeds": [0, 1], "methods": ["sft", "kd", "copy"], "against": ["sft", "kd"]}
    choices = {"lead_metric": "choice_accuracy/builtin", "settings": [choice]}
    found = {("reverse-validation-500", 9, "sft"): runs(100), ("reverse-validation-500", 9, "kd"): runs(120, (0,)),
             ("reverse-validation-500", 9, "copy"): runs(160), ("reverse-test", 9, "sft"): runs(100),
             ("reverse-test", 9, "kd"): runs(120), ("reverse-test", 9, "copy"): runs(60)}
    undecided = verdicts(found, choices).splitlines()[-1]
    assert "not decided until each has seeds 0, 1" in undecided  # kd has seed 0 alone: no control yet

    found[("reverse-validation-500", 9, "kd")] = runs(120)
    sft, copy = verdicts(found, choices).splitlines()[-2:]
    assert sft.startswith("| which arms? | `sft` - `kd`, reverse, 9 steps | 0.500 vs 0.600: -0.100 [")
    assert sft.endswith("(rows only, 2 seeds): hurts |") and sft.count(": -0.100 [") == 2  # validation and sealed
    assert copy.startswith("|  | `copy` - `kd`") and "| 0.800 vs 0.600: +0.200 [" in copy
    assert "(rows only, 2 seeds): helps by +0.200 |" in copy
    assert copy.endswith("(rows only, 2 seeds): hurts |") and "| 0.300 vs 0.600: -0.300 [" in copy

    found[("reverse-test", 9, "copy")] = runs(60, (1,))  # one chosen seed scored on the sealed split: no verdict yet
    assert verdicts(found, choices).splitlines()[-1].endswith("(rows only, 1 of 2 seeds): no verdict until every "
                                                              "seed is scored |")
