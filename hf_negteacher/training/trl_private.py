"""The TRL internals this package relies on, each behind one function. Checked against TRL 1.16.0 (the tested
version of the pinned range); `tests/test_trl_private.py` builds a plain `trl.DPOTrainer` and fails, naming the
function here to update, when a TRL release changes one of them. One more reliance lives where it is used:
`policy_logits.ChosenLogits` keeps the first backbone output inside `DPOTrainer._compute_loss`, the policy's (its
reference forward comes after); `test_token_loss` fails when that order or the number of forwards changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .losses import LossTerm


def step_metrics(trainer, mode: str | None = None) -> dict[str, list[float]]:
    """The values TRL averages into its next log line (`DPOTrainer._metrics[mode]`, lists by name) for `mode`
    ("train" or "eval"; default: the mode the model is in)."""
    return trainer._metrics[mode or ("train" if trainer.model.training else "eval")]


def trainer_tokenizer(trainer):
    """The tokenizer TRL resolved from `processing_class` (`DPOTrainer._tokenizer`; a processor's own tokenizer)."""
    return trainer._tokenizer


def tokenize_preference_rows(trainer, dataset, name: str):
    """Preference rows tokenized by TRL's own DPO preprocessing (`DPOTrainer._prepare_dataset`), as the
    training rows are."""
    return trainer._prepare_dataset(dataset, trainer.processing_class, trainer.args, name)


def keep_trl_loss_types(trainer) -> list[tuple[LossTerm, float]]:
    """Leave TRL's loss loop its own loss types (`DPOTrainer.loss_types` / `loss_weights`, read from the config
    in its `__init__`) and return the registered terms with their weights, which `compute_loss` adds."""
    from .losses import split_loss_types  # losses -> distillation -> chosen_sources -> negative_sources -> here

    trainer.loss_types, trainer.loss_weights, terms = split_loss_types(trainer.loss_types, trainer.loss_weights)
    return terms


def skip_reference_forward(trainer) -> None:
    """Make TRL's `_compute_loss` take the reference log-probs from the batch (`ref_chosen_logps`,
    `ref_rejected_logps`), as with `precompute_ref_log_probs` (`DPOTrainer.precompute_ref_logps`, read from the
    config in its `__init__`), instead of running the reference forward: the caller puts them in every batch."""
    trainer.precompute_ref_logps = True
