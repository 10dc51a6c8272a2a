"""Recipes: one YAML format for every `negteacher` command, parsed with TRL's `TrlParser`.

A recipe is a mapping of field names (those `negteacher <command> --help` lists) to values. Fields
may be grouped under the sections `model`, `lora`, `quantization`, `teacher`, `dataset` and
`training`; sections are only for reading, every field name is unique. `env:` sets environment
variables, as in TRL. Command-line flags override the recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path

import yaml
from trl import TrlParser

SECTIONS = ("model", "lora", "quantization", "teacher", "dataset", "training")


class RecipeError(ValueError):
    """A recipe or a command-line override is invalid; the message names the file and key."""


def parse(dataclass_types: tuple[type, ...], argv: list[str], prog: str) -> tuple:
    """Parse `[RECIPE.yaml] [--config RECIPE.yaml] [--field value ...]` into the dataclasses."""
    argv = list(argv)
    recipe = None
    if argv and not argv[0].startswith("-"):
        recipe = argv.pop(0)
    if "--config" in argv:
        index = argv.index("--config")
        if recipe is not None or index + 1 >= len(argv):
            raise RecipeError("give one recipe: `negteacher <command> RECIPE.yaml` or `--config RECIPE.yaml`")
        recipe = argv[index + 1]
        del argv[index:index + 2]
    parser = _Parser(dataclass_types, prog=prog)
    if recipe is not None:
        flat = load_recipe(recipe, dataclass_types)
        for name, value in (flat.pop("env", None) or {}).items():
            os.environ[name] = str(value)
        parser.set_defaults_with_config(**flat)
    _check_flags(parser, argv)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except RecipeError:
        raise
    except ValueError as error:  # a dataclass's own validation (TrainingArguments, ours): one line, no traceback
        raise RecipeError(" ".join(str(error).split()) or repr(error)) from None


class _Parser(TrlParser):
    """TrlParser whose own errors (a bad value, a missing argument) are one `RecipeError` line, not usage +
    exit, and whose help tolerates a literal `%` in a field's help text (argparse would read it as a format)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for action in self._actions:
            if action.help:
                action.help = re.sub(r"%(?!\(\w+\)s)", "%%", action.help)

    def error(self, message: str) -> typing.NoReturn:
        raise RecipeError(f"{message} (see `{self.prog} --help`)")


def _check_flags(parser: TrlParser, argv: list[str]) -> None:
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    for token in argv:
        if token.startswith("--") and token.split("=", 1)[0] not in known:
            flag = token.split("=", 1)[0]
            raise RecipeError(f"unknown option {flag}{_did_you_mean(flag, known)} (see `{parser.prog} --help`)")


def _did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def load_recipe(path: str | Path, dataclass_types: tuple[type, ...]) -> dict:
    """Read, flatten and check a recipe: unknown keys and wrong types are errors naming the key."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path}: not valid YAML ({' '.join(str(error).split())})") from None
    if raw is None:  # a 0-byte or comments-only file: training on the command line's defaults is never meant
        raise RecipeError(f"recipe {path}: empty; expected a mapping of fields (see recipes/ for examples)")
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of fields, got {type(raw).__name__}")
    # Annotations, not `Field.type`: HfArgumentParser rewrites the latter in place (a union becomes `str`).
    fields = {name: annotation for cls in dataclass_types for name, annotation in _annotations(cls).items()}
    flat: dict = {}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            items = [(f"{key}.{k}", k, v) for k, v in value.items()]
        else:
            items = [(key, key, value)]
        for where, name, item in items:
            if name == "env" and where == "env":
                flat[name] = item
                continue
            if name not in fields:
                raise RecipeError(f"recipe {path}: unknown key {where!r}{_did_you_mean(name, fields)} (see `--help` "
                                  "for the fields)")
            if name in flat:
                raise RecipeError(f"recipe {path}: key {name!r} is given twice")
            _check_type(path, where, fields[name], item)
            flat[name] = item
    return flat


def _annotations(cls: type) -> dict:
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    hints = {}
    for klass in reversed(cls.__mro__):
        hints.update(getattr(klass, "__annotations__", {}))
    return {name: _resolve(hint) for name, hint in hints.items() if name in init_fields}


def _check_type(path: Path, where: str, annotation, value) -> None:
    if value is None and _allows_none(annotation):
        return
    if value is None or not _matches(annotation, value):
        expected = getattr(annotation, "__name__", None) or str(annotation)
        raise RecipeError(f"recipe {path}: key {where!r} = {value!r} is not of type {expected}")


def _resolve(annotation):
    if isinstance(annotation, str):  # `from __future__ import annotations` leaves strings
        namespace = {"Any": typing.Any, "Literal": typing.Literal}
        try:
            return eval(annotation, namespace)  # noqa: S307  (annotations of our own dataclasses)
        except NameError:
            return typing.Any
    return annotation


def _allows_none(annotation) -> bool:
    annotation = _resolve(annotation)
    return annotation is typing.Any or type(None) in typing.get_args(annotation)


def _matches(annotation, value) -> bool:
    annotation = _resolve(annotation)
    if annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(arg, value) for arg in typing.get_args(annotation) if arg is not type(None))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return isinstance(value, list) and (not args or all(_matches(args[0], v) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        if issubclass(annotation, str) or annotation.__module__ != "builtins":
            return isinstance(value, (str, annotation)) if not isinstance(value, bool) else annotation is bool
        return isinstance(value, annotation)
    return True
