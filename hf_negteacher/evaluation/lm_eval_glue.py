"""lm-evaluation-harness glue: our task YAMLs over local files, run on an already-built model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..atomic_write import atomic_write_text
from ..data.rows import PromptAnswer
from .multiple_choice import ChoiceItem

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
TEXT_TASK = "negteacher_text_ppl"
ANSWER_TASK = "negteacher_answer_ppl"
CHOICE_TASK = "negteacher_choice"
METRICS = {TEXT_TASK: {"word_perplexity": "word_perplexity", "byte_perplexity": "byte_perplexity",
                       "bits_per_byte": "bits_per_byte"},
           ANSWER_TASK: {"answer_perplexity": "answer_perplexity", "answer_bits_per_byte": "answer_bits_per_byte"},
           CHOICE_TASK: {"choice_accuracy": "acc"}}
"""Per task: our metric name -> lm-eval's."""


def write_tasks(task_dir: str | Path, tokenizer, *, pairs: Sequence[PromptAnswer] = (),
                texts: Sequence[str] = (), choices: Sequence[ChoiceItem] = ()) -> list[str]:
    """Write the data files and task YAMLs into `task_dir` (usable with `lm_eval --include_path task_dir`):
    `negteacher_answer_ppl` over `pairs`, `negteacher_text_ppl` over `texts`, `negteacher_choice` (lm-eval's
    own `multiple_choice` accuracy) over `choices`. Returns the task names."""
    if not pairs and not texts:
        raise ValueError("write_tasks needs prompt/answer pairs or texts")
    task_dir = Path(task_dir).resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(TASKS_DIR / "utils.py", task_dir / "utils.py")
    tasks = []
    if pairs:
        counts = [len(ids) for ids in tokenizer([p.answer for p in pairs], add_special_tokens=False).input_ids]
        rows = [{"prompt": p.prompt, "answer": p.answer, "answer_tokens": n}
                for p, n in zip(pairs, counts, strict=True)]
        tasks.append(_write_task(task_dir, ANSWER_TASK, rows))
    if texts:
        tasks.append(_write_task(task_dir, TEXT_TASK, [{"text": t} for t in texts]))
    if choices:
        tasks.append(_write_task(task_dir, CHOICE_TASK, [{"prompt": c.prompt, "choices": list(c.choices),
                                                          "label": c.label} for c in choices]))
    return tasks


def write_command_folder(folder: str | Path, tokenizer, base: str, adapter: str | Path, *,
                         pairs: Sequence[PromptAnswer] = (), texts: Sequence[str] = (),
                         choices: Sequence[ChoiceItem] = ()) -> str:
    """The tasks of `write_tasks` in `folder`, plus `folder/base`, a link to the local unquantized checkpoint
    (`base`: a folder, or a Hub id used as it is), so the plain `lm_eval` command line scores `adapter` on
    the same rows. Returns that command line (paths as given, relative ones too).

    The link also keeps the checkpoint's cache name ("...-Instruct...") out of `--model_args`, where lm-eval
    would read it as a chat model and warn that no chat template is applied: the prompts are already templated."""
    folder = Path(folder)
    tasks = write_tasks(folder, tokenizer, pairs=pairs, texts=texts, choices=choices)
    pretrained = base
    if Path(base).is_dir():
        link = folder / "base"
        link.unlink(missing_ok=True)
        link.symlink_to(Path(base).resolve(), target_is_directory=True)
        pretrained = str(link)
    return (f"lm_eval --model hf --model_args pretrained={pretrained},peft={adapter},dtype=float32 "
            f"--include_path {folder} --tasks {','.join(tasks)} --device cpu")


def _write_task(task_dir: Path, task: str, rows: list[dict]) -> str:
    data_file = task_dir / f"{task}.jsonl"
    atomic_write_text(data_file, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    template = (TASKS_DIR / f"{task}.yaml").read_text()
    atomic_write_text(task_dir / f"{task}.yaml", template.replace("DATA_FILE", str(data_file)))
    return task


def run_tasks(model, tokenizer, task_dir: str | Path, tasks: Sequence[str], *, max_length: int,
              batch_size: int = 8) -> dict[str, float]:
    """Each task's metrics through `lm_eval.simple_evaluate`, with `HFLM` wrapping the model as built
    (4-bit, with an adapter, the teacher, ...)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size)
    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=TaskManager(include_path=str(task_dir)),
                              log_samples=False)["results"]
    return {ours: float(results[task][f"{theirs},none"]) for task in tasks for ours, theirs in METRICS[task].items()}
