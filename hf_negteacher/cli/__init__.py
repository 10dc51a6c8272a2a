"""`negteacher train|generate|calibrate|eval|push|export-teacher RECIPE.yaml [--field value ...]`."""

from __future__ import annotations

import difflib
import logging
import sys

from .quiet import silence_known_noise

USAGE = """usage: negteacher COMMAND [RECIPE.yaml] [--field value ...]

commands:
  train      train a LoRA adapter against the negative teacher (NegativeTeacherTrainer)
  generate   write the offline preference dataset (prompt, chosen, rejected) with the teacher
  calibrate  sweep teacher settings: perplexity ratio to the policy, trivial pairs, a sample each
  eval       held-out perplexity (built-in and lm-eval engines) of the base, 4-bit base, + adapter, teacher
  push       upload a trained output_dir (adapter + model card) to the Hugging Face Hub
  export-teacher  write the teacher as a plain transformers checkpoint (for vLLM, TGI, ...) to output_dir

`negteacher COMMAND --help` lists every field with its default."""


COMMANDS = ("train", "generate", "calibrate", "eval", "push", "export-teacher")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        print(f"negteacher: unknown command {argv[0]!r}; {hint}(commands: {', '.join(COMMANDS)}; see "
              "negteacher --help)", file=sys.stderr)
        sys.exit(2)
    silence_known_noise()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from . import commands  # torch, transformers and TRL load here, after the filters, and not for --help
    from .recipe import RecipeError

    try:
        getattr(commands, f"{argv[0].replace('-', '_')}_command")(argv[1:])
    except (RecipeError, ValueError, FileNotFoundError) as error:
        if isinstance(error, RecipeError) or type(error).__module__.startswith("hf_negteacher"):
            print(f"negteacher {argv[0]}: {error}", file=sys.stderr)
            sys.exit(2)
        raise

