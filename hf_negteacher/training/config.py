"""`NegativeTeacherConfig`: TRL's `DPOConfig` plus the negative teacher and its negatives."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from trl import DPOConfig

from ..generation import GenerationSettings
from ..teacher.spec import TeacherConfig, TeacherConfigError
from .chosen_sources import CHOSEN_SOURCES
from .distillation import CHECKPOINT_KD
from .filters import NegativeFilter
from .losses import check_loss_types, reads_rejected
from .negative_sources import SOURCES

NEGATIVES_MODES = ("online", "offline")
DEFAULT_TEACHER = "int3,blocks=0-14"
LEGACY_TEACHER_DEFAULTS = {"teacher_quantizer": "int3", "teacher_granularity": None, "teacher_group_size": 64,
                           "teacher_blocks": list(range(15)), "teacher_strength": 1.0,
                           "teacher_activation_bits": None}
"""The teacher fields before `teacher`, with their defaults (which give DEFAULT_TEACHER)."""


class ConfigError(ValueError):
    """A NegativeTeacherConfig field is invalid; the message names it."""


@dataclass
class NegativeTeacherConfig(DPOConfig):
    """Every `trl.DPOConfig` option, plus how the low-bit teacher is built and how it generates.

    Defaults that differ from `DPOConfig`: `loss_type=["sigmoid", "sft"]` (the reference is a real
    answer, so the SFT term on the chosen side is kept, as in RPO), `learning_rate=2e-4` (LoRA) and
    `bf16` only where a GPU supports it.
    """

    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate (LoRA scale)."})
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid", "sft"], metadata={
        "help": "TRL DPO loss types, combined with `loss_weights`; default: DPO sigmoid + SFT on the reference. "
                "Also teacher_unlikelihood: the teacher's likeliest wrong next tokens on the reference, pushed "
                "down (no generation; needs another loss type beside it, e.g. [sft, teacher_unlikelihood]); and "
                "checkpoint_kd: distillation from the unquantized checkpoint (chosen_checkpoint) on the chosen "
                "answer ([sft, checkpoint_kd] with loss_weights [0, 1]: distillation alone)."})
    checkpoint_kd_beta: float = field(default=0.0, metadata={
        "help": "checkpoint_kd (distillation from the unquantized checkpoint's next-token distribution on the chosen "
                "answer): 0 forward KL(checkpoint || policy), 1 reverse KL, between them the generalized JSD."})
    checkpoint_kd_temperature: float = field(default=1.0, metadata={
        "help": "checkpoint_kd: both distributions at this softmax temperature."})
    teacher_token_top_k: int = field(default=1, metadata={
        "help": "teacher_unlikelihood: the teacher's k most likely next tokens at each reference position (the "
                "reference token excepted) are pushed down."})

    teacher: str | None = field(default=None, metadata={
        "help": "The negative teacher as one setting, `quantizer[,field=value...]`, the string `negteacher calibrate` "
                "prints: quantizer ternary, binary, int2, int3 or int4; fields granularity (tensor/channel/group), "
                "group_size, blocks (e.g. 0-14+20; omitted: all), strength (lambda in W + lambda (Q(W) - W)), "
                f"activation_bits. Default: {DEFAULT_TEACHER} (about 2.7x the policy's perplexity on SmolLM2-135M)."})
    teacher_quantizer: str = field(default="int3", metadata={
        "help": "Deprecated (one more release): use `teacher`. Low-bit quantizer of the teacher."})
    teacher_granularity: str | None = field(default=None, metadata={
        "help": "Deprecated (one more release): use `teacher`. Scale granularity: tensor, channel or group."})
    teacher_group_size: int = field(default=64, metadata={
        "help": "Deprecated (one more release): use `teacher`. Columns per scale when granularity is group."})
    teacher_blocks: list[int] | None = field(default_factory=lambda: list(range(15)), metadata={
        "help": "Deprecated (one more release): use `teacher`. Decoder blocks to quantize; empty/None: all."})
    teacher_strength: float = field(default=1.0, metadata={
        "help": "Deprecated (one more release): use `teacher`. lambda in W + lambda (Q(W) - W), in (0, 1]."})
    teacher_activation_bits: int | None = field(default=None, metadata={
        "help": "Deprecated (one more release): use `teacher`. Per-token activation bits (0: off)."})
    teacher_dequantize_once: bool | None = field(default=None, metadata={
        "help": "Dequantize the packed layers once per generate call rather than at every decoding step: about "
                "1.6x faster teacher generation on CPU, at the price of a transient full-precision copy of those "
                "layers (default: always on the CPU; on a GPU when its free memory holds that copy twice over, "
                "measured and logged)."})

    teacher_follow_every: int = field(default=0, metadata={
        "help": "Rebuild the teacher from the current policy every N optimizer steps: the checkpoint's weights plus "
                "the LoRA delta, quantized with the same setting (the opponent follows the model, as in SPIN). 0: "
                "a fixed crippled copy of the starting weights. Its packed state is saved in every checkpoint."})
    teacher_strength_target: float | None = field(default=None, metadata={
        "help": "Move the teacher's strength by feedback every teacher_adjust_every steps: while the batch's reward "
                "accuracy is above this target the pairs are too easy, so the teacher moves toward the policy "
                "(strength - teacher_strength_step, down to teacher_strength_min); below it, back toward its setting "
                "(at most the setting's strength). Logged as teacher/strength. None: a fixed strength."})
    teacher_strength_step: float = field(default=0.1, metadata={"help": "Strength change per adjustment."})
    teacher_strength_min: float = field(default=0.1, metadata={"help": "The lowest strength feedback may reach."})
    teacher_adjust_every: int = field(default=5, metadata={"help": "Optimizer steps between strength adjustments."})
    negative_source: str = field(default="teacher", metadata={
        "help": "Online: where the rejected answers come from: teacher (samples of the low-bit copy), self (the "
                "policy's own samples, adapter on), in_batch (other rows' references in the batch) or dataset (the "
                "rows' own `rejected` answers)."})
    chosen_source: str = field(default="reference", metadata={
        "help": "Where the chosen answers come from: reference (the dataset's answer), policy (the policy's own "
                "answer, adapter on; offline: as it is before training) or checkpoint (the answer of the model loaded "
                "from the unquantized checkpoint, chosen_checkpoint); with the last two, rows may be prompts alone."})
    chosen_checkpoint: str | None = field(default=None, metadata={
        "help": "chosen_source=checkpoint and checkpoint_kd: the model to load, unquantized (default: the policy's "
                "own source); it must share the policy's vocabulary."})
    chosen_num_samples: int = field(default=1, metadata={
        "help": "chosen_source=policy or checkpoint: 1, the greedy answer; n > 1, the best of n samples "
                "(negatives_temperature, top_p, top_k) by that model's length-normalized log-probability, complete "
                "answers first."})
    chosen_max_new_tokens: int | None = field(default=None, metadata={
        "help": "chosen_source=policy or checkpoint: maximum length of a chosen answer (default: "
                "negatives_max_new_tokens). An answer cut off at the limit teaches the policy to ramble: set it "
                "above the answers you expect (chosen/cut_off_fraction says how many ran to it)."})
    band_min_margin: float | None = field(default=None, metadata={
        "help": "Online: a candidate pair whose implicit reward margin beta [(log pi - log pi_ref)(chosen) - (same)"
                "(rejected)] under the current policy (each side per token under loss_type [sigmoid_norm]) is below "
                "this is too hard: resampled like a filtered negative (None: no lower bound)."})
    band_max_margin: float | None = field(default=None, metadata={
        "help": "Online: a candidate pair already separated by more than this margin teaches little (sigmoid(-margin) "
                "weights its gradient): resampled like a filtered negative (None: no upper bound). Logged: "
                "band/filtered_fraction, band/margin_mean."})
    negatives_mode: str = field(default="online", metadata={
        "help": "online: the teacher generates rejected answers inside the training loop; offline: a preference "
                "dataset is generated once before training (see `negteacher generate`)."})
    num_negatives: int = field(default=1, metadata={"help": "Teacher negatives (pairs) per prompt."})
    refresh_every: int = field(default=1, metadata={
        "help": "Online: reuse a prompt's cached negatives for this many optimizer steps before regenerating."})
    negatives_max_new_tokens: int = field(default=48, metadata={"help": "Maximum length of a negative."})
    negatives_temperature: float = field(default=0.7, metadata={"help": "Teacher sampling temperature (0: greedy)."})
    negatives_top_p: float = field(default=0.95, metadata={"help": "Teacher nucleus sampling."})
    negatives_top_k: int = field(default=0, metadata={"help": "Teacher top-k sampling (0: off)."})
    negatives_seed: int | None = field(default=None, metadata={
        "help": "Seed of the teacher's sampling (default: seed)."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per teacher generate call."})
    negatives_lookahead: int = field(default=1, metadata={
        "help": "Online, where the negatives depend on neither the policy nor the batch (a fixed teacher or the "
                "dataset's rejected answers, the reference as chosen, no band): generate them this many optimizer "
                "steps ahead, in calls of generation_batch_size prompts across micro-batches and steps. Each "
                "example draws from its own seed, so the pairs are the same whatever the lookahead. 0: each "
                "micro-batch generates its own negatives."})
    negatives_max_tries: int = field(default=3, metadata={
        "help": "Online: tries per prompt (the first + resamples) to get num_negatives that pass the filters "
                "(a source that samples each prompt from its own seeds draws every resample in one call); still "
                "short after that, filtered candidates fill the gap (logged as "
                "negatives/fallback_fraction). Every prompt always gets exactly num_negatives pairs, so every "
                "process trains on the same number of pairs."})
    filter_empty: bool = field(default=True, metadata={"help": "Drop empty negatives."})
    filter_equal_to_reference: bool = field(default=True, metadata={"help": "Drop negatives equal to the reference."})
    filter_duplicates: bool = field(default=True, metadata={"help": "Drop repeated negatives of the same prompt."})
    keep_dataset_rejected: bool = field(default=False, metadata={
        "help": "A dataset's own `rejected` answers are kept as extra pairs beside the teacher's."})
    negatives_path: str | None = field(default=None, metadata={
        "help": "Offline: the generated preference dataset (JSONL); default: <output_dir>/negatives.jsonl."})

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16:  # TRL turns bf16 on by default, which fails on CPU-only machines
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if self.ddp_find_unused_parameters is None and self.gradient_checkpointing:
            # What `Trainer` decides for a PreTrainedModel; a PEFT policy is not one and would get True, which
            # re-entrant checkpointing under DDP rejects ("marked ready twice"). Every adapter weight is used.
            self.ddp_find_unused_parameters = False
        super().__post_init__()
        if self.negative_source not in SOURCES:
            raise ConfigError(f"negative_source={self.negative_source!r}; allowed: {', '.join(SOURCES)}")
        if self.chosen_source not in CHOSEN_SOURCES:
            raise ConfigError(f"chosen_source={self.chosen_source!r}; allowed: {', '.join(CHOSEN_SOURCES)}")
        if self.negatives_mode == "offline" and self.negative_source != "teacher":
            raise ConfigError(f"negative_source={self.negative_source!r} is online only; offline pairs reject the "
                              "teacher's samples")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps={self.max_steps}: give a positive number of optimizer steps, or -1 to train "
                              f"for num_train_epochs={self.num_train_epochs:g} epochs")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:  # torch's DataLoader would refuse it only after the model has loaded
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.checkpoint_kd_beta <= 1 or self.checkpoint_kd_temperature <= 0:
            raise ConfigError(f"checkpoint_kd_beta={self.checkpoint_kd_beta:g} must be in [0, 1] and "
                              f"checkpoint_kd_temperature={self.checkpoint_kd_temperature:g} > 0")
        for name in ("learning_rate", "weight_decay", "warmup_ratio", "beta", "max_grad_norm",
                     "negatives_temperature"):
            if (getattr(self, name, 0) or 0) < 0:  # torch would refuse a negative rate only at the first step
                raise ConfigError(f"{name}={getattr(self, name):g} must be >= 0")
        if not 0 < self.negatives_top_p <= 1:  # generate() refuses it mid-training
            raise ConfigError(f"negatives_top_p={self.negatives_top_p:g} must be in (0, 1]")
        if self.max_steps < 0 and self.num_train_epochs <= 0:
            raise ConfigError(f"num_train_epochs={self.num_train_epochs:g} with max_steps=-1 trains nothing; give a "
                              "positive number of epochs or of max_steps")
        if self.save_strategy == "steps" and self.save_steps <= 0:
            raise ConfigError(f"save_steps={self.save_steps:g} with save_strategy=steps must be > 0")
        if self.negatives_mode not in NEGATIVES_MODES:
            raise ConfigError(f"negatives_mode={self.negatives_mode!r}; allowed: {', '.join(NEGATIVES_MODES)}")
        try:
            check_loss_types(self.loss_type)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        for name in ("num_negatives", "refresh_every", "negatives_max_new_tokens", "generation_batch_size",
                     "teacher_token_top_k", "negatives_max_tries", "chosen_num_samples", "chosen_max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.negatives_lookahead < 0:
            raise ConfigError(f"negatives_lookahead={self.negatives_lookahead} must be >= 0 (0: per micro-batch)")
        if self.chosen_num_samples > 1 and self.negatives_temperature <= 0:
            raise ConfigError(f"chosen_num_samples={self.chosen_num_samples} with negatives_temperature=0 (greedy) "
                              "samples one answer; set negatives_temperature > 0, or chosen_num_samples 1")
        if self.num_negatives > 1 and self.negatives_temperature <= 0:
            raise ConfigError(f"num_negatives={self.num_negatives} with negatives_temperature=0 (greedy) gives one "
                              "answer per prompt; set negatives_temperature > 0")
        if self.negatives_mode == "online" and self.precompute_ref_log_probs:
            raise ConfigError("precompute_ref_log_probs=True needs fixed pairs: use negatives_mode=offline")
        parsed = self._resolve_teacher()
        self.teacher = parsed.to_spec()
        self._parsed_teacher = (self.teacher, parsed)
        low, high = self.band_min_margin, self.band_max_margin
        if low is not None and high is not None and low >= high:
            raise ConfigError(f"band_min_margin={low} must be below band_max_margin={high}")
        if (low is not None or high is not None) and self.negatives_mode == "offline":
            raise ConfigError("band_min_margin / band_max_margin need negatives_mode=online: the margin is the "
                              "current policy's")
        if self.teacher_strength_target is not None:
            if not 0.0 <= self.teacher_strength_target <= 1.0:
                raise ConfigError(f"teacher_strength_target={self.teacher_strength_target}: expected a reward accuracy "
                                  "in [0, 1]")
            if not 0.0 < self.teacher_strength_min <= self.teacher_config().strength:
                raise ConfigError(f"teacher_strength_min={self.teacher_strength_min} must be in (0, the setting's "
                                  f"strength {self.teacher_config().strength}]")
            if self.teacher_strength_step <= 0 or self.teacher_adjust_every < 1:
                raise ConfigError("teacher_strength_step must be > 0 and teacher_adjust_every >= 1")
            if self.teacher_follow_every or self.negatives_mode == "offline":
                raise ConfigError("teacher_strength_target needs negatives_mode=online and no teacher_follow_every "
                                  "(a strength below 1 runs the starting weights' layers)")
            if not reads_rejected(self.loss_type):
                raise ConfigError(f"teacher_strength_target steers by the reward accuracy of a loss on pairs; "
                                  f"loss_type={list(self.loss_type)} reads no rejected side")
        if self.teacher_follow_every < 0:
            raise ConfigError(f"teacher_follow_every={self.teacher_follow_every}: expected 0 (off) or a step count")
        if self.teacher_follow_every and self.negatives_mode == "offline":
            raise ConfigError("teacher_follow_every needs negatives_mode=online: offline pairs are generated once, "
                              "before training")
        if self.teacher_follow_every and self.teacher_config().strength < 1.0:
            raise ConfigError(f"teacher_follow_every with teacher={self.teacher!r}: a strength below 1 runs the "
                              "policy's frozen base layer, which the rebuilt teacher would not follow; use strength 1")

    def _resolve_teacher(self) -> TeacherConfig:
        """The teacher's settings from `teacher`, or from the deprecated `teacher_*` fields (not both)."""
        legacy = [name for name, default in LEGACY_TEACHER_DEFAULTS.items() if getattr(self, name) != default]
        if self.teacher is not None and legacy:
            raise ConfigError(f"give the teacher either as teacher={self.teacher!r} or through the deprecated "
                              f"{', '.join(legacy)}, not both")
        try:
            if self.teacher is not None:
                return TeacherConfig.from_spec(self.teacher)
            config = TeacherConfig(
                quantizer=self.teacher_quantizer, granularity=self.teacher_granularity,
                group_size=self.teacher_group_size, blocks=self.teacher_blocks or None,
                strength=self.teacher_strength, activation_bits=self.teacher_activation_bits,
            )
        except TeacherConfigError as error:
            raise ConfigError(str(error)) from None
        if legacy:
            warnings.warn(f"{', '.join(legacy)} are deprecated and will be removed in the next release: write "
                          f"teacher: {config.to_spec()!r}", FutureWarning, stacklevel=3)
            for name, default in LEGACY_TEACHER_DEFAULTS.items():  # a copy of these args must not see both
                setattr(self, name, default)
        return config

    def teacher_config(self) -> TeacherConfig:
        """The teacher's settings: the one `teacher` spec, parsed once (again only when `teacher` is set anew).
        Treat it as read-only; `dataclasses.replace` makes a changed copy."""
        spec, parsed = self.__dict__.get("_parsed_teacher", (None, None))
        if spec != self.teacher:
            spec, parsed = self.teacher, TeacherConfig.from_spec(self.teacher)
            self._parsed_teacher = (spec, parsed)
        return parsed

    def reads_checkpoint(self) -> bool:
        """Whether training loads the unquantized checkpoint (`chosen_checkpoint`): for its answers or its logits."""
        return self.chosen_source == "checkpoint" or CHECKPOINT_KD in self.loss_type  # a list once DPOConfig is set

    def negative_filter(self) -> NegativeFilter:
        return NegativeFilter(self.filter_empty, self.filter_equal_to_reference, self.filter_duplicates)

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.negatives_max_new_tokens, temperature=self.negatives_temperature,
            top_p=self.negatives_top_p, top_k=self.negatives_top_k,
            seed=self.seed if self.negatives_seed is None else self.negatives_seed,
            batch_size=self.generation_batch_size,
        )

    def chosen_generation_settings(self) -> GenerationSettings:
        """The chosen model's sampling: the negatives' settings, with `chosen_max_new_tokens` when given."""
        return self.generation_settings().with_max_new_tokens(self.chosen_max_new_tokens)
