"""hf-negteacher: DPO against a BitNet-style low-bit copy of the model itself."""

from .models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, nf4_config
from .teacher.build import build_negative_teacher, memory_report
from .teacher.contrastive import ContrastSettings, TeacherContrastLogitsProcessor, contrastive_answers
from .teacher.layer import PackedLinear
from .teacher.spec import TeacherConfig, TeacherConfigError
from .training.config import NegativeTeacherConfig
from .training.negative_sources import NegativeSource, SourceRequest
from .training.token_loss import TEACHER_UNLIKELIHOOD
from .training.trainer import NegativeTeacherTrainer

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
