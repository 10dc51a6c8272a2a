"""Offline negatives: a preference dataset generated once by the teacher, resumable and seeded. The chosen side
is the dataset's reference, or an answer written by a model (`OfflineChosen`: the policy before training, or
the unquantized checkpoint), which the teacher's negatives are then filtered against.

Rows are appended batch by batch to `<path>.partial`; `<path>.progress.json` records, after each
batch, how many source rows are done and how many bytes of the partial file are complete, so a
killed run truncates any half-written tail and continues. The finished file is renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object
from datasets.fingerprint import Hasher
from tqdm.auto import tqdm

from ..atomic_write import atomic_write_json, atomic_write_text
from ..data.rows import PromptAnswer, preference_row
from ..generation import GenerationSettings, generate_answers
from ..models import model_identity
from ..teacher.build import teacher_digest
from .chosen_sources import model_answers, reads_reference
from .filters import NegativeFilter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineChosen:
    """A model that writes the chosen side of an offline dataset, as the chosen source `source` does online."""

    source: str
    model: object
    num_samples: int = 1
    """Greedy when 1, else the best of that many samples by the model's length-normalized log-probability."""
    max_new_tokens: int | None = None
    """The longest chosen answer (None: the negatives' `max_new_tokens`)."""

    def generation_settings(self, negatives: GenerationSettings) -> GenerationSettings:
        """The chosen model's sampling: the negatives' `negatives`, with this side's length limit."""
        return negatives.with_max_new_tokens(self.max_new_tokens)


def offline_chosen(source, policy, args) -> OfflineChosen | None:
    """What writes the chosen side offline for the chosen source `source` and the (unwrapped, untrained)
    `policy`: None for a source that reads the reference; a source must say which model answers."""
    if reads_reference(source):
        return None
    if not hasattr(source, "answer_model"):
        raise ValueError(f"chosen source {source.name!r} has no `answer_model(policy, args)`: negatives_mode=offline "
                         "needs the model that writes the chosen answers")
    return OfflineChosen(source.name, source.answer_model(policy, args), args.chosen_num_samples,
                         args.chosen_generation_settings().max_new_tokens)


def generate_preference_dataset(teacher, tokenizer, rows: Sequence[dict], pairs: Sequence[PromptAnswer],
                                path: str | Path, *, settings: GenerationSettings, teacher_spec: str,
                                num_negatives: int = 1, negative_filter: NegativeFilter | None = None,
                                keep_dataset_rejected: bool = False, chosen: OfflineChosen | None = None,
                                progress: bool = True) -> dict:
    """Write `path` (JSONL: prompt, chosen, rejected, `negteacher` metadata) and `path.meta.json`.

    The chosen side is each row's reference, or with `chosen` that model's answer (prompt-only rows are then
    accepted); its row metadata says which source wrote it and whether it was complete (ended before
    `chosen.max_new_tokens`, by default `settings.max_new_tokens`), and the file's metadata counts the cut-off
    ones.

    `pairs[i]` is `rows[i]` rendered for the model (see `formats.validate_rows`). Returns the
    metadata: settings, fingerprint, rows written and filter counts. An existing complete file with
    the same fingerprint (rows, settings, and the model, its quantization, tokenizer and chat template:
    `models.model_identity`) is reused as is.

    Under several processes (`accelerate launch`) every process must call this: each takes its share of the
    batches (`PartialState.split_between_processes`) and writes them to its own part, resumable like the whole
    file, and the main process merges the parts in row order (the output folder must be shared, as the trainer
    reads the file on every process). Each batch is sampled under `seed + its first row`, so the file is the one
    process would write, whatever the number of processes.
    """
    path = Path(path)
    negative_filter = negative_filter or NegativeFilter()
    generation = dataclasses.asdict(settings)
    identity = [{**model_identity(teacher, tokenizer), "packed": teacher_digest(teacher)}]
    if chosen is not None:
        identity.append({"chosen": chosen.source, "num_samples": chosen.num_samples,
                         "max_new_tokens": chosen.generation_settings(settings).max_new_tokens,
                         **model_identity(chosen.model, tokenizer), "adapter": _adapter_digest(chosen.model)})
    fingerprint = _fingerprint(rows, teacher_spec, generation, num_negatives, negative_filter, keep_dataset_rejected,
                               *identity)
    meta = _complete(path, fingerprint)
    if meta is not None:
        logger.info("reusing %s (same model, tokenizer, teacher, generation settings and rows)", path)
        return meta
    job = _Job(teacher, tokenizer, rows, pairs, settings, teacher_spec, num_negatives, negative_filter,
               keep_dataset_rejected, chosen, progress)
    state = PartialState()
    if state.num_processes == 1:
        return job.write(path, fingerprint, range(len(rows)))
    world, rank = state.num_processes, state.process_index
    batches = [range(start, min(start + settings.batch_size, len(rows)))
               for start in range(0, len(rows), settings.batch_size)]
    with state.split_between_processes(batches) as own_batches:  # whole batches: samples as one process draws them
        indices = [index for batch in own_batches for index in batch]
    part = path.with_name(f"{path.name}.part{rank}of{world}")
    part_meta = job.write(part, f"{fingerprint}-batches{rank}of{world}", indices)
    parts = gather_object([(part, part_meta)])
    if state.is_main_process:
        _merge(parts, path, {"fingerprint": fingerprint, "teacher": teacher_spec, "generation": generation,
                             "num_negatives": num_negatives, "source_rows": len(rows), "processes": world,
                             "chosen": _chosen_meta(chosen, settings, 0)})
    state.wait_for_everyone()
    return json.loads(_meta_path(path).read_text())


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _complete(path: Path, fingerprint: str) -> dict | None:
    """The metadata of `path` when it is complete and was written for `fingerprint`, else None."""
    meta_path = _meta_path(path)
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    return meta if meta.get("fingerprint") == fingerprint else None


