"""hf-negteacher: DPO against a low-bit copy (ternary, 1-4 bits) of the model itself.

Names are imported on first use (PEP 562), so the torch-free parts (the bundled data, the statistics, the
benchmark report) can be used on a machine without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "DEFAULT_MODEL": ".models",
    "load_causal_lm": ".models",
    "load_tokenizer": ".models",
    "nf4_config": ".models",
    "build_negative_teacher": ".teacher.build",
    "memory_report": ".teacher.build",
    "ContrastSettings": ".teacher.contrastive",
    "TeacherContrastLogitsProcessor": ".teacher.contrastive",
    "contrastive_answers": ".teacher.contrastive",
    "PackedLinear": ".teacher.layer",
    "TeacherConfig": ".teacher.spec",
    "TeacherConfigError": ".teacher.spec",
    "NegativeTeacherConfig": ".training.config",
    "NegativeSource": ".training.negative_sources",
    "SourceRequest": ".training.negative_sources",
    "TEACHER_UNLIKELIHOOD": ".training.token_loss",
    "NegativeTeacherTrainer": ".training.trainer",
}
__all__ = [
    "ContrastSettings",
    "DEFAULT_MODEL",
    "NegativeSource",
    "NegativeTeacherConfig",
    "NegativeTeacherTrainer",
    "PackedLinear",
    "SourceRequest",
    "TEACHER_UNLIKELIHOOD",
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

if TYPE_CHECKING:
    from .models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, nf4_config
    from .teacher.build import build_negative_teacher, memory_report
    from .teacher.contrastive import ContrastSettings, TeacherContrastLogitsProcessor, contrastive_answers
    from .teacher.layer import PackedLinear
    from .teacher.spec import TeacherConfig, TeacherConfigError
    from .training.config import NegativeTeacherConfig
    from .training.negative_sources import NegativeSource, SourceRequest
    from .training.token_loss import TEACHER_UNLIKELIHOOD
    from .training.trainer import NegativeTeacherTrainer


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
