"""`negteacher push` at the HTTP boundary: the Hub API is a mock transport, the folder is real."""

import json

import httpx2 as httpx
import huggingface_hub
import pytest
from huggingface_hub import EvalResult, ModelCard

from hf_negteacher.cli import main
from hf_negteacher.hub import render_model_card


@pytest.fixture
def hub(monkeypatch):
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        path = request.url.path
        if path == "/api/repos/create":
            return httpx.Response(200, json={"url": "https://huggingface.co/you/adapter", "name": "you/adapter"})
        if path == "/api/validate-yaml":  # the Hub checks the card's metadata before accepting it
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if path.endswith("/preupload/main"):
            files = json.loads(request.content)["files"]
            return httpx.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
        if path.endswith("/commit/main"):
            return httpx.Response(200, json={"commitUrl": "https://huggingface.co/you/adapter/commit/abc",
                                             "commitOid": "a" * 40, "success": True})
        return httpx.Response(404, json={"error": f"unexpected {request.method} {path}"})

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(handler)))
    huggingface_hub.close_session()
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    yield requests
    huggingface_hub.set_client_factory(httpx.Client)
    huggingface_hub.close_session()


def card(tmp_path):
    rendered = render_model_card(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", repo_id="you/adapter",
        teacher={"setting": "int3,blocks=0-14"}, dataset_name="bundled:train",
        training={"loss_type": "sigmoid, sft", "beta": 0.1, "steps": 40, "learning_rate": 2e-4, "lora_r": 16,
                  "lora_alpha": 32},
        train_metrics={"loss": 4.5}, eval_results=[EvalResult(
            task_type="text-generation", dataset_type="bundled:eval", dataset_name="bundled:eval",
            metric_type="perplexity", metric_name="held-out answer perplexity", metric_value=28.31)])
    rendered.save(tmp_path / "README.md")
    return rendered


def test_model_card_has_metadata_teacher_and_model_index(tmp_path):
    card(tmp_path)
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.library_name == "peft" and loaded.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"negteacher", "dpo", "qlora"} <= set(loaded.data.tags) and "bitnet" not in loaded.data.tags
    assert loaded.data.eval_results[0].metric_value == 28.31
    assert "model-index" in (tmp_path / "README.md").read_text()
    assert "| setting | `int3,blocks=0-14` |" in loaded.text and "| loss | 4.5 |" in loaded.text


def test_push_uploads_adapter_and_card(tmp_path, hub, capsys):
    card(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "optimizer.pt").write_bytes(b"not for the hub")
    main(["push", "--output_dir", str(tmp_path), "--hub_model_id", "you/adapter"])
    commit = next(r for r in hub if r.url.path.endswith("/commit/main"))
    lines = [json.loads(line) for line in commit.content.decode().splitlines()]
    uploaded = {line["value"]["path"] for line in lines if line["key"] == "file"}
    assert uploaded == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    assert any(r.url.path == "/api/repos/create" for r in hub)
    assert "pushed" in capsys.readouterr().out


def test_push_refuses_a_folder_without_adapter(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "--output_dir", str(tmp_path), "--hub_model_id", "you/adapter"])
    assert exit_info.value.code == 2
    assert "missing adapter_model.safetensors, adapter_config.json, README.md" in capsys.readouterr().err


def test_trainer_push_to_hub_uploads_adapter_and_our_card(tiny_chat_model, smol_tokenizer, tmp_path, hub):
    from peft import LoraConfig

    from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer
    from hf_negteacher.data.rows import load_rows

    args = NegativeTeacherConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=1, per_device_train_batch_size=2,
                                 max_length=96, gradient_checkpointing=False, negatives_max_new_tokens=4,
                                 teacher="int3,group_size=32", report_to=[], save_strategy="no",
                                 hub_model_id="you/adapter")
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, load_rows("bundled:train")[:2],
                                     processing_class=smol_tokenizer, peft_config=LoraConfig(r=2))
    trainer.train()
    trainer.push_to_hub()
    commit = next(r for r in hub if r.url.path.endswith("/commit/main"))
    lines = [json.loads(line) for line in commit.content.decode().splitlines()]
    uploaded = {line["value"]["path"] for line in lines if line["key"] == "file"}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= uploaded
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and "negteacher" in card.data.tags
    assert "int3" in card.text