@dataclass
class _Job:
    """What to generate; `write` generates the rows `indices` of it into one file."""

    teacher: object
    tokenizer: object
    rows: Sequence[dict]
    pairs: Sequence[PromptAnswer]
    settings: GenerationSettings
    teacher_spec: str
    num_negatives: int
    negative_filter: NegativeFilter
    keep_dataset_rejected: bool
    chosen: OfflineChosen | None
    progress: bool

    def write(self, path: Path, fingerprint: str, indices: Sequence[int]) -> dict:
        negative_filter = dataclasses.replace(self.negative_filter)  # this file's counts only
        generation = dataclasses.asdict(self.settings)
        partial = path.with_name(path.name + ".partial")
        progress_path = path.with_name(path.name + ".progress.json")
        finished = _complete(path, fingerprint)  # a part finished before an interruption
        if finished is not None:
            return finished
        state = {"fingerprint": fingerprint, "rows_done": 0, "bytes": 0, "rows_written": 0, "counts": {},
                 "chosen_cut_off": 0}
        if partial.is_file() and progress_path.is_file():
            saved = json.loads(progress_path.read_text())
            if saved.get("fingerprint") == fingerprint:
                state = {**state, **saved}  # a file started before a field was added resumes with its default
                logger.info("resuming %s at row %d of %d", path, state["rows_done"], len(indices))
        negative_filter.counts.update(state["counts"])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "a+b") as handle:
            handle.truncate(state["bytes"])  # drop whatever a killed run half-wrote after the last checkpoint
            handle.seek(state["bytes"])
            starts = range(state["rows_done"], len(indices), self.settings.batch_size)
            for start in tqdm(starts, desc="teacher negatives", disable=not self.progress):
                batch = indices[start:start + self.settings.batch_size]
                batch_settings = dataclasses.replace(self.settings, seed=self.settings.seed + batch[0])
                negatives = generate_answers(self.teacher, self.tokenizer, [self.pairs[i].prompt for i in batch],
                                             batch_settings, num_return_sequences=self.num_negatives,
                                             synced_gpus=False)  # each process's own rows, its own teacher
                chosen = self._chosen_answers(batch, batch_settings)
                state["chosen_cut_off"] += sum(1 for answer in chosen if answer is not None and not answer[1])
                lines = []
                for index, row_negatives, row_chosen in zip(batch, negatives, chosen, strict=True):
                    candidates = row_negatives if isinstance(row_negatives, list) else [row_negatives]
                    kept = negative_filter.apply(candidates, self.pairs[index].answer if row_chosen is None
                                                 else row_chosen[0])
                    lines += _rows_for(self.rows[index], index, kept, self.teacher_spec, generation,
                                       batch_settings.seed, self.keep_dataset_rejected,
                                       None if row_chosen is None else (self.chosen, *row_chosen))
                handle.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode())
                handle.flush()
                os.fsync(handle.fileno())
                state.update(rows_done=start + len(batch), bytes=handle.tell(),
                             rows_written=state["rows_written"] + len(lines), counts=dict(negative_filter.counts))
                atomic_write_json(progress_path, state)
        meta = {
            "fingerprint": fingerprint, "teacher": self.teacher_spec, "generation": generation,
            "num_negatives": self.num_negatives, "source_rows": len(indices), "rows_written": state["rows_written"],
            "counts": dict(negative_filter.counts), "filtered_fraction": negative_filter.filtered_fraction,
            "chosen": _chosen_meta(self.chosen, self.settings, state["chosen_cut_off"]),
        }
        os.replace(partial, path)
        atomic_write_json(_meta_path(path), meta)
        progress_path.unlink(missing_ok=True)
        logger.info("wrote %s: %d pairs from %d rows (%.1f%% of negatives filtered)", path, meta["rows_written"],
                    len(indices), 100 * meta["filtered_fraction"])
        return meta

    def _chosen_answers(self, batch: Sequence[int], settings: GenerationSettings) -> list[tuple[str, bool] | None]:
        """Per row of `batch`, the chosen model's answer text and whether it is complete (None: the reference)."""
        if self.chosen is None:
            return [None] * len(batch)
        prompt_ids = [self.tokenizer(self.pairs[i].prompt, add_special_tokens=False).input_ids for i in batch]
        settings = self.chosen.generation_settings(settings)
        picked = model_answers(self.chosen.model, self.tokenizer, prompt_ids, settings, seed=settings.seed,
                               num_samples=self.chosen.num_samples)
        return [(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), complete) for ids, complete in picked]


