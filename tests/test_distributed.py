"""Two CPU processes under `accelerate launch` (torchrun + gloo): online negatives per shard, one adapter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CPU_2_PROCESSES = Path(__file__).parent.parent / "recipes" / "accelerate" / "cpu_2_processes.yaml"


def test_two_cpu_processes_train_on_different_shards_and_save_one_adapter(tiny_chat_model, smol_tokenizer,
                                                                          tmp_path):
    model_dir, output_dir = tmp_path / "model", tmp_path / "out"
    tiny_chat_model.save_pretrained(model_dir)
    smol_tokenizer.save_pretrained(model_dir)
    script = Path(__file__).parent / "distributed_train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2_PROCESSES), str(script),
         str(model_dir), str(output_dir)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shards = [json.loads((output_dir / f"shard_{rank}.json").read_text()) for rank in (0, 1)]
    assert all(s["world_size"] == 2 and s["generation_calls"] == 3 for s in shards)
    first, second = (set(s["prompts"]) for s in shards)
    assert len(first) == len(second) == 6  # 3 steps x 2 prompts, each process its own
    assert not first & second
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert not list(output_dir.glob("*/adapter_model.safetensors"))  # one adapter, written once
