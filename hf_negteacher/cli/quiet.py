"""Two third-party lines that would open every command's output and that a user can do nothing about.

Each is silenced by its exact text only, so any other warning from the same place still shows:

- bitsandbytes logs, at import, that its optional CPU kernel could not be fetched from the Hub's
  `kernels-community` (the `kernels` package is absent, and offline it could not download it anyway); it then
  uses its own CPU path, the one every number here was measured with.
- transformers deprecated `PreTrainedModel.is_gradient_checkpointing`, which PEFT and TRL still read at every
  adapter wrap and checkpoint save: a notice for those libraries' authors, not for whoever trains.
"""

from __future__ import annotations

import logging
import warnings

_BITSANDBYTES_CPU_KERNEL = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_the_cpu_kernel_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_BITSANDBYTES_CPU_KERNEL)


def silence_known_noise() -> None:
    """Install both filters; call before bitsandbytes or transformers is imported."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if _not_the_cpu_kernel_notice not in logger.filters:
        logger.addFilter(_not_the_cpu_kernel_notice)
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
