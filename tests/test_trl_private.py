"""The TRL internals `hf_negteacher/training/trl_private.py` wraps, checked on a plain `trl.DPOTrainer`: when a TRL
release changes one, this fails and names the function there to update."""

import inspect
from collections import defaultdict

import pytest
from datasets import Dataset
from transformers import Trainer
from trl import DPOConfig, DPOTrainer

from hf_negteacher.training import trl_private

ROWS = [{"prompt": "Define cat:", "chosen": " a small feline", "rejected": " a dog"}] * 4


@pytest.fixture(scope="module")
def dpo(tmp_path_factory, smol_tokenizer):
    from test_trainer import lora
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), use_cpu=True, bf16=False, report_to=[],
                     loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], max_length=32)
    return DPOTrainer(model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=smol_tokenizer,
                      peft_config=lora())


def test_step_metrics_are_trls_per_mode_lists(dpo):
    assert {"train", "eval"} <= set(dpo._metrics), "TRL moved DPOTrainer._metrics: update trl_private.step_metrics"
    trl_private.step_metrics(dpo, "train")["probe"].append(1.0)
    assert isinstance(dpo._metrics["train"], defaultdict) and dpo._metrics["train"]["probe"] == [1.0]


def test_the_tokenizer_is_trls_resolved_one(dpo, smol_tokenizer):
    assert trl_private.trainer_tokenizer(dpo) is smol_tokenizer, \
        "TRL renamed DPOTrainer._tokenizer: update trl_private.trainer_tokenizer"


def test_trls_dataset_preparation_keeps_its_signature_and_output_columns(dpo):
    parameters = list(inspect.signature(DPOTrainer._prepare_dataset).parameters)
    assert parameters == ["self", "dataset", "processing_class", "args", "dataset_name"], \
        "TRL changed DPOTrainer._prepare_dataset: update trl_private.tokenize_preference_rows"
    tokenized = trl_private.tokenize_preference_rows(dpo, Dataset.from_list(ROWS), "probe")
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(tokenized.column_names)


def test_trls_loss_loop_reads_its_loss_types_from_the_trainer(dpo):
    assert (dpo.loss_types, dpo.loss_weights) == (["sigmoid", "sft"], [1.0, 0.5]), \
        "TRL stopped keeping loss_types / loss_weights on the trainer: update trl_private.keep_trl_loss_types"
    assert "self.loss_types" in inspect.getsource(DPOTrainer._compute_loss)
    assert hasattr(Trainer, "_set_signature_columns_if_needed")  # NegativeTeacherTrainer extends it


def test_trls_loss_reads_the_reference_logps_from_the_batch_instead_of_a_reference_forward(dpo):
    import torch

    batch = dpo._prepare_inputs(next(iter(dpo.get_train_dataloader())))
    half = batch["input_ids"].shape[0] // 2
    batch["ref_chosen_logps"] = batch["ref_rejected_logps"] = torch.full((half,), -1.0)
    forwards = []
    hook = dpo.model.get_base_model().model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        trl_private.skip_reference_forward(dpo)
        with torch.no_grad():
            dpo.compute_loss(dpo.model, batch)
    finally:
        dpo.precompute_ref_logps = False
        hook.remove()
    assert forwards == [1], "TRL stopped reading DPOTrainer.precompute_ref_logps in _compute_loss: update " \
                            "trl_private.skip_reference_forward"
