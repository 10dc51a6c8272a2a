"""Two CPU processes under `accelerate launch` (torchrun + gloo): online negatives per shard, one adapter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
CPU_2_PROCESSES = Path(__file__).parent.parent / "recipes" / "accelerate" / "cpu_2_processes.yaml"


def launch_two_processes(model, tokenizer, tmp_path, *extra: str) -> list[dict]:
    model_dir, output_dir = tmp_path / "model", tmp_path / "out"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    script = Path(__file__).parent / "distributed_train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2_PROCESSES), str(script),
         str(model_dir), str(output_dir), *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((output_dir / f"shard_{rank}.json").read_text()) for rank in (0, 1)]


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
    # teacher_unlikelihood runs a second policy forward before the backward; DDP must still sync the gradients.
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


def test_offline_negatives_are_generated_in_shards_and_merged_in_row_order(tiny_chat_model, smol_tokenizer,
                                                                           tmp_path):
    shards = launch_two_processes(tiny_chat_model, smol_tokenizer, tmp_path, "offline")
    first, second = (s["offline_prompts"] for s in shards)
    assert len(first) == len(second) == 8 and not set(first) & set(second)  # 16 rows, half each
    output_dir = tmp_path / "out"
    rows = [json.loads(line) for line in (output_dir / "negatives.jsonl").read_text().splitlines()]
    assert [r["negteacher"]["row"] for r in rows] == sorted(r["negteacher"]["row"] for r in rows)
    assert {r["negteacher"]["row"] for r in rows} <= set(range(16)) and len(rows) >= 14
    meta = json.loads((output_dir / "negatives.jsonl.meta.json").read_text())
    assert meta["source_rows"] == 16 and meta["processes"] == 2 and meta["counts"]["generated"] == 16
    assert meta["rows_written"] == len(rows)
    assert not list(output_dir.glob("negatives.jsonl.part*"))
    assert shards[0]["adapter_sum"] == pytest.approx(shards[1]["adapter_sum"], rel=1e-6)
    assert shards[0]["adapter_sum"] != pytest.approx(shards[0]["adapter_sum_before"], rel=1e-6)