def _chosen_meta(chosen: OfflineChosen | None, settings: GenerationSettings, cut_off: int) -> dict:
    if chosen is None:
        return {"source": "reference"}
    return {"source": chosen.source, "num_samples": chosen.num_samples,
            "max_new_tokens": chosen.generation_settings(settings).max_new_tokens, "cut_off": cut_off}


def _adapter_digest(model) -> str:
    """A digest of a PEFT model's adapter tensors (a trained adapter answers differently from a fresh one); empty
    for a model without one, whose identity `models.model_identity` gives."""
    if not hasattr(model, "peft_config"):
        return ""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if "lora_" in name or parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _merge(parts: Sequence[tuple[Path, dict]], path: Path, meta: dict) -> None:
    """The parts' lines (each part a file and its metadata) in row order into `path` (atomically), their counts
    summed; the parts are removed."""
    readers = [(json.loads(line) for line in part.read_text(encoding="utf-8").splitlines()) for part, _ in parts]
    lines = heapq.merge(*readers, key=lambda line: line["negteacher"]["row"])
    atomic_write_text(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    metas = [part_meta for _, part_meta in parts]
    counts = Counter()
    for part_meta in metas:
        counts.update(part_meta["counts"])
    filtered = sum(v for k, v in counts.items() if k.startswith("filtered_"))
    if meta["chosen"]["source"] != "reference":
        meta["chosen"]["cut_off"] = sum(m["chosen"]["cut_off"] for m in metas)
    atomic_write_json(_meta_path(path), {**meta, "rows_written": sum(m["rows_written"] for m in metas),
                                         "counts": dict(counts),
                                         "filtered_fraction": filtered / counts["generated"] if counts["generated"]
                                         else 0.0})
    for part, _ in parts:
        part.unlink()
        _meta_path(part).unlink()


def _rows_for(row: dict, index: int, negatives: list[str], teacher_spec: str, generation: dict, seed: int,
              keep_dataset_rejected: bool, chosen: tuple[OfflineChosen, str, bool] | None) -> list[dict]:
    base = preference_row(row)
    dataset_rejected = base.pop("rejected", None)
    conversational = isinstance(base["chosen"], list)

    def answer(text: str):
        return [{"role": "assistant", "content": text}] if conversational else text

    chosen_meta = {"source": "reference"}
    if chosen is not None:
        writer, text, complete = chosen
        base["chosen"] = answer(text)
        chosen_meta = {"source": writer.source, "num_samples": writer.num_samples, "complete": complete}
    out = []
    for number, text in enumerate(negatives):
        out.append({**base, "rejected": answer(text), "negteacher": {
            "source": "teacher", "teacher": teacher_spec, "row": index, "negative": number, "seed": seed,
            "generation": generation, "chosen": chosen_meta}})
    if keep_dataset_rejected and dataset_rejected is not None:
        out.append({**base, "rejected": dataset_rejected, "negteacher": {"source": "dataset", "row": index}})
    return out


def _fingerprint(rows: Sequence[dict], *parts) -> str:
    """`datasets`' own fingerprint (`Hasher`, as `Dataset.map` caches by) of the rows and everything that shapes
    their negatives."""
    hasher = Hasher()
    hasher.update(list(rows))
    hasher.update([dataclasses.asdict(p) if isinstance(p, NegativeFilter) else p for p in parts])
    return hasher.hexdigest()
