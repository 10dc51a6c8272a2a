"""Where the rejected side comes from: one small contract, and the sources the library ships.

A source is asked for candidate rejected answers, `n` per example, as token ids; the trainer filters
them, asks again for the prompts still short (bounded tries) and fills what is left, so every example
ends with exactly `num_negatives` pairs on every process. Pick a shipped source by name with the
config's `negative_source`, or pass your own object as `NegativeTeacherTrainer(..., negative_source=...)`.
A source may also have `setup(rows)`, called once with the raw dataset rows before any model is
touched: it checks them (raising `SourceError`) and keeps what it needs from them; and `scored_model(context)`,
the model whose log-probability of the references the trainer logs as `teacher/reference_ppl` (the teacher's
source has it). Sources see the trainer through a `SourceContext` only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from datasets import Dataset
from torch import nn

from ..data.rows import preference_row
from ..generation import GenerationSettings, generate_negative_ids, stop_token_ids
from ..models import eval_mode
from ..teacher.layer import materialized
from .source_context import SourceContext


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
    examples: Sequence[dict] = ()
    """The batch's tokenized examples (`prompt_ids`, `chosen_ids`, and `rejected_ids`, the end-of-answer tokens)."""
    example_seeds: Sequence[int] = ()
    """One seed per example, a function of (example, step, try) only: a source that samples each example from its
    own seed (`generation.generate_negative_ids(prompt_seeds=...)`) writes the same candidates however the
    examples are batched, which lets the trainer generate ahead (`negatives_lookahead`)."""


class SourceError(ValueError):
    """The data cannot serve the chosen source; the message names the row and what is missing."""


@runtime_checkable
class NegativeSource(Protocol):
    """Writes candidate rejected answers; `context` gives the policy, the teacher, the tokenizer and the config."""

    name: str

    def candidates(self, context: SourceContext, request: SourceRequest) -> list[list[list[int]]]:
        """Per example, `request.n` candidate rejected answers as token ids (no end-of-turn suffix)."""
        ...


class TeacherSource:
    """Samples of the packed low-bit copy of the checkpoint (`trainer.teacher`): the default."""

    name = "teacher"
    per_example = True
    """Each example's candidates depend on that example and its seed only (not on the policy or the batch)."""

    def candidates(self, context: SourceContext, request: SourceRequest) -> list[list[list[int]]]:
        with materialized(context.teacher, context.args.teacher_dequantize_once):
            return sample(context.tokenizer, context.teacher, request)

    def scored_model(self, context: SourceContext) -> nn.Module:
        return context.teacher


class SelfSource:
    """The policy's own samples, adapter on (SPIN's opponent at its first iteration, then the current policy)."""

    name = "self"
    runs_policy = True
    """It generates with the policy outside the forward pass, which sharded processes cannot (FSDP / ZeRO-3)."""

    def candidates(self, context: SourceContext, request: SourceRequest) -> list[list[list[int]]]:
        with context.policy_for_generation() as policy:
            return sample(context.tokenizer, policy, request)


class InBatchSource:
    """Other examples' references from the same batch: example i gets those of i+1, ..., i+n (cyclically)."""

    name = "in_batch"

    def candidates(self, context: SourceContext, request: SourceRequest) -> list[list[list[int]]]:
        count = len(request.references)
        return [[list(request.references[(i + shift) % count]) for shift in range(1, request.n + 1)]
                for i in range(count)]


class DatasetSource:
    """The dataset's own `rejected` answers (rows with `prompt`, `chosen` and `rejected`): plain DPO pairs
    through the same filters. A prompt with fewer distinct rejected answers than `num_negatives` is filled
    (counted in `negatives/fallback_fraction`)."""

    name = "dataset"
    per_example = True

    def __init__(self) -> None:
        self._rows: list[dict] = []
        self._answers: dict[str, list[list[int]]] | None = None

    def setup(self, rows: Sequence[dict]) -> None:
        missing = next((i for i, row in enumerate(rows) if not row.get("rejected")), None)
        if missing is not None:
            raise SourceError(f"negative_source='dataset': row {missing} has no `rejected` answer; every row needs "
                              "one (prompt + chosen + rejected)")
        self._rows, self._answers = [preference_row(row) for row in rows], None

    def candidates(self, context: SourceContext, request: SourceRequest) -> list[list[list[int]]]:
        if self._answers is None:  # tokenized by TRL's own DPO preprocessing, as the training rows are
            self._answers = {}
            tokenized = context.tokenize_preference_rows(Dataset.from_list(self._rows), "dataset rejected")
            for example in tokenized:
                self._answers.setdefault(example_key(example), []).append(example["rejected_ids"])
        out = []
        for example in request.examples:
            options = self._answers.get(example_key(example))
            if options is None:
                raise SourceError("negative_source='dataset': a training example has no row with a `rejected` "
                                  "answer (was the dataset changed after setup?)")
            out.append([cut_suffix(options[j % len(options)], example["rejected_ids"]) for j in range(request.n)])
        return out


SOURCES: dict[str, type] = {source.name: source
                            for source in (TeacherSource, SelfSource, InBatchSource, DatasetSource)}
"""The shipped negative sources by name (the config's `negative_source`)."""


def negative_source(name: str) -> NegativeSource:
    """The shipped source called `name`."""
    if name not in SOURCES:
        raise SourceError(f"negative_source={name!r}; allowed: {', '.join(SOURCES)}")
    return SOURCES[name]()


@torch.no_grad()
def sample(tokenizer, model: nn.Module, request: SourceRequest) -> list[list[list[int]]]:
    """`request.n` answers per prompt from `model` (in eval mode), with the request's settings and seeds (one per
    example when it has them)."""
    with eval_mode(model):
        return generate_negative_ids(model, request.prompts, request.settings, seed=request.seed,
                                     pad_token_id=tokenizer.pad_token_id,
                                     stop_token_ids=stop_token_ids(tokenizer, model),
                                     num_return_sequences=request.n, synced_gpus=False,
                                     prompt_seeds=request.example_seeds or None)


def setup_sources(rows: Sequence[dict], *sources) -> None:
    """Call each source's optional `setup(rows)`: its checks of the rows, before any model is touched."""
    for source in sources:
        if hasattr(source, "setup"):
            source.setup(rows)


def example_key(example: dict) -> str:
    """A tokenized example's identity: its prompt and reference token ids."""
    return hashlib.sha1(repr((list(example["prompt_ids"]), list(example["chosen_ids"]))).encode()).hexdigest()


def cut_suffix(ids: Sequence[int], suffix: Sequence[int]) -> list[int]:
    """`ids` without the end-of-answer tokens `suffix` that TRL's tokenization appended."""
    ids, suffix = list(ids), list(suffix)
    return ids[: len(ids) - len(suffix)] if suffix and ids[-len(suffix):] == suffix else ids
