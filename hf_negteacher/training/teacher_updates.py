"""The teacher during training: rebuilt from the current policy (`teacher_follow_every`), or at another strength
by feedback on the reward accuracy (`teacher_strength_target`). Both rebuild it one way, which drops the old
teacher's packed tensors, so memory does not grow. A `TrainerCallback`, as TRL's `SyncRefModelCallback` updates
its reference model: it acts at the start of an optimizer step and writes its state into each checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..atomic_write import atomic_write_json
from ..teacher.build import build_negative_teacher
from ..teacher.follow import load_teacher_state, policy_weights, save_teacher_state
from ..teacher.spec import TeacherConfig

logger = logging.getLogger(__name__)

STATE_FILE = "negteacher_teacher_updates.json"
"""In each checkpoint: the strength, the steps of the last rebuild and adjustment, the last reward accuracy."""


class TeacherUpdates(TrainerCallback):
    """When and how `trainer`'s teacher changes between optimizer steps."""

    def __init__(self, trainer, weights: Mapping[str, torch.Tensor] | None) -> None:
        self.trainer = trainer
        self.args = trainer.args
        self.weights = weights
        """The checkpoint's full-precision tensors the teacher is quantized from (None: the policy's own)."""
        self.spec: TeacherConfig = self.args.teacher_config()
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

    def on_step_begin(self, args, state, control, **kwargs):
        follow, adjust = self.due(state.global_step)
        if follow:
            self.trainer.follow_policy()
        if adjust:
            self.trainer.adjust_strength()

    def follow(self) -> None:
        """The checkpoint's weights plus the policy's LoRA delta, quantized with the same setting."""
        trainer = self.trainer
        self._rebuild(policy_weights(trainer.accelerator.unwrap_model(trainer.model), self.spec, self.weights))
        self.built_at = trainer.state.global_step
        trainer.log_metric("teacher/rebuilt_at_step", float(self.built_at), latest=True)

    def adjust_strength(self) -> None:
        """While the reward accuracy is above the target the pairs are too easy: step the strength down (toward
        the policy), else back up toward the setting's own; rebuild when it changed."""
        args = self.args
        self.adjusted_at = self.trainer.state.global_step
        if self.last_reward_accuracy is not None:
            too_easy = self.last_reward_accuracy > args.teacher_strength_target
            target = self.spec.strength + (-1 if too_easy else 1) * args.teacher_strength_step
            strength = round(min(max(target, args.teacher_strength_min), args.teacher_config().strength), 6)
            if strength != self.spec.strength:
                self.spec = dataclasses.replace(self.spec, strength=strength)
                self._rebuild(self.weights)
        self.trainer.log_metric("teacher/strength", self.spec.strength, latest=True)

    def on_save(self, args, state, control, **kwargs):
        """Beside the checkpoint the Trainer has just written: what a resumed run needs to continue as the
        uninterrupted one would."""
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            atomic_write_json(folder / STATE_FILE, {
                "strength": self.spec.strength, "built_at": self.built_at, "adjusted_at": self.adjusted_at,
                "last_reward_accuracy": self.last_reward_accuracy})
            if args.teacher_follow_every:
                save_teacher_state(self.trainer.teacher, folder)

    def restore(self, folder: Path) -> None:
        """Continue from the checkpoint in `folder`: a followed teacher's packed state, and the feedback's state
        (the teacher rebuilt at the saved strength when it differs)."""
        if self.args.teacher_follow_every and load_teacher_state(self.trainer.teacher, folder):
            logger.info("teacher: restored the followed teacher from %s", folder)
        if not (folder / STATE_FILE).is_file():
            return
        state = json.loads((folder / STATE_FILE).read_text())
        self.built_at, self.adjusted_at = state["built_at"], state["adjusted_at"]
        self.last_reward_accuracy = state["last_reward_accuracy"]
        if state["strength"] != self.spec.strength:
            self.spec = dataclasses.replace(self.spec, strength=state["strength"])
            self._rebuild(self.weights)

    def _rebuild(self, weights: Mapping[str, torch.Tensor] | None) -> None:
        trainer = self.trainer
        teacher = build_negative_teacher(trainer.accelerator.unwrap_model(trainer.model), config=self.spec,
                                         weights=weights)
        trainer.teacher = teacher.to(trainer.accelerator.device)
        trainer.online.cache.clear()  # the old teacher's negatives
