"""Offline negatives: a preference dataset generated once by the teacher, resumable and seeded.

Rows are appended batch by batch to `<path>.partial`; `<path>.progress.json` records, after each
batch, how many source rows are done and how many bytes of the partial file are complete, so a
killed run truncates any half-written tail and continues. The finished file is renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .files import atomic_write_json
from .formats import PromptAnswer, preference_row
from .models import model_identity
from .negatives import GenerationSettings, NegativeFilter, generate_answers

logger = logging.getLogger(__name__)


def generate_preference_dataset(teacher, tokenizer, rows: Sequence[dict], pairs: Sequence[PromptAnswer],
                                path: str | Path, *, settings: GenerationSettings, teacher_spec: str,
                                num_negatives: int = 1, negative_filter: NegativeFilter | None = None,
                                keep_dataset_rejected: bool = False, progress: bool = True) -> dict:
    """Write `path` (JSONL: prompt, chosen, rejected, `negteacher` metadata) and `path.meta.json`.

    `pairs[i]` is `rows[i]` rendered for the model (see `formats.validate_rows`). Returns the
    metadata: settings, fingerprint, rows written and filter counts. An existing complete file with
    the same fingerprint (rows, settings, and the model, its quantization, tokenizer and chat template:
    `models.model_identity`) is reused as is.
    """
    path = Path(path)
    negative_filter = dataclasses.replace(negative_filter or NegativeFilter())  # this file's counts only
    generation = dataclasses.asdict(settings)
    fingerprint = _fingerprint(rows, teacher_spec, generation, num_negatives, negative_filter, keep_dataset_rejected,
                               model_identity(teacher, tokenizer))
    meta_path = path.with_name(path.name + ".meta.json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            logger.info("reusing %s (same model, tokenizer, teacher, generation settings and rows)", path)
            return meta
    partial = path.with_name(path.name + ".partial")
    progress_path = path.with_name(path.name + ".progress.json")
    state = {"fingerprint": fingerprint, "rows_done": 0, "bytes": 0, "rows_written": 0, "counts": {}}
    if partial.is_file() and progress_path.is_file():
        saved = json.loads(progress_path.read_text())
        if saved.get("fingerprint") == fingerprint:
            state = saved
            logger.info("resuming %s at row %d of %d", path, state["rows_done"], len(rows))
    negative_filter.counts.update(state["counts"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "a+b") as handle:
        handle.truncate(state["bytes"])  # drop whatever a killed run half-wrote after the last checkpoint
        handle.seek(state["bytes"])
        starts = range(state["rows_done"], len(rows), settings.batch_size)
        for start in tqdm(starts, desc="teacher negatives", disable=not progress):
            end = min(start + settings.batch_size, len(rows))
            batch_settings = dataclasses.replace(settings, seed=settings.seed + start)
            negatives = generate_answers(teacher, tokenizer, [p.prompt for p in pairs[start:end]], batch_settings,
                                         num_return_sequences=num_negatives)
            lines = []
            for offset, row_negatives in enumerate(negatives):
                index = start + offset
                candidates = row_negatives if isinstance(row_negatives, list) else [row_negatives]
                kept = negative_filter.apply(candidates, pairs[index].answer)
                lines += _rows_for(rows[index], index, kept, teacher_spec, generation, batch_settings.seed,
                                   keep_dataset_rejected)
            handle.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode())
            handle.flush()
            os.fsync(handle.fileno())
            state.update(rows_done=end, bytes=handle.tell(), rows_written=state["rows_written"] + len(lines),
                         counts=dict(negative_filter.counts))
            atomic_write_json(progress_path, state)
    meta = {
        "fingerprint": fingerprint, "teacher": teacher_spec, "generation": generation,
        "num_negatives": num_negatives, "source_rows": len(rows), "rows_written": state["rows_written"],
        "counts": dict(negative_filter.counts), "filtered_fraction": negative_filter.filtered_fraction,
    }
    os.replace(partial, path)
    atomic_write_json(meta_path, meta)
    progress_path.unlink(missing_ok=True)
    logger.info("wrote %s: %d pairs from %d rows (%.1f%% of negatives filtered)", path, meta["rows_written"],
                len(rows), 100 * meta["filtered_fraction"])
    return meta


def _rows_for(row: dict, index: int, negatives: list[str], teacher_spec: str, generation: dict, seed: int,
              keep_dataset_rejected: bool) -> list[dict]:
    base = preference_row(row)
    dataset_rejected = base.pop("rejected", None)
    conversational = isinstance(base["chosen"], list)
    out = []
    for number, text in enumerate(negatives):
        rejected = [{"role": "assistant", "content": text}] if conversational else text
        out.append({**base, "rejected": rejected, "negteacher": {
            "source": "teacher", "teacher": teacher_spec, "row": index, "negative": number, "seed": seed,
            "generation": generation}})
    if keep_dataset_rejected and dataset_rejected is not None:
        out.append({**base, "rejected": dataset_rejected, "negteacher": {"source": "dataset", "row": index}})
    return out


def _fingerprint(rows: Sequence[dict], *parts) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    digest.update(json.dumps([dataclasses.asdict(p) if isinstance(p, NegativeFilter) else p for p in parts],
                             sort_keys=True).encode())
    return digest.hexdigest()[:16]
