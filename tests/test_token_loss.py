"""teacher_unlikelihood: the token-level negative loss, by hand and inside the trainer."""

import copy
import math

import pytest
import torch
from test_trainer import ROWS, config, lora

from hf_negteacher import NegativeTeacherTrainer
from hf_negteacher.training.config import ConfigError
from hf_negteacher.training.losses import LOSS_TERMS, split_loss_types
from hf_negteacher.training.token_loss import teacher_unlikelihood

POLICY = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.7, 0.1]]).log()
TEACHER = torch.tensor([[0.1, 0.3, 0.6], [0.3, 0.6, 0.1]]).log()
LABELS = torch.tensor([0, 1])


def test_top1_pushes_down_the_teachers_guess_only_where_it_is_wrong():
    loss, stats = teacher_unlikelihood(POLICY, TEACHER, LABELS, top_k=1)
    # position 0: teacher guesses 2 (wrong), policy gives it 0.25; position 1: teacher guesses the reference
    assert loss.item() == pytest.approx(-math.log(0.75) / 2)
    assert stats["teacher_wrong"].item() == 0.5
    assert stats["negative_prob"].item() == pytest.approx(0.25)


def test_top2_adds_the_second_guess_and_skips_the_reference_token():
    loss, stats = teacher_unlikelihood(POLICY, TEACHER, LABELS, top_k=2)
    # position 0: tokens 2 and 1 (0.25 each); position 1: token 0 (0.2), token 1 is the reference
    assert loss.item() == pytest.approx((-2 * math.log(0.75) - math.log(0.8)) / 2)
    assert stats["negative_prob"].item() == pytest.approx(0.7 / 3)


def test_gradient_lowers_the_pushed_down_token():
    policy = POLICY.clone().requires_grad_()
    teacher_unlikelihood(policy, TEACHER, LABELS, top_k=1)[0].backward()
    assert policy.grad[0, 2] > 0 and policy.grad[0, 0] < 0  # descent lowers token 2, raises the others
    assert torch.all(policy.grad[1] == 0)


def test_split_keeps_trls_types_and_weights_in_order():
    assert split_loss_types(["sigmoid", "teacher_unlikelihood", "sft"], [1.0, 0.3, 0.5]) == (
        ["sigmoid", "sft"], [1.0, 0.5], [(LOSS_TERMS["teacher_unlikelihood"], 0.3)])
    assert split_loss_types(["sft"], [1.0]) == (["sft"], [1.0], [])


@pytest.mark.parametrize("overrides, message", [
    ({"loss_type": ["teacher_unlikelihood"]}, "add a loss that pulls the reference up"),
    ({"loss_type": ["sft", "teacher_unlikelihood"], "teacher_token_top_k": 0}, "teacher_token_top_k=0"),
])
def test_bad_token_loss_config_is_named(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, **overrides)


def token_loss_on_first_batch(trainer):
    """teacher_unlikelihood of the trainer's model on the chosen half of its first batch, computed here."""
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    half = inputs["input_ids"].shape[0] // 2
    ids, mask = inputs["input_ids"][:half], inputs["attention_mask"][:half]
    positions = inputs["completion_mask"][:half, 1:].bool()
    with torch.no_grad():
        policy = trainer.model(input_ids=ids, attention_mask=mask).logits[:, :-1][positions]
        teacher = trainer.teacher(input_ids=ids, attention_mask=mask).logits[:, :-1][positions]
    return teacher_unlikelihood(policy, teacher, ids[:, 1:][positions])


def test_trainer_adds_the_weighted_token_loss_to_trls_and_generates_nothing(tiny_chat_model, smol_tokenizer,
                                                                             tmp_path):
    def trainer(name, **overrides):
        return NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), config(tmp_path / name, **overrides), ROWS,
                                      processing_class=smol_tokenizer, peft_config=lora())

    sft = trainer("sft", loss_type=["sft"])
    both = trainer("both", loss_type=["sft", "teacher_unlikelihood"], loss_weights=[1.0, 2.0])
    inputs = both._prepare_inputs(next(iter(both.get_train_dataloader())))
    with torch.no_grad():
        difference = both.compute_loss(both.model, inputs) - sft.compute_loss(sft.model, inputs)
    expected, _ = token_loss_on_first_batch(both)
    assert expected.item() > 0
    assert difference.item() == pytest.approx(2.0 * expected.item(), rel=2e-2)  # float32 noise of the sft term

    both.args.max_steps = 2
    both.train()
    assert both.online.generation_calls == 0
    assert any(p.abs().sum() > 0 for n, p in both.model.named_parameters() if "lora_B" in n)  # it trained
    logs = [entry for entry in both.state.log_history if "loss" in entry]
    assert 0 < logs[0]["teacher_unlikelihood/teacher_wrong"] <= 1


def test_token_loss_lowers_the_teachers_guesses_more_than_sft(tiny_chat_model, smol_tokenizer, tmp_path):
    def trained_negative_prob(name, loss_type, loss_weights):
        # The untrained tiny model spreads ~3e-5 over every token: only a large weight makes the term count.
        args = config(tmp_path / name, loss_type=loss_type, loss_weights=loss_weights, max_steps=6,
                      learning_rate=5e-3)
        trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), args, ROWS, processing_class=smol_tokenizer,
                                         peft_config=lora())
        trainer.train()
        return token_loss_on_first_batch(trainer)[1]["negative_prob"].item()

    with_token_loss = trained_negative_prob("ul", ["sft", "teacher_unlikelihood"], [1.0, 1e4])
    assert with_token_loss < 0.9 * trained_negative_prob("sft", ["sft"], None)


