"""`negteacher` command line: `negteacher calibrate [--config recipe.yaml] [--field value ...]`."""

from __future__ import annotations

import logging
import sys

from trl import TrlParser
from trl.trainer.utils import get_quantization_config

from .arguments import CalibrateArguments, NegTeacherModelConfig

COMMANDS = ("calibrate",)


def calibrate_command(argv: list[str]) -> None:
    from .calibrate import calibrate
    from .formats import load_rows, to_prompt_answer
    from .models import checkpoint_weights, load_causal_lm, load_tokenizer
    from .negatives import GenerationSettings
    from .teacher_config import TeacherConfig

    parser = TrlParser((NegTeacherModelConfig, CalibrateArguments), prog="negteacher calibrate")
    model_args, args = parser.parse_args_and_config(argv)
    # Everything that can be wrong with the input is checked before the model is loaded.
    grid = [TeacherConfig.from_spec(spec) for spec in args.grid]
    rows = load_rows(args.dataset)[: args.num_rows]
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    pairs = [to_prompt_answer(row, tokenizer) for row in rows]
    model = load_causal_lm(model_args.model_name_or_path, quantization=get_quantization_config(model_args),
                           dtype=model_args.dtype)
    generation = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    seed=args.seed, batch_size=args.batch_size)
    weights = checkpoint_weights(model_args.model_name_or_path)
    report = calibrate(model, tokenizer, pairs, grid, weights=weights, target_ratio=args.target_ratio,
                       generation=generation, trivial_margin=args.trivial_margin, batch_size=args.batch_size)
    paths = report.write(args.output_dir)
    print(report.to_markdown())
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: negteacher {{{','.join(COMMANDS)}}} [--config recipe.yaml] [--field value ...] | -h",
              file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    {"calibrate": calibrate_command}[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
