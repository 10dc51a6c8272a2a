"""Recipes and the command line: every recipe validates, overrides apply, errors name the key."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_negteacher.cli import main
from hf_negteacher.cli.arguments import DataArguments, NegTeacherModelConfig
from hf_negteacher.cli.recipe import RecipeError, load_recipe, parse
from hf_negteacher.training.config import NegativeTeacherConfig

ROOT = Path(__file__).parent.parent
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


@pytest.mark.parametrize("value", ["none", "None", ""])
def test_eval_dataset_none_skips_the_held_out_table_as_help_says(value):
    recipe = Path(__file__).parent.parent / "recipes" / "smollm2-135m" / "negteacher.yaml"
    assert parse(TYPES, [str(recipe), "--eval_dataset", value], "test")[1].eval_dataset is None
    assert parse(TYPES, [str(recipe)], "test")[1].eval_dataset == "bundled:eval"


def _recipe_with(tmp_path, **sections) -> Path:
    """The default SmolLM2 recipe with `sections`' fields added, written to tmp_path."""
    raw = yaml.safe_load((Path(__file__).parent.parent / "recipes" / "smollm2-135m" / "negteacher.yaml").read_text())
    for section, fields in sections.items():
        raw[section] |= fields
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "r.yaml"


def test_the_teacher_and_pair_options_of_a_recipe_reach_the_config(tmp_path):
    """The following teacher, the band, the strength feedback, the losses for weak-vs-weaker pairs and the
    prompt-only sources are plain recipe fields."""
    recipe = _recipe_with(tmp_path, teacher={"teacher_follow_every": 4, "band_min_margin": 0.1, "band_max_margin": 1.5,
                                             "chosen_source": "checkpoint", "chosen_num_samples": 4,
                                             "chosen_max_new_tokens": 80},
                          training={"loss_type": ["sigmoid_norm"], "beta": 5.0}, dataset={"drop_references": True})
    _, data_args, args = parse(TYPES, [str(recipe)], "test")
    assert (args.teacher_follow_every, args.band_min_margin, args.band_max_margin) == (4, 0.1, 1.5)
    assert (args.chosen_source, args.chosen_num_samples, args.loss_type, args.beta) == ("checkpoint", 4,
                                                                                       ["sigmoid_norm"], 5.0)
    assert data_args.drop_references and args.chosen_generation_settings().max_new_tokens == 80
    recipe = _recipe_with(tmp_path, teacher={"teacher_strength_target": 0.8, "teacher_adjust_every": 2})
    args = parse(TYPES, [str(recipe)], "test")[2]
    assert (args.teacher_strength_target, args.teacher_adjust_every, args.teacher_follow_every) == (0.8, 2, 0)


@pytest.mark.parametrize("fields, message", [
    ({"teacher_follow_every": 4, "teacher_strength_target": 0.8}, r"strength_target needs .*no teacher_follow_every"),
    ({"band_min_margin": 2.0, "band_max_margin": 1.0}, r"band_min_margin=2.0 must be below band_max_margin=1.0"),
    ({"teacher_follow_every": 4, "negatives_mode": "offline"}, r"teacher_follow_every needs negatives_mode=online"),
])
def test_conflicting_teacher_options_in_a_recipe_are_one_error(tmp_path, fields, message):
    with pytest.raises(RecipeError, match=message):
        parse(TYPES, [str(_recipe_with(tmp_path, teacher=fields))], "test")


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


def _own_output_first(command: list[str], tmp_path) -> str:
    """Run `negteacher ...` in a fresh process; fail if any line comes before the command's own first line."""
    done = subprocess.run([sys.executable, "-m", "hf_negteacher.cli", *command], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in (done.stderr + done.stdout).replace("\r", "\n").splitlines() if line.strip()]
    first = next(line for line in lines if not re.search(r"\d+%\|", line))  # progress bars aside
    assert first.startswith(("usage: negteacher", "INFO hf_negteacher")), first
    for noise in ("FutureWarning", "kernels-community", "warnings.warn"):
        assert noise not in done.stderr
    return done.stdout


def test_help_prints_only_its_own_text(tmp_path):
    assert _own_output_first(["--help"], tmp_path).startswith("usage: negteacher COMMAND")


def test_default_train_command_opens_with_its_own_line_and_logs_numbers(tmp_path):
    out = _own_output_first(["train", str(ROOT / "recipes/smollm2-135m/negteacher.yaml"), "--output_dir", "run",
                             "--max_steps", "1", "--num_train_rows", "4", "--eval_dataset", "none",
                             "--save_strategy", "no", "--negatives_max_new_tokens", "8", "--logging_steps", "1"],
                            tmp_path)
    logged = next(line for line in out.splitlines() if line.startswith("{'loss'"))
    assert re.match(r"\{'loss': \d+\.\d+, 'grad_norm': \d+\.\d+", logged), logged
