"""Where the rejected side comes from: one small contract, and the sources the library ships.

A source is asked for candidate rejected answers, `n` per example, as token ids; the trainer filters
them, asks again for the prompts still short (bounded tries) and fills what is left, so every example
ends with exactly `num_negatives` pairs on every process. Pick a shipped source by name with the
config's `negative_source`, or pass your own object as `NegativeTeacherTrainer(..., negative_source=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..generation import GenerationSettings, generate_negative_ids, stop_token_ids
from ..models import eval_mode
from ..teacher.layer import materialized


@dataclass(frozen=True)
class SourceRequest:
    """One call's examples: prompt and reference token ids (the reference without its end-of-turn suffix)."""

    prompts: Sequence[list[int]]
    references: Sequence[list[int]]
    n: int
    """Candidates wanted per example."""
    seed: int
    """A function of (process, step, call) only, so a resumed run samples as the original did."""
    settings: GenerationSettings


@runtime_checkable
class NegativeSource(Protocol):
    """Writes candidate rejected answers; `trainer` gives access to the policy, the teacher and the tokenizer."""

    name: str

    def candidates(self, trainer, request: SourceRequest) -> list[list[list[int]]]:
        """Per example, `request.n` candidate rejected answers as token ids (no end-of-turn suffix)."""
        ...


class TeacherSource:
    """Samples of the packed low-bit copy of the checkpoint (`trainer.teacher`): the default."""

    name = "teacher"

    def candidates(self, trainer, request: SourceRequest) -> list[list[list[int]]]:
        with materialized(trainer.teacher, trainer.args.teacher_dequantize_once):
            return _sample(trainer, trainer.teacher, request)


class SelfSource:
    """The policy's own samples, adapter on (SPIN's opponent at its first iteration, then the current policy)."""

    name = "self"

    def candidates(self, trainer, request: SourceRequest) -> list[list[list[int]]]:
        return _sample(trainer, trainer.accelerator.unwrap_model(trainer.model), request)


class InBatchSource:
    """Other examples' references from the same batch: example i gets those of i+1, ..., i+n (cyclically)."""

    name = "in_batch"

    def candidates(self, trainer, request: SourceRequest) -> list[list[list[int]]]:
        count = len(request.references)
        return [[list(request.references[(i + shift) % count]) for shift in range(1, request.n + 1)]
                for i in range(count)]


SOURCES: dict[str, type] = {source.name: source for source in (TeacherSource, SelfSource, InBatchSource)}
"""The shipped negative sources by name (the config's `negative_source`)."""


def negative_source(name: str) -> NegativeSource:
    """The shipped source called `name`."""
    if name not in SOURCES:
        raise ValueError(f"negative_source={name!r}; allowed: {', '.join(SOURCES)}")
    return SOURCES[name]()


@torch.no_grad()
def _sample(trainer, model: nn.Module, request: SourceRequest) -> list[list[list[int]]]:
    tokenizer = trainer.processing_class
    with eval_mode(model):
        return generate_negative_ids(model, request.prompts, request.settings, seed=request.seed,
                                     pad_token_id=tokenizer.pad_token_id,
                                     stop_token_ids=stop_token_ids(tokenizer, model),
                                     num_return_sequences=request.n, synced_gpus=False)
