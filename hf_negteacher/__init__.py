"""hf-negteacher: DPO against a BitNet-style low-bit copy of the model itself."""

from .config import NegativeTeacherConfig
from .contrastive import ContrastSettings, TeacherContrastLogitsProcessor, contrastive_answers
from .lowbit import PackedLinear, build_negative_teacher, memory_report
from .models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, nf4_config
from .sources import NegativeSource, SourceRequest
from .teacher_config import TeacherConfig, TeacherConfigError
from .token_loss import TEACHER_UNLIKELIHOOD
from .trainer import NegativeTeacherTrainer

__all__ = [
    "DEFAULT_MODEL",
    "TEACHER_UNLIKELIHOOD",
    "ContrastSettings",
    "NegativeSource",
    "NegativeTeacherConfig",
    "NegativeTeacherTrainer",
    "PackedLinear",
    "SourceRequest",
    "TeacherConfig",
    "TeacherConfigError",
    "TeacherContrastLogitsProcessor",
    "build_negative_teacher",
    "contrastive_answers",
    "load_causal_lm",
    "load_tokenizer",
    "memory_report",
    "nf4_config",
]
