"""Recipes and the command line: every recipe validates, overrides apply, errors name the key."""

from pathlib import Path

import pytest
import yaml

from hf_negteacher.cli import main
from hf_negteacher.cli.arguments import DataArguments, NegTeacherModelConfig
from hf_negteacher.cli.recipe import RecipeError, load_recipe, parse
from hf_negteacher.training.config import NegativeTeacherConfig

TYPES = (NegTeacherModelConfig, DataArguments, NegativeTeacherConfig)
RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").rglob("*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_parses_and_validates(recipe):
    raw = yaml.safe_load(recipe.read_text())
    flat = {k: v for k, v in raw.items() if not isinstance(v, dict)}  # the sections flattened, independently
    flat |= {k: v for section in raw.values() if isinstance(section, dict) for k, v in section.items()}
    overrides = ["--bf16", "false"] if flat.get("bf16") else []  # GPU recipes, validated on a CPU machine
    model_args, data_args, args = parse(TYPES, [str(recipe), *overrides], "test")
    assert model_args.model_name_or_path == flat["model_name_or_path"]
    assert args.teacher_config().to_spec() == args.teacher  # a valid setting, already normalized
    assert args.output_dir == flat["output_dir"] and args.max_length == flat["max_length"]
    assert data_args.dataset == flat["dataset"]


def test_sections_flatten_and_command_line_overrides_win():
    recipe = RECIPES[[p.name for p in RECIPES].index("negteacher.yaml")]
    recipe = Path(__file__).parent.parent / "recipes" / "smollm2-135m" / "negteacher.yaml"
    model_args, data_args, args = parse(TYPES, [str(recipe), "--max_steps", "3", "--teacher", "int4",
                                                "--num_train_rows", "8"], "test")
    assert (args.max_steps, args.teacher, data_args.num_train_rows) == (3, "int4", 8)
    assert model_args.lora_r == 16 and model_args.load_in_4bit
    same = parse(TYPES, ["--config", str(recipe), "--max_steps", "3"], "test")[2]
    assert same.max_steps == 3 and same.loss_type == ["sigmoid", "sft"]


@pytest.mark.parametrize("text, message", [
    ("teacher:\n  teacher_quantiser: int3\n", r"unknown key 'teacher.teacher_quantiser'"),
    ("max_steps: ten\n", r"key 'max_steps' = 'ten' is not of type int"),
    ("training:\n  learning_rate: fast\n", r"key 'training.learning_rate' = 'fast' is not of type float"),
    ("lora_target_modules: 3\n", r"key 'lora_target_modules' = 3 is not of type"),
    ("max_steps: 3\ntraining:\n  max_steps: 4\n", r"key 'max_steps' is given twice"),
    ("- a\n- b\n", r"expected a mapping of fields, got list"),
])
def test_recipe_errors_name_the_key(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "r.yaml", TYPES)


def test_missing_recipe_and_missing_model_fail_fast_with_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "nope.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "recipe" in err and "not found" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model_name_or_path", str(tmp_path / "no-such-model"), "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no-such-model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "generate", "calibrate", "eval", "push"])
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: negteacher {command}") and "--output_dir" in out


def test_help_keeps_a_literal_percent_sign(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "paired bootstrap 95% interval" in " ".join(capsys.readouterr().out.split())


def test_help_lists_every_field_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--teacher", "--negatives_mode", "--refresh_every", "--lora_r", "--dataset", "--beta"):
        assert flag in out
    assert "Default: int3,blocks=0-14" in " ".join(out.split())
    main_help = pytest.raises(SystemExit)
    with main_help:
        main(["--help"])
    assert "calibrate" in capsys.readouterr().out
