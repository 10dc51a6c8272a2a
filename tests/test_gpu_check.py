"""`benchmarks/gpu_check.py` at tiny shapes on the CPU: every part runs and its tables hold measured values."""

import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_the_gpu_check_runs_every_part_at_tiny_shapes_on_the_cpu(tmp_path, monkeypatch):
    from gpu_check import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    text = main(["--tiny", "--device", "cpu", "--steps", "2", "--out", str(tmp_path / "check.md")])
    assert (tmp_path / "check.md").read_text() == text and text.count("\n### ") == 5
    agreement = re.findall(r"^\| (ternary|binary|int2|int3|int4) \| (\S+) \| (\S+) \|$", text, re.M)
    assert [q for q, _, _ in agreement] == ["ternary", "binary", "int2", "int3", "int4"]
    assert all(float(error) == 0.0 and agree == "100.0%" for _, error, agree in agreement)  # CPU against itself
    assert re.search(r"^\| 16 answers of 16 tokens[^|]+\| 16/16 \| 100\.0% \|$", text, re.M)  # CPU against itself
    speeds = re.findall(r"^\| (the model \([^)]+\)|teacher int3, [^|]+) \| (\d+) \| ([\d.]+)x \|$", text, re.M)
    assert len(speeds) == 3 and all(int(tokens) > 0 for _, tokens, _ in speeds) and speeds[0][2] == "1.00"
    memory = re.search(r"^\| 2 blocks, teacher int3 \(codes \+ scales\) \| [\d.]+ \| ([\d.]+)x \|$", text, re.M)
    assert 0.1 < float(memory.group(1)) < 0.25  # 3-bit codes and fp16 scales against bf16: about 0.2
    training = re.findall(r"^\| (trl\.DPOTrainer[^|]*|NegativeTeacherTrainer[^|]*) \| ([\d.]+) \| ([\d.]+)x \| "
                          r"(\S+) \| (\S+) \|$", text, re.M)
    assert [name.split(",")[0] for name, *_ in training] == ["trl.DPOTrainer", "NegativeTeacherTrainer"]
    assert training[0][2] == "1.00" and training[0][3] == "-"
    assert 0 < int(training[1][3].rstrip("%")) < 100  # the online trainer's generation share
