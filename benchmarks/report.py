"""Every quality table in RESULTS.md, and every figure the README quotes, rebuilt from the committed run files
in seconds, without a model (torch is never imported):

    python benchmarks/report.py            # print RESULTS.md's text
    python benchmarks/report.py --write    # and write it to benchmarks/RESULTS.md

Runs are found under `benchmarks/runs/bench_quality/<model>/<task dir>/` (one file per method, steps and seed,
as `bench_quality.py` wrote it). A task dir is the split it was scored on: `<task>` is validation (the 500 old
held-out rows, read for about 45 settings), `<task>-validation-500` the training split's last 500 rows (also
validation), `<task>-test` the sealed test split, scored once for the settings `sealed_choices.yaml` names.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_runs import METHODS, MIN_SEEDS, RUNS, TASKS, UNTRAINED, report  # noqa: E402  (sibling module)

from hf_negteacher.atomic_write import atomic_write_text  # noqa: E402
from hf_negteacher.evaluation.report import metric_label  # noqa: E402
from hf_negteacher.evaluation.statistics import seed_row_bootstrap  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
README = HERE.parent / "README.md"
README_BLOCK = ("<!-- report:verdicts -->\n", "<!-- /report:verdicts -->")
"""The README's verdict table lies between these lines; `--write` puts the report's in."""
SEALED_CHOICES = HERE / "sealed_choices.yaml"
FILE_NAME = re.compile(r"(?P<slug>.+?)(?:-chosen_tokens=\d+)?-steps=(?P<steps>\d+)-seed=(?P<seed>\d+)"
                       r"-nf4=(?P<nf4>True|False)-rows=.*\.json")
SLUGS = {re.sub(r"\W+", "_", label).strip("_"): key for key, label in METHODS.items()} | {UNTRAINED: UNTRAINED}
SPLITS = {"": "validation (the old held-out rows)", "-validation-500": "validation (training split's last 500 rows)",
          "-test": "sealed test"}
SECTIONS = [
    ("With reference answers: does the crippled copy beat SFT?",
     ("sft", "teacher", "int4", "self_play", "in_batch", "token", "follow", "band", "strength"), "sft"),
    ("Prompts alone: the policy's own answers as chosen",
     ("po_distill", "po_self", "po_self_equal", "po_teacher", "po_delta", "po_teacher_sigmoid", "po_teacher_norm",
      "po_teacher_beta5"), "po_distill"),
    ("Quantization recovery: the checkpoint's answers as chosen",
     ("po_checkpoint_distill", "po_checkpoint", "po_checkpoint_delta", "po_checkpoint_band"), "po_checkpoint_distill"),
]
"""Each question, the methods that answer it, and the control every other method is set against."""
CONTRAST_METRIC = "choice_accuracy/builtin"
"""The score the verdicts lead with: it needs no generation, so it reads knowledge rather than answer format."""


def discover(model_key: str = "smollm2", runs: Path = RUNS) -> dict[tuple[str, int, str], list[dict]]:
    """(task dir, steps, method) -> its runs (nf4 only), each with its `seed`, sorted by seed."""
    found: dict[tuple[str, int, str], list[dict]] = defaultdict(list)
    for path in sorted((runs / model_key).glob("*/*.json")):
        match = FILE_NAME.fullmatch(path.name)
        if not match or match["nf4"] != "True" or match["slug"] not in SLUGS:
            continue
        run = json.loads(path.read_text()) | {"seed": int(match["seed"])}
        found[(path.parent.name, int(match["steps"]), SLUGS[match["slug"]])].append(run)
    return {key: sorted(value, key=lambda r: r["seed"]) for key, value in found.items()}


def split_of(task_dir: str) -> tuple[str, str]:
    task = task_dir.split("-")[0]
    return task, SPLITS[task_dir.removeprefix(task)]


def table(found, task_dir: str, steps: int, methods, against: str) -> str | None:
    """One table: the untrained model and every method of `methods` run at `steps` on `task_dir`."""
    task, split = split_of(task_dir)
    present = [m for m in methods if (task_dir, steps, m) in found]
    if not present or (task_dir, 0, UNTRAINED) not in found:
        return None
    results = {UNTRAINED: found[(task_dir, 0, UNTRAINED)]} | {METHODS[m]: found[(task_dir, steps, m)]
                                                               for m in present}
    extra = (against,) if against in present and against != "sft" else ()
    commits = sorted({r.get("commit", "?") for runs in results.values() for r in runs})
    title = (f"{task}, {steps} steps, scored on the {split} split; SmolLM2-135M-Instruct (the Q4_1 GGUF dequantized "
             f"to fp32), NF4 policy + LoRA r16; runs scored at {', '.join(commits)}")
    return report(results, TASKS[task], title, split.split(" ")[0], extra)


def sections(found) -> list[str]:
    out = []
    for question, methods, against in SECTIONS:
        tables = [t for (task_dir, steps) in sorted({(d, s) for d, s, m in found if m in methods and s})
                  if (t := table(found, task_dir, steps, methods, against))]
        out.append(f"## {question}\n\n" + "\n\n".join(tables))
    return out


def verdicts(found, choices: dict) -> str:
    """The README's table: each setting `sealed_choices.yaml` named, its difference on the validation rows and,
    once scored, on the sealed test split (two-level intervals where there are three seeds)."""
    lines = ["| question | setting | validation | sealed test |", "|---|---|---|---|"]
    for choice in choices["settings"]:
        method, control = (m for m in choice["methods"] if m != choice["against"]), choice["against"]
        method = next(method)
        cells = []
        for task_dir in (choice["task"], f"{choice['task']}-test"):
            a, b = found.get((task_dir, choice["steps"], method)), found.get((task_dir, choice["steps"], control))
            if not a or not b:
                cells.append("not scored yet")
                continue
            seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
            diff = seed_row_bootstrap([_rows(r) for r in a if r["seed"] in seeds],
                                      [_rows(r) for r in b if r["seed"] in seeds], min_seeds=MIN_SEEDS)
            d = diff[CONTRAST_METRIC]
            kind = "seeds and rows" if d.over_seeds else "rows only"
            cells.append(f"{d.a:.3f} vs {d.b:.3f}: {d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}] "
                         f"({kind}, {len(seeds)} seeds)")
        lines.append(f"| {choice['question']} | `{method}` - `{control}`, {choice['task']}, {choice['steps']} steps "
                     f"| {cells[0]} | {cells[1]} |")
    return (f"Verdicts: {metric_label(CONTRAST_METRIC)} (500 items, given a definition which of 5 words), each "
            "setting minus its control, 95% interval\n\n" + "\n".join(lines))


def _rows(run: dict) -> dict:
    import numpy as np

    return {group: {k: np.array(v) for k, v in arrays.items()} for group, arrays in run["rows"].items()}


def build(runs: Path = RUNS) -> str:
    found = discover(runs=runs)
    choices = yaml.safe_load(SEALED_CHOICES.read_text())
    head = ("# Results\n\nRegenerated by `python benchmarks/report.py --write` from the run files under "
            "`benchmarks/runs/bench_quality/` (each table names the commit its runs were scored at). Every "
            "number here is a validation number unless its table says *sealed test*.")
    return "\n\n".join([head, "## Verdicts\n\n" + verdicts(found, choices), *sections(found)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="also write benchmarks/RESULTS.md and the README's verdict table")
    args = parser.parse_args()
    text = build()
    if args.write:
        atomic_write_text(RESULTS, text)
        readme = README.read_text()
        start, end = readme.index(README_BLOCK[0]) + len(README_BLOCK[0]), readme.index(README_BLOCK[1])
        table = verdicts(discover(), yaml.safe_load(SEALED_CHOICES.read_text()))
        atomic_write_text(README, readme[:start] + table + "\n" + readme[end:])
    print(text)


if __name__ == "__main__":
    main()
