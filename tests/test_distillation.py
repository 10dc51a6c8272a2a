"""checkpoint_kd: distillation from the unquantized checkpoint, by hand and inside the trainer."""

import copy
import math

import pytest
import torch
from test_trainer import ROWS, config, lora

from hf_negteacher import NegativeTeacherTrainer
from hf_negteacher.training.config import ConfigError
from hf_negteacher.training.distillation import checkpoint_divergence
from hf_negteacher.training.losses import LOSS_TERMS, reads_rejected

POLICY = torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.7, 0.1]]]).log()
CHECKPOINT = torch.tensor([[[0.1, 0.3, 0.6], [0.3, 0.6, 0.1]]]).log()
LABELS = torch.tensor([[2, -100]])  # the second position is not an answer token


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_forward_and_reverse_kl_equal_the_hand_computed_ones_over_answer_positions():
    policy, checkpoint = [0.5, 0.25, 0.25], [0.1, 0.3, 0.6]
    forward = checkpoint_divergence(POLICY, CHECKPOINT, LABELS, beta=0.0)
    assert forward.item() == pytest.approx(kl(checkpoint, policy), rel=1e-5)
    assert checkpoint_divergence(POLICY, CHECKPOINT, LABELS, beta=1.0).item() == pytest.approx(
        kl(policy, checkpoint), rel=1e-5)
    mixture = [(a + b) / 2 for a, b in zip(policy, checkpoint, strict=True)]
    assert checkpoint_divergence(POLICY, CHECKPOINT, LABELS, beta=0.5).item() == pytest.approx(
        0.5 * kl(checkpoint, mixture) + 0.5 * kl(policy, mixture), rel=1e-5)
    both = checkpoint_divergence(POLICY, CHECKPOINT, torch.tensor([[2, 1]]))
    assert both.item() == pytest.approx((kl(checkpoint, policy) + kl([0.3, 0.6, 0.1], [0.2, 0.7, 0.1])) / 2,
                                        rel=1e-5)


def test_the_term_is_registered_reads_no_rejected_side_and_checks_its_settings(tmp_path):
    assert "checkpoint_kd" in LOSS_TERMS and not reads_rejected(["sft", "checkpoint_kd"])
    with pytest.raises(ConfigError, match="checkpoint_kd_beta=2 must be in"):
        config(tmp_path, loss_type=["sft", "checkpoint_kd"], checkpoint_kd_beta=2.0)


def test_the_checkpoint_as_its_own_student_gives_zero_and_a_moved_adapter_the_kl(tiny_chat_model, smol_tokenizer,
                                                                                   tiny_base_dir, tmp_path):
    args = config(tmp_path, loss_type=["sft", "checkpoint_kd"], loss_weights=[0.0, 1.0],
                  chosen_checkpoint=str(tiny_base_dir))
    trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), args, ROWS, processing_class=smol_tokenizer,
                                     peft_config=lora())
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    term = LOSS_TERMS["checkpoint_kd"]
    half = inputs["input_ids"].shape[0] // 2
    ids, mask = inputs["input_ids"][:half], inputs["attention_mask"][:half]
    positions = inputs["completion_mask"][:half, 1:].bool()

    def student_logits():
        return trainer.model(input_ids=ids, attention_mask=mask).logits[:, :-1]

    with torch.no_grad():
        assert term.compute(trainer, inputs, student_logits)[0].item() == pytest.approx(0.0, abs=1e-6)
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
        moved = term.compute(trainer, inputs, student_logits)[0].item()
        student = student_logits()[positions].log_softmax(-1)
        teacher = tiny_chat_model(input_ids=ids, attention_mask=mask).logits[:, :-1][positions].log_softmax(-1)
        by_hand = (teacher.exp() * (teacher - student)).sum(-1).mean().item()
    assert moved > 0.01 and moved == pytest.approx(by_hand, rel=1e-4)
    assert trainer.train().training_loss > 0 and "checkpoint_kd/loss" in trainer.state.log_history[0]


def test_every_benchmark_method_is_a_valid_config(tmp_path):
    """The recovery arms (distillation, QDPO) included: a typo in a method's fields fails here, not an hour in."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from quality_runs import METHOD_FIELDS, METHODS

    assert set(METHOD_FIELDS) <= set(METHODS) and {"po_checkpoint_kd", "po_checkpoint_qdpo"} <= set(METHOD_FIELDS)
    for method, fields in METHOD_FIELDS.items():
        config(tmp_path / method, **fields)


def test_the_trl_distillation_arm_trains_the_policys_adapter_toward_the_checkpoint(tiny_base_dir, smol_tokenizer,
                                                                                  tmp_path):
    """`trl.DistillationTrainer` as the benchmark runs it (on-policy, the checkpoint as teacher) takes a LoRA policy
    and the unquantized checkpoint: the arm cannot fail an hour into a benchmark."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_quality import load_policy, train_trl_distill

    from hf_negteacher.data.rows import load_rows

    trainer = train_trl_distill(load_policy(str(tiny_base_dir), nf4=True), smol_tokenizer,
                                load_rows("bundled:reverse-train")[:4], seed=0, steps=1, work=tmp_path / "run",
                                source=str(tiny_base_dir), max_completion_length=4)
    assert getattr(trainer.model.get_base_model(), "is_loaded_in_4bit", False)  # the NF4 student, with its adapter
    trainer.train()
    moved = [p for n, p in trainer.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved and trainer.state.log_history[-1]["train_loss"] > 0
