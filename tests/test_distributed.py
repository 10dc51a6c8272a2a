"""Two CPU processes under `accelerate launch` (torchrun + gloo): online negatives per shard, one adapter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
CPU_2_PROCESSES = Path(__file__).parent.parent / "recipes" / "accelerate" / "cpu_2_processes.yaml"


def run_script(model_dir: Path, output_dir: Path, *extra: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`distributed_train.py` under `cpu_2_processes.yaml`, or alone (`processes=1`), one thread per process."""
    script = Path(__file__).parent / "distributed_train.py"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2_PROCESSES)]
    return subprocess.run([*(launcher if processes == 2 else [sys.executable]), str(script), str(model_dir),
                           str(output_dir), *extra],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def saved_model(model, tokenizer, tmp_path) -> Path:
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def shards_of(output_dir: Path, processes: int = 2) -> list[dict]:
    return [json.loads((output_dir / f"shard_{rank}.json").read_text()) for rank in range(processes)]


def launch_two_processes(model, tokenizer, tmp_path, *extra: str) -> list[dict]:
    result = run_script(saved_model(model, tokenizer, tmp_path), tmp_path / "out", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return shards_of(tmp_path / "out")


def test_two_cpu_processes_train_on_different_shards_and_save_one_adapter(tiny_chat_model, smol_tokenizer,
                                                                          tmp_path):
    shards = launch_two_processes(tiny_chat_model, smol_tokenizer, tmp_path)
    output_dir = tmp_path / "out"
    assert all(s["world_size"] == 2 and s["generation_calls"] == 3 for s in shards)
    assert shards[0]["adapter_sum"] == pytest.approx(shards[1]["adapter_sum"], rel=1e-6)
    assert shards[0]["adapter_sum"] != pytest.approx(shards[0]["adapter_sum_before"], rel=1e-6)
    first, second = (set(s["prompts"]) for s in shards)
    assert len(first) == len(second) == 6  # 3 steps x 2 prompts, each process its own
    assert not first & second
    saved = load_file(output_dir / "adapter_model.safetensors")  # the trained, synchronised adapter, written once
    assert sum(t.double().sum().item() for t in saved.values()) == pytest.approx(shards[0]["adapter_sum"], rel=1e-6)
    assert not list(output_dir.glob("*/adapter_model.safetensors"))


def test_token_level_loss_trains_under_ddp_with_synchronised_adapters(tiny_chat_model, smol_tokenizer, tmp_path):
    # teacher_unlikelihood reads the policy's logits from TRL's forward, under re-entrant checkpointing (TRL's setting
    # for PEFT under ZeRO-3), which DDP accepts only without its unused-parameter search (the config's default).
    shards = launch_two_processes(tiny_chat_model, smol_tokenizer, tmp_path, "sigmoid,sft,teacher_unlikelihood")
    assert shards[0]["adapter_sum"] == pytest.approx(shards[1]["adapter_sum"], rel=1e-6)
    assert shards[0]["adapter_sum"] != pytest.approx(shards[0]["adapter_sum_before"], rel=1e-6)  # it trained
    assert all(s["generation_calls"] == 3 for s in shards)
    # The loss term's statistics are averaged over both processes, so both log the same values.
    logged = [[{k: v for k, v in e.items() if k.startswith("teacher_unlikelihood/")} for e in s["log_history"]]
              for s in shards]
    assert logged[0] == logged[1] and any(logged[0])


def test_filters_that_keep_different_numbers_on_each_process_still_give_equal_pairs(tiny_chat_model, smol_tokenizer,
                                                                                   tmp_path):
    # Process 1 drops every candidate: it resamples, then fills from the filtered candidates. Before the
    # negative seam it held fewer pairs than process 0 and gloo's all_gather aborted ("collective mismatch").
    shards = launch_two_processes(tiny_chat_model, smol_tokenizer, tmp_path, "uneven-filter")
    assert shards[0]["pairs_per_batch"] == shards[1]["pairs_per_batch"] == [4, 4, 4]  # 2 prompts x 2 negatives
    assert shards[0]["adapter_sum"] == pytest.approx(shards[1]["adapter_sum"], rel=1e-6)
    assert shards[0]["adapter_sum"] != pytest.approx(shards[0]["adapter_sum_before"], rel=1e-6)
    logs = [entry for entry in shards[0]["log_history"] if "negatives/fallback_fraction" in entry]
    assert len(logs) == 3
    # Logged values are over both processes: process 1 fills all its pairs (half of all pairs), process 0 none.
    assert all(entry["negatives/fallback_fraction"] == 0.5 for entry in logs)
    reduced = lambda shard: [{k: v for k, v in e.items() if k.startswith(("negatives/", "teacher/"))}  # noqa: E731
                             for e in shard["log_history"]]
    assert reduced(shards[0]) == reduced(shards[1])
    assert "negatives/generation_time_share" in reduced(shards[0])[0]


def test_offline_negatives_on_uneven_shards_resumed_where_each_process_stopped_match_one_process(
        tiny_chat_model, smol_tokenizer, tmp_path):
    # 33 rows in batches of 16: process 0 generates two batches, process 1 one. Before the batches were shared
    # out whole, each process drew its rows under its own seeds, so the file depended on the number of processes.
    model_dir = saved_model(tiny_chat_model, smol_tokenizer, tmp_path)
    single = run_script(model_dir, tmp_path / "single", "offline", processes=1)
    assert single.returncode == 0, single.stderr[-3000:]
    interrupted = run_script(model_dir, tmp_path / "out", "offline-interrupted")
    assert interrupted.returncode != 0
    assert not (tmp_path / "out" / "negatives.jsonl").exists()
    progress = tmp_path / "out" / "negatives.jsonl.part{}of2.progress.json"
    assert json.loads(Path(str(progress).format(0)).read_text())["rows_done"] == 16
    assert not Path(str(progress).format(1)).exists()  # process 1 died before finishing its first batch
    resumed = run_script(model_dir, tmp_path / "out", "offline")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    shards = shards_of(tmp_path / "out")
    assert [len(s["offline_prompts"]) for s in shards] == [16, 1]  # each process generated only what it lacked
    written = (tmp_path / "out" / "negatives.jsonl").read_text()
    assert written == (tmp_path / "single" / "negatives.jsonl").read_text()
    rows = [json.loads(line) for line in written.splitlines()]
    assert {r["negteacher"]["row"] for r in rows} <= set(range(33)) and len(rows) >= 30
    assert {r["negteacher"]["seed"] for r in rows} == {0, 16, 32}  # each batch under seed + its first row
    meta = json.loads((tmp_path / "out" / "negatives.jsonl.meta.json").read_text())
    assert meta["source_rows"] == 33 and meta["processes"] == 2 and meta["counts"]["generated"] == 33
    assert meta["rows_written"] == len(rows)
    assert not list((tmp_path / "out").glob("negatives.jsonl.part*"))
    assert shards[0]["adapter_sum"] == pytest.approx(shards[1]["adapter_sum"], rel=1e-6)
    assert shards[0]["adapter_sum"] != pytest.approx(shards[0]["adapter_sum_before"], rel=1e-6)


def test_strength_feedback_killed_at_a_save_step_resumes_on_two_processes_as_the_uninterrupted_run(
        tiny_chat_model, smol_tokenizer, tmp_path):
    model_dir = saved_model(tiny_chat_model, smol_tokenizer, tmp_path)
    whole = run_script(model_dir, tmp_path / "whole", "strength")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run_script(model_dir, tmp_path / "resumed", "strength-killed")
    assert killed.returncode != 0 and (tmp_path / "resumed" / "checkpoint-2").is_dir()
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()
    resumed = run_script(model_dir, tmp_path / "resumed", "strength-resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def logged(output_dir: Path) -> list[dict]:
        # Timings differ by nature; TRL 1.16's `num_tokens` is a running count it does not checkpoint (it restarts
        # at 0 on resume with plain `trl.DPOTrainer` too).
        skipped = ("time", "runtime", "per_second", "num_tokens")
        return [{k: v for k, v in entry.items() if not any(word in k for word in skipped)}
                for entry in shards_of(output_dir)[0]["log_history"] if "loss" in entry]

    expected = logged(tmp_path / "whole")
    strengths = [entry["teacher/strength"] for entry in expected if "teacher/strength" in entry]
    assert len(expected) == 4 and len(strengths) == 3
    assert strengths != [1.0] * 3  # the feedback moved it: a restart at the configured strength would differ
    got = logged(tmp_path / "resumed")
    assert [entry.keys() for entry in got] == [entry.keys() for entry in expected]
    for a, b in zip(got, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
