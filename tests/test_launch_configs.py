"""Every shipped accelerate config, as `accelerate launch` reads it: is the policy sharded, and what does the CLI
pass to `from_pretrained` for the 4-bit policy? (The decisions; no GPU runs them here.)"""

from pathlib import Path
from types import SimpleNamespace

import pytest

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
