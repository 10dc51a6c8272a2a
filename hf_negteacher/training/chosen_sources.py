"""Where the chosen side comes from: the same kind of seam as the rejected side (`negative_sources`).

A chosen source gives one answer per example, as token ids without the end-of-answer tokens; the
trainer pairs it with the example's negatives (which are filtered against it). `reference`, the
dataset's own answer, is the default and today's only shipped source; pass your own object as
`NegativeTeacherTrainer(..., chosen_source=...)`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .negative_sources import SourceError, SourceRequest


@runtime_checkable
class ChosenSource(Protocol):
    """Writes the chosen answer of each example; `trainer` gives access to the policy, teacher and tokenizer."""

    name: str

    def answers(self, trainer, request: SourceRequest) -> list[list[int]]:
        """Per example, one chosen answer as token ids (no end-of-turn suffix); `request.n` is 1."""
        ...


class ReferenceSource:
    """The dataset's reference answer (what SFT trains on): the default."""

    name = "reference"

    def answers(self, trainer, request: SourceRequest) -> list[list[int]]:
        return [list(reference) for reference in request.references]


CHOSEN_SOURCES: dict[str, type] = {source.name: source for source in (ReferenceSource,)}
"""The shipped chosen sources by name (the config's `chosen_source`)."""


def chosen_source(name: str) -> ChosenSource:
    """The shipped chosen source called `name`."""
    if name not in CHOSEN_SOURCES:
        raise SourceError(f"chosen_source={name!r}; allowed: {', '.join(CHOSEN_SOURCES)}")
    return CHOSEN_SOURCES[name]()
