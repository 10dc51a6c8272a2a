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
