"""Every shipped accelerate config, as `accelerate launch` reads it: is the policy sharded, what does the CLI
pass to `from_pretrained` for the 4-bit policy, which processes score after training, and which flags do the
teacher's and the checkpoint's `generate` calls get? (The decisions; no GPU runs them here.)"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

CONFIGS = sorted((Path(__file__).parent.parent / "recipes" / "accelerate").glob("*.yaml"))
SHARDED = {"fsdp_qlora.yaml", "zero3.yaml"}


def launch_env(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file config` gives each process (accelerate's own code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(
        ["--config_file", str(config), "train.py"]))
    if args.use_deepspeed:  # as accelerate's launch_command prepares it
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config) if defaults else ""
        return prepare_deepspeed_cmd_env(args)[1]
    if args.use_fsdp or args.multi_gpu:
        return prepare_multi_gpu_env(args)
    return prepare_simple_launcher_cmd_env(args)[1]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_each_config_loads_the_4bit_policy_as_its_launch_needs(config, monkeypatch):
    import hf_negteacher.models as models
    from hf_negteacher.cli.arguments import NegTeacherModelConfig
    from hf_negteacher.cli.commands import _load_policy
    from hf_negteacher.training.trainer import shards_parameters

    for name, value in launch_env(config).items():
        monkeypatch.setenv(name, value)
    sharded = shards_parameters(SimpleNamespace(fsdp=None, deepspeed=None, deepspeed_plugin=None))
    assert sharded == (config.name in SHARDED)
    passed = {}
    monkeypatch.setattr(models, "_from_pretrained", lambda cls, source, **kwargs: passed.update(kwargs) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # stop at from_pretrained, with what it was given
        _load_policy(NegTeacherModelConfig(load_in_4bit=True), use_cpu=False, sharded=sharded)
    assert "quantization_config" in passed
    assert ("device_map" in passed) != sharded  # transformers refuses a device_map under ZeRO-3


class RecordingModel(torch.nn.Module):
    """Records the keywords `generate` gets and answers one token per prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append(kwargs)
        return torch.cat([input_ids, torch.full_like(input_ids[:, :1], 5)], dim=1)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_each_config_decides_who_scores_after_training_and_how_models_generate(config, monkeypatch):
    from hf_negteacher.cli.commands import held_out_scorers
    from hf_negteacher.generation import GenerationSettings
    from hf_negteacher.training.chosen_sources import model_answers
    from hf_negteacher.training.negative_sources import SourceRequest, TeacherSource

    for name, value in launch_env(config).items():
        monkeypatch.setenv(name, value)
    args = SimpleNamespace(fsdp=None, deepspeed=None, deepspeed_plugin=None, teacher_dequantize_once=False)
    # Sharded: no process holds the trained weights, so none scores them (rank 0 alone over a shard would hang).
    assert held_out_scorers(args) == (set() if config.name in SHARDED else {0})
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    teacher, checkpoint = RecordingModel(), RecordingModel()
    request = SourceRequest(prompts=[[3, 4]] * 3, references=[[7]] * 3, n=1, seed=0,
                            settings=GenerationSettings(max_new_tokens=2, batch_size=2))
    context = SimpleNamespace(teacher=teacher, args=args, tokenizer=tokenizer)
    assert TeacherSource().candidates(context, request) == [[[5]]] * 3
    model_answers(checkpoint, tokenizer, request.prompts, request.settings, seed=0)
    # Each process generates for its own rows a number of times of its own: never synced across processes
    # (transformers' default under ZeRO-3 would wait for the others at every token).
    assert len(teacher.calls) == len(checkpoint.calls) == 2
    assert all(call["synced_gpus"] is False for call in teacher.calls + checkpoint.calls)
