"""The teacher during training: rebuilt from the current policy (`teacher_follow_every`), or at another strength
by feedback on the reward accuracy (`teacher_strength_target`). Both rebuild it one way, which drops the old
teacher's packed tensors, so memory does not grow; a followed teacher's packed state travels with checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from ..teacher.build import build_negative_teacher
from ..teacher.follow import policy_weights
from ..teacher.spec import TeacherConfig


class TeacherUpdates:
    """When and how the trainer's teacher changes between optimizer steps."""

    def __init__(self, args, weights: Mapping[str, torch.Tensor] | None) -> None:
        self.args = args
        self.weights = weights
        """The checkpoint's full-precision tensors the teacher is quantized from (None: the policy's own)."""
        self.spec: TeacherConfig = args.teacher_config()
        """The setting in use: the config's, with the strength the feedback has moved it to."""
        self.built_at = 0
        self.adjusted_at = 0
        self.last_reward_accuracy: float | None = None
        """The last training batch's `rewards/accuracies`: the feedback of `teacher_strength_target`."""

    def due(self, step: int) -> tuple[bool, bool]:
        """Whether, before optimizer step `step`, the teacher should follow the policy, and adjust its strength."""
        args = self.args
        follow = bool(args.teacher_follow_every) and step % args.teacher_follow_every == 0 and step != self.built_at
        adjust = (args.teacher_strength_target is not None and step % args.teacher_adjust_every == 0
                  and step != self.adjusted_at)
        return bool(step) and follow, bool(step) and adjust

    def follow(self, trainer) -> None:
        """The checkpoint's weights plus the policy's LoRA delta, quantized with the same setting."""
        policy = trainer.accelerator.unwrap_model(trainer.model)
        self._rebuild(trainer, policy_weights(policy, self.spec, self.weights))
        self.built_at = trainer.state.global_step
        trainer.log_metric("teacher/rebuilt_at_step", float(self.built_at), latest=True)

    def adjust_strength(self, trainer) -> None:
        """While the reward accuracy is above the target the pairs are too easy: step the strength down (toward
        the policy), else back up toward the setting's own; rebuild when it changed."""
        args = self.args
        self.adjusted_at = trainer.state.global_step
        if self.last_reward_accuracy is not None:
            too_easy = self.last_reward_accuracy > args.teacher_strength_target
            target = self.spec.strength + (-1 if too_easy else 1) * args.teacher_strength_step
            strength = round(min(max(target, args.teacher_strength_min), args.teacher_config().strength), 6)
            if strength != self.spec.strength:
                self.spec = dataclasses.replace(self.spec, strength=strength)
                self._rebuild(trainer, self.weights)
        trainer.log_metric("teacher/strength", self.spec.strength, latest=True)

    def state(self) -> dict:
        """What a resumed run needs to continue as the uninterrupted one would (saved with each checkpoint)."""
        return {"strength": self.spec.strength, "built_at": self.built_at, "adjusted_at": self.adjusted_at,
                "last_reward_accuracy": self.last_reward_accuracy}

    def restore(self, trainer, state: Mapping) -> None:
        """Continue from a checkpoint's `state()`: the teacher rebuilt at the saved strength when it differs."""
        self.built_at, self.adjusted_at = state["built_at"], state["adjusted_at"]
        self.last_reward_accuracy = state["last_reward_accuracy"]
        if state["strength"] != self.spec.strength:
            self.spec = dataclasses.replace(self.spec, strength=state["strength"])
            self._rebuild(trainer, self.weights)

    def _rebuild(self, trainer, weights: Mapping[str, torch.Tensor] | None) -> None:
        policy = trainer.accelerator.unwrap_model(trainer.model)
        teacher = build_negative_teacher(policy, config=self.spec, weights=weights)
        trainer.teacher = teacher.to(trainer.accelerator.device)
        trainer.online.cache.clear()  # the old teacher's negatives
