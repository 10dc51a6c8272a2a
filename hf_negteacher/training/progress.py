"""The Trainer's log lines with numbers as numbers: transformers formats each float as a quoted string
(`{'loss': '4.303'}`); these print `{'loss': 4.303}`, still rounded to 4 significant digits."""

from __future__ import annotations

from collections.abc import Mapping

from transformers.trainer_callback import PrinterCallback, ProgressCallback


def rounded_logs(logs: Mapping[str, object]) -> dict[str, object]:
    return {key: float(f"{value:.4g}") if isinstance(value, float) else value
            for key, value in logs.items() if key != "total_flos"}


class NumericProgressCallback(ProgressCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(str(rounded_logs(logs or {})))


class NumericPrinterCallback(PrinterCallback):
    """For `disable_tqdm=True`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(rounded_logs(logs))


def use_numeric_log_lines(trainer) -> None:
    """Swap the trainer's progress or printer callback for the one that prints numbers."""
    for stock, numeric in ((ProgressCallback, NumericProgressCallback), (PrinterCallback, NumericPrinterCallback)):
        if trainer.pop_callback(stock) is not None:
            trainer.add_callback(numeric)
