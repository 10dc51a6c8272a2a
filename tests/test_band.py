"""Pairs in the informative band: candidate pairs scored by their implicit reward margin before training."""

import copy
import re

import pytest
import torch
from peft import LoraConfig

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer
from hf_negteacher.data.rows import load_rows
from hf_negteacher.training.band import in_band, pair_margins
from hf_negteacher.training.config import ConfigError

ROWS = load_rows("bundled:train")[:4]


def config(tmp_path, **overrides) -> NegativeTeacherConfig:
    values = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=4,
                  max_length=96, gradient_checkpointing=False, negatives_max_new_tokens=6,
                  teacher="int3,group_size=32", report_to=[], logging_steps=1, save_strategy="no", seed=0, beta=0.5)
    return NegativeTeacherConfig(**{**values, **overrides})


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")


def summed_logprob(model, prompt, answer) -> float:
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)
    return sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(answer))


@pytest.mark.parametrize("loss_type, per_token", [(["sigmoid", "sft"], False), (["sigmoid_norm"], True)])
def test_pair_margins_are_the_dpo_reward_margin_against_the_adapter_free_reference(loss_type, per_token,
                                                                                    tiny_chat_model, smol_tokenizer,
                                                                                    tmp_path):
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, loss_type=loss_type), ROWS,
                                     processing_class=smol_tokenizer, peft_config=lora())
    torch.manual_seed(1)
    for name, parameter in trainer.model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.2)
    prompts, chosen, rejected, suffixes = [[5, 6, 7], [8, 9]], [[10, 11], [12]], [[13], [14, 15, 16]], [[2], [2]]
    margins = pair_margins(trainer, prompts, chosen, rejected, suffixes)
    policy = trainer.model.eval()

    def log_ratio(prompt, answer):
        with policy.disable_adapter():
            off = summed_logprob(policy, prompt, answer)
        return (summed_logprob(policy, prompt, answer) - off) / (len(answer) if per_token else 1)

    for prompt, c, r, s, margin in zip(prompts, chosen, rejected, suffixes, margins, strict=True):
        expected = 0.5 * (log_ratio(prompt, c + s) - log_ratio(prompt, r + s))
        assert margin == pytest.approx(expected, abs=1e-4) and abs(margin) > 1e-3


@pytest.mark.parametrize("band, out", [({"band_max_margin": -0.5}, 1.0),
                                       ({"band_min_margin": -0.5, "band_max_margin": 0.5}, 0.0),
                                       ({"band_min_margin": 0.5}, 1.0)])
def test_candidates_outside_the_band_are_resampled_then_filled(band, out, tiny_chat_model, smol_tokenizer, tmp_path):
    # At step 0 the adapter is zero, so every pair's margin is exactly 0: inside [-0.5, 0.5], outside the others.
    trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), config(tmp_path, **band), ROWS,
                                     processing_class=smol_tokenizer, peft_config=lora())
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["band/filtered_fraction"] == out and log["band/margin_mean"] == pytest.approx(0.0, abs=1e-6)
    assert log["negatives/fallback_fraction"] == out  # nothing in the band after every try: filled, counted
    expected_calls = trainer.args.negatives_max_tries if out else 1
    assert trainer.negative_filter.counts["generated"] == 4 * expected_calls


def test_the_band_filters_prompt_only_pairs_against_the_written_chosen_answer(tiny_chat_model, smol_tokenizer,
                                                                              tmp_path):
    prompts = [{"messages": row["messages"][:1]} for row in ROWS]
    args = config(tmp_path, chosen_source="policy", band_max_margin=-0.5)
    trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), args, prompts, processing_class=smol_tokenizer,
                                     peft_config=lora())
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["band/filtered_fraction"] == 1.0 and log["band/margin_mean"] == pytest.approx(0.0, abs=1e-6)
    assert log["chosen/mean_length"] > 0 and log["negatives/fallback_fraction"] == 1.0
    assert trainer.negative_filter.counts["generated"] == 4 * trainer.args.negatives_max_tries


def test_band_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="band_min_margin=1.0 must be below band_max_margin=0.5"):
        config(tmp_path, band_min_margin=1.0, band_max_margin=0.5)
    with pytest.raises(ConfigError, match="need negatives_mode=online"):
        config(tmp_path, band_max_margin=1.0, negatives_mode="offline")
    assert in_band(0.3, None, 0.5) and not in_band(0.6, None, 0.5) and not in_band(-1.0, -0.5, None)


