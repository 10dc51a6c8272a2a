"""The quality benchmark's training: a run killed between checkpoints resumes to the adapter of an unbroken run."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_quality  # noqa: E402

from hf_negteacher.data.rows import load_rows  # noqa: E402


def train(work: Path, tiny_base_dir: Path, tokenizer) -> float:
    return bench_quality.train_adapter("sft", 0, work, str(tiny_base_dir), True, tokenizer,
                                       load_rows("bundled:reverse-train")[:12], 3, "unused", None, None)


def test_a_killed_run_resumes_from_its_checkpoint_to_the_unbroken_runs_adapter(tiny_base_dir, smol_tokenizer,
                                                                               tmp_path, monkeypatch):
    monkeypatch.setattr(bench_quality, "SAVE_EVERY", 1)
    unbroken_seconds = train(tmp_path / "unbroken", tiny_base_dir, smol_tokenizer)

    record = bench_quality.TrainingSeconds.on_save

    def killed_after_step_2(self, args, state, control, **kwargs):
        record(self, args, state, control, **kwargs)
        if state.global_step == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(bench_quality.TrainingSeconds, "on_save", killed_after_step_2)
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path / "killed", tiny_base_dir, smol_tokenizer)
    assert bench_quality.saved_training_seconds(tmp_path / "killed") is None
    seconds_at_kill = bench_quality.saved_training_seconds(tmp_path / "killed" / "checkpoint-2")
    half_written = tmp_path / "killed" / "checkpoint-3"  # killed while the Trainer wrote the next checkpoint
    half_written.mkdir()
    (half_written / "adapter_model.safetensors").write_bytes(b"cut off")
    assert bench_quality.last_whole_checkpoint(tmp_path / "killed") == str(tmp_path / "killed" / "checkpoint-2")

    resumed_seconds = train(tmp_path / "killed", tiny_base_dir, smol_tokenizer)
    assert resumed_seconds > seconds_at_kill > 0 and unbroken_seconds > 0
    assert not list((tmp_path / "killed").glob("checkpoint-*"))
    unbroken = load_file(tmp_path / "unbroken" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "killed" / "adapter_model.safetensors")
    assert unbroken.keys() == resumed.keys() and any(t.abs().sum() > 0 for k, t in unbroken.items() if "lora_B" in k)
    for name, weight in unbroken.items():
        torch.testing.assert_close(resumed[name], weight, rtol=0, atol=1e-6)


def test_recovery_runs_that_read_the_checkpoints_answers_from_disk_train_as_runs_that_generate_them(
        tiny_base_dir, smol_tokenizer, tmp_path, monkeypatch):
    from hf_negteacher.training import chosen_sources

    def train_recovery(work: Path, answers: Path | None) -> float:
        return bench_quality.train_adapter("po_checkpoint_distill", 0, work, str(tiny_base_dir), True, smol_tokenizer,
                                           load_rows("bundled:reverse-train")[:8], 2, "int4", None, 8, answers)

    train_recovery(tmp_path / "generating", None)
    train_recovery(tmp_path / "writing", tmp_path / "answers")
    assert len(list((tmp_path / "answers").glob("*.json"))) == 2  # one chosen-answer request per step

    def no_generation(*args, **kwargs):
        raise AssertionError("the checkpoint generated an answer that was on disk")

    monkeypatch.setattr(chosen_sources, "model_answers", no_generation)
    reading_seconds = train_recovery(tmp_path / "reading", tmp_path / "answers")
    written = [json.loads(path.read_text())["seconds"] for path in (tmp_path / "answers").glob("*.json")]
    assert reading_seconds > sum(written) > 0  # credited what the writer spent on the answers
    generated = load_file(tmp_path / "generating" / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for k, t in generated.items() if "lora_B" in k)
    for run in ("writing", "reading"):
        adapter = load_file(tmp_path / run / "adapter_model.safetensors")
        assert adapter.keys() == generated.keys()
        for name, weight in generated.items():
            torch.testing.assert_close(adapter[name], weight, rtol=0, atol=0)
