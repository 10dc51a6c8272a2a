"""What a negative or chosen source may use while training: a narrow view of the trainer, so a source never
reaches into the trainer's internals (or TRL's)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from trl.models.utils import unwrap_model_for_generation

from .trl_private import tokenize_preference_rows


class SourceContext:
    """The models a source may sample (the teacher as it is at this step, the policy unwrapped for generation),
    the tokenizer, the run's config, and where a chosen source reports its statistics."""

    def __init__(self, trainer) -> None:
        self._trainer = trainer

    @property
    def args(self):
        """The run's `NegativeTeacherConfig`."""
        return self._trainer.args

    @property
    def tokenizer(self):
        return self._trainer.processing_class

    @property
    def teacher(self) -> nn.Module:
        """The packed low-bit copy as it is now (following and strength feedback rebuild it)."""
        return self._trainer.teacher

    @property
    def policy(self) -> nn.Module:
        """The policy without its distributed wrapper, for reading (its source folder, device); generate inside
        `policy_for_generation`."""
        return self._trainer.accelerator.unwrap_model(self._trainer.model)

    @contextmanager
    def policy_for_generation(self) -> Iterator[nn.Module]:
        """The policy, adapter on, ready to generate: TRL's `unwrap_model_for_generation`, as its online trainers
        use it (gradient checkpointing off meanwhile; ZeRO-3's parameters gathered)."""
        trainer = self._trainer
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
                                         ) as policy:
            yield policy

    def count_chosen(self, answers: list[list[int]], complete: list[bool]) -> None:
        """A chosen source's statistics for this batch's log: `chosen/mean_length`, `chosen/cut_off_fraction`."""
        self._trainer.online.count_chosen(answers, complete)

    def tokenize_preference_rows(self, dataset, name: str):
        """Preference rows tokenized as the training rows are (TRL's own DPO preprocessing)."""
        return tokenize_preference_rows(self._trainer, dataset, name)
