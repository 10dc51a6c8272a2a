"""The unquantized checkpoint's chosen answers, kept on disk between the quality benchmark's runs.

Recovery arms (`chosen_source: checkpoint`) ask the checkpoint for its best-of-4 answers at every step, and on
the CPU that is most of a step. The answers depend on the checkpoint, the prompts, the seed and the sampling
settings only, never on the policy, so the arms of one task and seed ask exactly the same questions: the first
run writes each answer, the others read it back, and every run trains on the answers it would have generated.
A run that reads answers is credited the seconds their writer spent on them (`seconds_read`), so training times
stay what each run alone would take. The files are compact JSON: the quality benchmark commits them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from hf_negteacher.atomic_write import atomic_write_text
from hf_negteacher.models import model_identity
from hf_negteacher.training.chosen_sources import CheckpointSource


class CachedCheckpointSource(CheckpointSource):
    """`chosen_source: checkpoint` whose picked answers are stored in `folder`, one file per request."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self._identity: dict | None = None
        self.seconds_read = 0.0

    def picked_answers(self, model, context, request) -> list[tuple[list[int], bool]]:
        if self._identity is None:
            self._identity = {**model_identity(model, context.tokenizer), "dtype": str(model.dtype)}
        key = json.dumps([self._identity, [list(p) for p in request.prompts], request.seed,
                          dataclasses.asdict(request.settings), context.args.chosen_num_samples], sort_keys=True)
        path = self.folder / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            self.seconds_read += stored["seconds"]
            return [(list(ids), bool(complete)) for ids, complete in stored["answers"]]
        start = time.perf_counter()
        picked = super().picked_answers(model, context, request)
        stored = {"seconds": time.perf_counter() - start, "answers": picked}
        atomic_write_text(path, json.dumps(stored, separators=(",", ":")) + "\n")
        return picked
