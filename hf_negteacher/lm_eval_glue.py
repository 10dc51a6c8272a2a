"""lm-evaluation-harness glue: our task YAML over local files, run on an already-built model."""

from __future__ import annotations

import shutil
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
TEXT_TASK = "negteacher_text_ppl"


def text_perplexity_task(data_file: str | Path, task_dir: str | Path) -> Path:
    """Write the `negteacher_text_ppl` task for `data_file` (JSONL, a `text` column) into `task_dir`."""
    data_file = Path(data_file).resolve()
    if not data_file.is_file():
        raise FileNotFoundError(f"lm-eval data file {str(data_file)!r} not found")
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    template = (TASKS_DIR / f"{TEXT_TASK}.yaml").read_text()
    (task_dir / f"{TEXT_TASK}.yaml").write_text(template.replace("DATA_FILE", str(data_file)))
    shutil.copy(TASKS_DIR / "utils.py", task_dir / "utils.py")
    return task_dir


def text_perplexity(model, tokenizer, data_file: str | Path, task_dir: str | Path, *, max_length: int,
                    batch_size: int = 8) -> dict[str, float]:
    """word_perplexity, byte_perplexity and bits_per_byte of `data_file` through `lm_eval.simple_evaluate`,
    with `HFLM` wrapping the model as built (4-bit, with an adapter, ...)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    include = text_perplexity_task(data_file, task_dir)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size)
    results = simple_evaluate(model=lm, tasks=[TEXT_TASK], task_manager=TaskManager(include_path=str(include)))
    metrics = results["results"][TEXT_TASK]
    return {name: float(metrics[f"{name},none"]) for name in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
