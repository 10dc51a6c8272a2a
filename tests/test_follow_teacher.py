"""A teacher that follows the policy: rebuilt from the checkpoint's weights plus the LoRA delta."""

import copy
import gc
import weakref
from collections.abc import Mapping

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, build_negative_teacher, memory_report
from hf_negteacher.data.rows import load_rows
from hf_negteacher.teacher.follow import TEACHER_STATE, packed_state, policy_weights
from hf_negteacher.teacher.spec import TeacherConfig
from hf_negteacher.training.config import ConfigError

ROWS = load_rows("bundled:train")[:8]
SPEC = "int3,group_size=32"


def config(tmp_path, **overrides) -> NegativeTeacherConfig:
    values = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=2, per_device_train_batch_size=4,
                  max_length=96, gradient_checkpointing=False, negatives_max_new_tokens=6, teacher=SPEC,
                  report_to=[], logging_steps=1, save_strategy="no", seed=0, teacher_follow_every=1)
    return NegativeTeacherConfig(**{**values, **overrides})


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")


def teacher_of_merged(policy) -> dict[str, torch.Tensor]:
    """The expected teacher, computed apart: PEFT merges the adapter into a copy, which is then quantized."""
    merged = copy.deepcopy(policy).merge_and_unload()
    return packed_state(build_negative_teacher(merged, config=TeacherConfig.from_spec(SPEC)))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_policy_weights_are_the_checkpoint_plus_the_merged_lora_delta(tiny_chat_model):
    policy = get_peft_model(copy.deepcopy(tiny_chat_model), lora())
    torch.manual_seed(1)
    for name, parameter in policy.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.05)
    weights = policy_weights(policy, TeacherConfig.from_spec(SPEC))
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert len(weights) == 2 * 7  # every linear of both blocks
    for key, weight in weights.items():
        torch.testing.assert_close(weight, merged[key], rtol=0, atol=1e-6)
        assert not torch.equal(weight, tiny_chat_model.state_dict()[key])  # the delta is in


class HeldCount(Mapping):
    """Reads through to `weights` and counts, at each read, how many tensors it handed out are still alive."""

    def __init__(self, weights):
        self.weights, self.handed, self.most_alive = weights, weakref.WeakSet(), 0

    def __getitem__(self, key):
        gc.collect()
        self.most_alive = max(self.most_alive, len(self.handed))
        tensor = self.weights[key]
        self.handed.add(tensor)
        return tensor

    def __contains__(self, key):
        return key in self.weights

    def __iter__(self):
        return iter(self.weights)

    def __len__(self):
        return len(self.weights)


def test_a_rebuild_holds_one_merged_layer_at_a_time(tiny_chat_model):
    """Merged weights are made as the teacher reads them and dropped once packed, not all held at once."""
    from peft.tuners.lora import Linear as LoraLinear

    policy = get_peft_model(copy.deepcopy(tiny_chat_model), lora())
    calls, delta = [], LoraLinear.get_delta_weight
    LoraLinear.get_delta_weight = lambda layer, adapter: calls.append(adapter) or delta(layer, adapter)
    try:
        weights = HeldCount(policy_weights(policy, TeacherConfig.from_spec(SPEC)))
        assert calls == []  # nothing merged before the teacher asks
        teacher = build_negative_teacher(policy, config=TeacherConfig.from_spec(SPEC), weights=weights)
    finally:
        LoraLinear.get_delta_weight = delta
    assert len(calls) == 2 * 7 and memory_report(teacher)["quantized_layers"] == 2 * 7
    assert weights.most_alive <= 1  # at most the layer just packed is alive when the next is read, not all 14


class Snapshot(TrainerCallback):
    """The teacher's packed state at the end of each step."""

    def __init__(self, trainer) -> None:
        self.trainer, self.states = trainer, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.states[state.global_step] = packed_state(self.trainer.teacher)


def test_the_rebuilt_teacher_is_the_quantized_merged_policy_and_memory_does_not_grow(tiny_chat_model,
                                                                                     smol_tokenizer, tmp_path):
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, max_steps=3, logging_steps=3), ROWS,
                                     processing_class=smol_tokenizer, peft_config=lora())
    start, own = packed_state(trainer.teacher), memory_report(trainer.teacher)["own_total"]
    old = [weakref.ref(trainer.teacher)]
    expected, follow = {}, trainer.follow_policy

    def checked_follow():
        policy = trainer.accelerator.unwrap_model(trainer.model)
        expected[trainer.state.global_step] = teacher_of_merged(policy)
        old.append(weakref.ref(trainer.teacher))
        follow()

    trainer.follow_policy = checked_follow
    snapshot = Snapshot(trainer)
    trainer.add_callback(snapshot)
    trainer.train()
    assert sorted(expected) == [1, 2]  # rebuilt before the second and the third step
    for step in (1, 2):
        assert same(snapshot.states[step + 1], expected[step])
    assert not same(snapshot.states[2], start) and not same(snapshot.states[3], snapshot.states[2])
    assert same(snapshot.states[1], start)  # the first step trains against the starting weights' teacher
    assert memory_report(trainer.teacher)["own_total"] == own
    gc.collect()
    assert all(ref() is None for ref in old)  # the replaced teachers are gone
    rebuilt = [e["teacher/rebuilt_at_step"] for e in trainer.state.log_history if "teacher/rebuilt_at_step" in e]
    assert rebuilt == [2.0]  # both rebuilds fall in one logging interval: the latest, not their mean


class StopAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_a_resumed_run_continues_with_the_followed_teacher(tiny_chat_model, smol_tokenizer, tmp_path):
    model_b = copy.deepcopy(tiny_chat_model)
    args = dict(max_steps=4, teacher_follow_every=2, save_strategy="steps", save_steps=3)
    whole = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path / "whole", **args), ROWS,
                                   processing_class=smol_tokenizer, peft_config=lora())
    whole.train()
    folder = tmp_path / "resumed"
    first = NegativeTeacherTrainer(copy.deepcopy(model_b), config(folder, **args), ROWS,
                                   processing_class=smol_tokenizer, peft_config=lora())
    first.add_callback(StopAfter(3))
    first.train()
    assert (folder / "checkpoint-3" / TEACHER_STATE).is_file()
    at_checkpoint = packed_state(first.teacher)  # rebuilt at step 2
    resumed = NegativeTeacherTrainer(model_b, config(folder, **args), ROWS, processing_class=smol_tokenizer,
                                     peft_config=lora())
    fresh = packed_state(resumed.teacher)
    assert not same(fresh, at_checkpoint)
    resumed.train(resume_from_checkpoint=str(folder / "checkpoint-3"))
    assert same(packed_state(resumed.teacher), at_checkpoint)  # step 4 does not rebuild: the restored one
    assert same(packed_state(whole.teacher), at_checkpoint)


@pytest.mark.parametrize("overrides, message", [
    ({"teacher_follow_every": -1}, "teacher_follow_every=-1"),
    ({"negatives_mode": "offline"}, "teacher_follow_every needs negatives_mode=online"),
    ({"teacher": "int3,strength=0.5"}, "a strength below 1"),
])
def test_bad_follow_settings_are_rejected(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, **overrides)