def test_strength_feedback_moves_the_teacher_toward_the_policy_while_pairs_are_too_easy(tiny_chat_model,
                                                                                      smol_tokenizer, tmp_path):
    from hf_negteacher import build_negative_teacher
    from hf_negteacher.teacher.follow import packed_state
    from hf_negteacher.teacher.spec import TeacherConfig

    args = config(tmp_path, teacher="int3,group_size=32", teacher_strength_target=0.5, teacher_strength_step=0.25,
                  teacher_strength_min=0.5)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, ROWS, processing_class=smol_tokenizer, peft_config=lora())
    seen = []
    for accuracy in (0.9, 0.9, 0.9, 0.2, 0.2):  # too easy x3 (down to the floor), then too hard x2 (up to 1)
        trainer.teacher_updates.last_reward_accuracy = accuracy
        trainer.state.global_step += 1
        trainer.adjust_strength()
        seen.append(trainer.teacher_updates.spec.strength)
        expected = build_negative_teacher(trainer.model, config=TeacherConfig.from_spec(
            f"int3,group_size=32,strength={seen[-1]}"))
        got, want = packed_state(trainer.teacher), packed_state(expected)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert seen == [0.75, 0.5, 0.5, 0.75, 1.0]


def test_strength_feedback_follows_the_logged_reward_accuracy_during_training(tiny_chat_model, smol_tokenizer,
                                                                            tmp_path):
    args = config(tmp_path, max_steps=4, teacher_strength_target=0.5, teacher_adjust_every=1, learning_rate=1e-2)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, ROWS * 4, processing_class=smol_tokenizer,
                                     peft_config=lora())
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    strength = 1.0
    for previous, current in zip(logs[:-1], logs[1:], strict=True):  # step k+1 logs the strength set after step k
        target = strength - 0.1 if previous["rewards/accuracies"] > 0.5 else strength + 0.1
        strength = round(min(max(target, 0.1), 1.0), 6)
        assert current["teacher/strength"] == pytest.approx(strength)
    assert [e["teacher/strength"] for e in logs[1:]] == pytest.approx([1.0, 0.9, 0.8])  # easy pairs: weaker copy
    with pytest.raises(ConfigError, match="teacher_strength_target needs negatives_mode=online"):
        config(tmp_path, teacher_strength_target=0.5, teacher_follow_every=2)
    with pytest.raises(ConfigError, match=r"loss_type=\['sft'\] reads no rejected side"):
        config(tmp_path, teacher_strength_target=0.5, loss_type=["sft"])


def test_modes_that_run_the_policy_outside_the_training_step_refuse_sharded_parameters(tiny_chat_model,
                                                                                      smol_tokenizer, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for overrides, name in (({"band_max_margin": 1.0}, "band_min_margin / band_max_margin"),
                            ({"chosen_source": "policy"}, "chosen_source='policy'"),
                            ({"negative_source": "self"}, "negative_source='self'"),
                            ({"teacher_strength_target": 0.8}, "teacher_strength_target")):
        with pytest.raises(ConfigError, match=f"{re.escape(name)} under FSDP / ZeRO-3"):
            NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, teacher="int3", **overrides), ROWS,
                                   processing_class=smol_tokenizer, peft_config=lora())


def test_strength_feedback_resumed_from_a_checkpoint_continues_as_the_uninterrupted_run(tiny_chat_model,
                                                                                       smol_tokenizer, tmp_path):
    from test_trainer import adapter_state, train_stopped_or_resumed

    def run(folder, stop=None, resume=None):
        args = config(folder, max_steps=4, teacher_strength_target=0.5, teacher_adjust_every=1, learning_rate=1e-2,
                      save_strategy="steps", save_steps=2)
        return train_stopped_or_resumed(copy.deepcopy(tiny_chat_model), args, ROWS * 4, smol_tokenizer, stop, resume)

    whole = run(tmp_path / "whole")
    run(tmp_path / "resumed", stop=2)
    resumed = run(tmp_path / "resumed", resume=True)
    strengths = [e["teacher/strength"] for e in whole.state.log_history if "teacher/strength" in e]
    assert strengths != [1.0] * len(strengths)  # the feedback moved it, so a restart at 1.0 would differ
    assert [e["teacher/strength"] for e in resumed.state.log_history if "teacher/strength" in e] == strengths
    assert resumed.teacher_updates.spec.strength == whole.teacher_updates.spec.strength
    a, b = adapter_state(whole), adapter_state(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