def test_a_registered_loss_term_is_added_with_its_weight_without_touching_trainer_or_config(
        tiny_chat_model, smol_tokenizer, tmp_path):
    from hf_negteacher.training.losses import LossTerm, register_loss

    def constant(trainer, inputs, chosen_logits):
        return torch.tensor(1.5), {"seen": torch.tensor(1.0)}

    register_loss(LossTerm("test_constant", constant, reads_rejected=False, pulls_reference_up=False))
    try:
        with pytest.raises(ConfigError, match=r"test_constant only push tokens down"):
            config(tmp_path, loss_type=["test_constant"])
        sft = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), config(tmp_path / "a", loss_type=["sft"]), ROWS,
                                     processing_class=smol_tokenizer, peft_config=lora())
        args = config(tmp_path / "b", loss_type=["sft", "test_constant"], loss_weights=[1.0, 2.0])
        both = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), args, ROWS, processing_class=smol_tokenizer,
                                      peft_config=lora())
        inputs = both._prepare_inputs(next(iter(both.get_train_dataloader())))
        with torch.no_grad():
            difference = both.compute_loss(both.model, inputs) - sft.compute_loss(sft.model, inputs)
        assert difference.item() == pytest.approx(3.0, abs=1e-3)
        assert both._metrics["train"]["test_constant/seen"] == [1.0] and not both.online.uses_negatives
    finally:
        LOSS_TERMS.pop("test_constant")


def test_the_terms_read_the_policy_logits_from_trls_forward_instead_of_running_a_second_one(
        tiny_chat_model, smol_tokenizer, tiny_base_dir, tmp_path):
    # Before, each term ran its own policy forward: three backbone forwards with gradient per step here, and with
    # re-entrant checkpointing under DDP a second graph over the same parameters.
    args = config(tmp_path, loss_type=["sigmoid", "sft", "teacher_unlikelihood", "checkpoint_kd"],
                  loss_weights=[1.0, 1.0, 1.0, 1.0], chosen_checkpoint=str(tiny_base_dir))
    trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), args, ROWS, processing_class=smol_tokenizer,
                                     peft_config=lora())
    with torch.no_grad():
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a policy away from its reference and the checkpoint
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    backbone = trainer.model.get_base_model().model
    with_gradient = []
    hook = backbone.register_forward_hook(lambda *_: with_gradient.append(torch.is_grad_enabled()))
    try:
        loss = trainer.compute_loss(trainer.model, inputs)
    finally:
        hook.remove()
    assert with_gradient == [True, False]  # the policy's forward (TRL's) and the reference's, nothing else
    # The same terms on logits from a separate full forward of the policy: the values the old code computed.
    half = inputs["input_ids"].shape[0] // 2
    with torch.no_grad():
        logits = trainer.model(input_ids=inputs["input_ids"][:half],
                               attention_mask=inputs["attention_mask"][:half]).logits[:, :-1]
    metrics = trainer._metrics["train"]
    for name in ("teacher_unlikelihood", "checkpoint_kd"):
        expected = LOSS_TERMS[name].compute(trainer, inputs, lambda: logits)[0].item()
        assert metrics[f"{name}/loss"][-1] == pytest.approx(expected, rel=1e-4) and expected > 0
    loss.backward()  # one graph: the terms' gradients reach the adapter through TRL's forward
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainer.model.named_parameters()
               if "lora_A" in n and "layers.0." in n)


def test_a_loss_that_reads_no_reference_skips_the_reference_forward_and_trains_the_same_adapter(
        tiny_chat_model, smol_tokenizer, tmp_path):
    from test_trainer import adapter_state, trained

    def run(folder, reference_forward: bool):
        trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), config(folder, loss_type=["sft"], max_steps=2,
                                                                                learning_rate=1e-2),
                                         ROWS, processing_class=smol_tokenizer, peft_config=lora())
        if reference_forward:  # what TRL does on its own
            trainer.skips_reference = trainer.precompute_ref_logps = False
        backbone = trainer.model.get_base_model().model
        trainer.forwards = []
        hook = backbone.register_forward_hook(lambda *_: trainer.forwards.append(torch.is_grad_enabled()))
        try:
            trainer.train()
        finally:
            hook.remove()
        return trainer

    skipping, reference = run(tmp_path / "skipping", False), run(tmp_path / "reference", True)
    assert skipping.forwards == [True] * 2 and reference.forwards == [True, False] * 2  # the policy's, the reference's
    a, b = adapter_state(skipping), adapter_state(reference)
    assert trained(skipping) and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    skipped_logs, reference_logs = skipping.state.log_history[0], reference.state.log_history[0]
    assert skipped_logs["loss"] == reference_logs["loss"] and "rewards/accuracies" in reference_logs
    assert not [name for name in skipped_logs if name.startswith("rewards/")]
