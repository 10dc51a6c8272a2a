"""One function per `negteacher` command: parse the recipe and arguments, check them, call the library."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

from ..training.config import NegativeTeacherConfig
from .arguments import CalibrateArguments, DataArguments, EvalArguments, NegTeacherModelConfig
from .recipe import RecipeError, parse

logger = logging.getLogger(__name__)


def _rows_and_pairs(source: str, limit: int | None, tokenizer, max_length: int | None, *,
                    require_answer: bool = True, drop_references: bool = False):
    from ..data.rows import fit_answers, load_rows, validate_rows, without_reference

    rows = load_rows(source)[:limit] if limit else load_rows(source)
    if drop_references:
        rows = [without_reference(row) for row in rows]
    pairs = validate_rows(rows, tokenizer, max_length, require_answer=require_answer)
    return rows, fit_answers(pairs, tokenizer, max_length, source)[0]


def policy_device_map(model_args: NegTeacherModelConfig, use_cpu: bool, sharded: bool):
    """The `device_map` the policy loads with: a 4-bit model, one process per device, loads its weights onto its
    own; under FSDP or ZeRO-3 (`sharded`) none, which transformers refuses to combine with a `device_map`."""
    import torch
    from accelerate import PartialState
    from trl.trainer.utils import get_quantization_config

    if get_quantization_config(model_args) is None or sharded:
        return None
    return "cpu" if use_cpu or not torch.cuda.is_available() else {"": PartialState().local_process_index}


def held_out_scorers(args) -> set[int]:
    """The processes that score the held-out rows after training: the main one, or none where FSDP or ZeRO-3
    shard the trained weights over all processes (one cannot score them; `negteacher eval` scores the saved
    adapter in one process)."""
    from ..training.trainer import shards_parameters

    return set() if shards_parameters(args) else {0}


def _load_policy(model_args: NegTeacherModelConfig, use_cpu: bool, sharded: bool = False):
    from trl.trainer.utils import get_quantization_config

    from ..models import load_causal_lm

    return load_causal_lm(model_args.model_name_or_path, quantization=get_quantization_config(model_args),
                          dtype=model_args.dtype, device_map=policy_device_map(model_args, use_cpu, sharded),
                          sharded=sharded)


def _check_output_dir(output_dir: str) -> None:
    """Fail before any model loads when `output_dir` cannot be a folder (a file stands on its path)."""
    path = Path(output_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise RecipeError(f"output_dir {output_dir!r} {where}; expected a folder")


def _epoch_steps(num_rows: int, args: NegativeTeacherConfig) -> int:
    """Optimizer steps of `num_train_epochs` over `num_rows` rows, as the Trainer counts them."""
    from accelerate import PartialState

    per_process = math.ceil(num_rows / PartialState().num_processes)
    batches = math.ceil(per_process / args.per_device_train_batch_size)
    return math.ceil(args.num_train_epochs * math.ceil(batches / args.gradient_accumulation_steps))


def _prepare(argv: list[str], prog: str):
    from ..models import decoder_block_count, load_tokenizer, vocabulary_size
    from ..training.chosen_sources import check_checkpoint, chosen_source, reads_reference
    from ..training.negative_sources import negative_source, setup_sources

    model_args, data_args, args = parse((NegTeacherModelConfig, DataArguments, NegativeTeacherConfig), argv, prog)
    _check_output_dir(args.output_dir)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    args.teacher_config().check_blocks(decoder_block_count(model_args.model_name_or_path))
    if args.reads_checkpoint() and args.chosen_checkpoint:
        check_checkpoint(args.chosen_checkpoint, tokenizer, vocabulary_size(model_args.model_name_or_path))
    chosen = chosen_source(args.chosen_source)
    train = _rows_and_pairs(data_args.dataset, data_args.num_train_rows, tokenizer, args.max_length,
                            require_answer=reads_reference(chosen), drop_references=data_args.drop_references)
    if args.negatives_mode == "online":  # a source's own checks of the rows (negative_source: dataset needs `rejected`)
        setup_sources(train[0], negative_source(args.negative_source), chosen)
    held_out = None
    if data_args.eval_dataset:
        held_out = _rows_and_pairs(data_args.eval_dataset, data_args.num_eval_rows, tokenizer, args.max_length)
    return model_args, data_args, args, tokenizer, train, held_out


def train_command(argv: list[str]) -> None:
    from transformers.trainer_utils import get_last_checkpoint
    from trl.trainer.utils import get_peft_config

    from ..evaluation.lm_eval_glue import write_command_folder
    from ..evaluation.report import card_block, to_eval_results, to_markdown, write_table
    from ..evaluation.runner import adapter_perplexity_table
    from ..models import checkpoint_weights, resolve_source
    from ..training.trainer import NegativeTeacherTrainer, shards_parameters

    model_args, data_args, args, tokenizer, (rows, _), held_out = _prepare(argv, "negteacher train")
    if model_args.load_in_4bit and not model_args.use_peft:
        raise RecipeError("load_in_4bit=true needs use_peft=true: a 4-bit base is trained through a LoRA adapter")
    if held_out is not None and not held_out_scorers(args):
        logger.warning("no held-out table after training: under FSDP or DeepSpeed ZeRO-3 the trained weights are "
                       "sharded across processes; score the saved adapter with `negteacher eval` in one process")
        held_out = None
    steps = args.max_steps if args.max_steps > 0 else _epoch_steps(len(rows), args)
    epochs = "" if args.max_steps > 0 else f" (max_steps=-1: num_train_epochs={args.num_train_epochs:g})"
    weights = "4-bit NF4" if model_args.load_in_4bit else model_args.dtype
    logger.info("training %s%s (%s) on %d rows of %s, teacher %s, %d optimizer steps%s; output in %s",
                "a LoRA adapter on " if model_args.use_peft else "", model_args.model_name_or_path, weights, len(rows),
                data_args.dataset, args.teacher, steps, epochs, args.output_dir)
    model = _load_policy(model_args, args.use_cpu, shards_parameters(args))
    trainer = NegativeTeacherTrainer(model, args, rows, processing_class=tokenizer,
                                     peft_config=get_peft_config(model_args),
                                     teacher_weights=checkpoint_weights(model_args.model_name_or_path),
                                     base_model_id=model_args.base_model_id)
    trainer.dataset_name = data_args.dataset
    resume = args.resume_from_checkpoint
    if resume is None and Path(args.output_dir).is_dir():
        resume = get_last_checkpoint(args.output_dir)  # an interrupted run continues
        if resume:
            logger.info("resuming from %s", resume)
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        where = (f"it resumes from {last}" if last else
                 f"no checkpoint was saved yet (save_steps {args.save_steps}), so it starts over")
        print(f"\nnegteacher train: interrupted at step {trainer.state.global_step}; run the same command again and "
              f"{where}", file=sys.stderr)
        sys.exit(130)
    trainer.save_model(args.output_dir)
    if not trainer.is_world_process_zero():
        return  # the held-out table and the card are the main process's work alone
    if held_out is not None:
        table = adapter_perplexity_table(trainer.accelerator.unwrap_model(trainer.model), tokenizer, held_out[1],
                                         teacher=trainer.teacher, batch_size=args.per_device_eval_batch_size)
        write_table(table, data_args.eval_dataset, args.output_dir)
        print(to_markdown(table, data_args.eval_dataset))
        trainer.eval_results = to_eval_results(table, data_args.eval_dataset)
        trainer.eval_blocks = [card_block(table, data_args.eval_dataset)]
    trainer.create_model_card()
    print(f"\nadapter, model card and evaluation table in {args.output_dir}")
    if held_out is not None:
        command = write_command_folder(Path(args.output_dir) / "lm_eval", tokenizer,
                                       resolve_source(model_args.model_name_or_path), args.output_dir,
                                       pairs=held_out[1])
        print(f"the held-out rows with the plain lm-eval command line (the unquantized checkpoint + adapter; "
              f"pip install -e '.[eval]'):\n  {command}")


def generate_command(argv: list[str]) -> None:
    from ..models import checkpoint_weights
    from ..teacher.build import build_negative_teacher
    from ..training.chosen_sources import chosen_source
    from ..training.offline import generate_preference_dataset, offline_chosen
    from ..training.trainer import shards_parameters

    model_args, data_args, args, tokenizer, (rows, pairs), _ = _prepare(argv, "negteacher generate")
    policy = _load_policy(model_args, args.use_cpu, shards_parameters(args))
    teacher = build_negative_teacher(policy, config=args.teacher_config(),
                                     weights=checkpoint_weights(model_args.model_name_or_path))
    path = Path(args.negatives_path or Path(args.output_dir) / "negatives.jsonl")
    meta = generate_preference_dataset(
        teacher, tokenizer, rows, pairs, path, settings=args.generation_settings(),
        teacher_spec=args.teacher, num_negatives=args.num_negatives,
        negative_filter=args.negative_filter(),
        keep_dataset_rejected=args.keep_dataset_rejected,
        chosen=offline_chosen(chosen_source(args.chosen_source), policy, args),
    )
    chosen = meta.get("chosen", {"source": "reference"})  # files written before chosen sources name none
    written_by = "" if chosen["source"] == "reference" else f"; {chosen['cut_off']} chosen answers cut off"
    print(f"{path}: {meta['rows_written']} pairs from {meta['source_rows']} rows, chosen: {chosen['source']}"
          f"{written_by}; filtered {meta['counts']}")


def export_teacher_command(argv: list[str]) -> None:
    """The recipe's teacher as a plain transformers checkpoint in `output_dir`, for any engine to serve."""
    from ..models import checkpoint_weights, decoder_block_count, load_tokenizer
    from ..teacher.build import build_negative_teacher
    from ..teacher.export import check_exportable, export_teacher

    model_args, _, args = parse((NegTeacherModelConfig, DataArguments, NegativeTeacherConfig), argv,
                                "negteacher export-teacher")
    _check_output_dir(args.output_dir)
    output = Path(args.output_dir)
    if output.exists() and any(output.iterdir()):
        raise RecipeError(f"output_dir {args.output_dir!r} is not empty; export-teacher writes a new folder")
    check_exportable(args.teacher_config())
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    args.teacher_config().check_blocks(decoder_block_count(model_args.model_name_or_path))
    policy = _load_policy(model_args, args.use_cpu)
    teacher = build_negative_teacher(policy, config=args.teacher_config(),
                                     weights=checkpoint_weights(model_args.model_name_or_path))
    layers = "NF4 (the 4-bit policy's), dequantized" if model_args.load_in_4bit else "as in the checkpoint"
    export_teacher(teacher, tokenizer, output, source=model_args.model_name_or_path, setting=args.teacher,
                   policy_weights=layers)
    print(f"{output}: the teacher {args.teacher} of {model_args.model_name_or_path} as a plain checkpoint; serve it "
          "with any engine, e.g. `vllm serve " + str(output) + "`")


def calibrate_command(argv: list[str]) -> None:
    from trl.trainer.utils import get_quantization_config

    from ..data.rows import load_rows, validate_rows
    from ..generation import GenerationSettings
    from ..models import checkpoint_weights, decoder_block_count, load_causal_lm, load_tokenizer
    from ..teacher.calibrate import calibrate

    model_args, args = parse((NegTeacherModelConfig, CalibrateArguments), argv, "negteacher calibrate")
    grid = args.teacher_configs()
    _check_output_dir(args.output_dir)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    blocks = decoder_block_count(model_args.model_name_or_path)
    for config in grid:
        config.check_blocks(blocks)
    pairs = validate_rows(load_rows(args.dataset)[: args.num_rows], tokenizer)
    model = load_causal_lm(model_args.model_name_or_path, quantization=get_quantization_config(model_args),
                           dtype=model_args.dtype)
    generation = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    seed=args.seed, batch_size=args.batch_size)
    weights = checkpoint_weights(model_args.model_name_or_path)
    report = calibrate(model, tokenizer, pairs, grid, weights=weights, target_ratio=args.target_ratio,
                       generation=generation, trivial_margin=args.trivial_margin, batch_size=args.batch_size)
    paths = report.write(args.output_dir)
    print(report.to_markdown())
    for warning in report.warnings():
        logger.warning(warning)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))


def eval_command(argv: list[str]) -> None:
    from peft import PeftModel
    from transformers import AutoConfig

    from ..evaluation.comparison import compare_markdown
    from ..evaluation.lm_eval_glue import write_command_folder
    from ..evaluation.perplexity import check_engines, check_window, load_eval_data
    from ..evaluation.preference import heldout_negatives
    from ..evaluation.report import card_block, to_eval_results, to_markdown
    from ..evaluation.runner import EvalSettings, adapter_variants, evaluate, model_variants
    from ..hub import dataset_label, update_card_evaluation
    from ..models import base_model_info, cache_dir, checkpoint_weights, load_causal_lm, load_tokenizer, resolve_source
    from ..teacher.build import build_negative_teacher

    model_args, data_args, args, eval_args = parse(
        (NegTeacherModelConfig, DataArguments, NegativeTeacherConfig, EvalArguments), argv, "negteacher eval")
    if not data_args.eval_dataset:
        raise RecipeError("eval needs eval_dataset (e.g. --eval_dataset bundled:eval)")
    if eval_args.compare is not None and len(eval_args.compare) != 2:
        raise RecipeError(f"compare: expected two trained output_dirs A B, got {eval_args.compare}")
    adapters = [Path(a) for a in eval_args.compare] if eval_args.compare else [Path(args.output_dir)]
    for adapter in adapters:
        if not (adapter / "adapter_config.json").is_file():
            raise RecipeError(f"{adapter} holds no trained adapter (adapter_config.json); run negteacher train first")
    card = Path(args.output_dir) / "README.md"
    if eval_args.update_card and (eval_args.compare or not card.is_file()):
        raise RecipeError(f"update_card: {'--compare updates no card' if eval_args.compare else f'{card} not found'}")
    if eval_args.eval_dir:
        output_dir = Path(eval_args.eval_dir)
    elif eval_args.compare:
        output_dir = Path(args.output_dir)
    else:  # its own folder, beside (not over) the trained run's eval.*
        output_dir = Path(args.output_dir, "evaluations", dataset_label(data_args.eval_dataset))
    _check_output_dir(str(output_dir))
    check_engines(eval_args.engines)
    quality = eval_args.quality_settings(args.per_device_eval_batch_size) if eval_args.quality else None
    if quality is not None:
        quality.check()
    contrast = eval_args.contrast_settings()
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    data = load_eval_data(data_args.eval_dataset, tokenizer, limit=data_args.num_eval_rows,
                          text_column=eval_args.text_column, max_length=args.max_length)
    if data.texts and eval_args.compare:
        raise RecipeError(f"compare needs prompt/answer rows; {data_args.eval_dataset} holds plain text")
    base_dir = resolve_source(model_args.model_name_or_path)
    context = AutoConfig.from_pretrained(base_dir).max_position_embeddings
    window = eval_args.window or min(context, 1024)
    stride = eval_args.stride or max(1, window // 2)
    check_window(window, stride, context)
    settings = EvalSettings(engines=eval_args.engines, window=window, stride=stride,
                            batch_size=args.per_device_eval_batch_size, quality=quality, contrast=contrast,
                            dequantize_once=args.teacher_dequantize_once,
                            bootstrap_resamples=eval_args.bootstrap_resamples)

    base = _load_policy(model_args, args.use_cpu)
    teacher = build_negative_teacher(base, config=args.teacher_config(),
                                     weights=checkpoint_weights(model_args.model_name_or_path))
    negatives = None
    if quality is not None and data.pairs:
        negatives = heldout_negatives(teacher, tokenizer, data.pairs, args.generation_settings(),
                                      teacher_key=f"{args.teacher}@{base_dir}", cache_dir=cache_dir())
    names = [f"{label}: {a.name}" for label, a in zip("AB", adapters, strict=True)] if eval_args.compare else []
    model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name=names[0] if names else "default").eval()
    if eval_args.compare:
        model.load_adapter(str(adapters[1]), adapter_name=names[1])
        variants = adapter_variants(model, names)
    else:
        full_precision = load_causal_lm(model_args.model_name_or_path, dtype=model_args.dtype).eval()
        variants = model_variants(model, teacher=teacher, full_precision=full_precision)
        weights = [f"unquantized checkpoint: {base_model_info(full_precision).weights}",
                   f"base: {base_model_info(base).weights}"]
    checkpoint = None  # the round trip's judge, and what every model's token KL is measured from
    if data.pairs:
        checkpoint = (full_precision if not eval_args.compare
                      else load_causal_lm(model_args.model_name_or_path, dtype=model_args.dtype).eval())
    outcome = evaluate(variants, tokenizer, data, settings, teacher=teacher, teacher_spec=args.teacher,
                       output_dir=output_dir, negatives=negatives, compare=names,
                       notes=[] if eval_args.compare else weights,
                       judge=checkpoint if quality is not None and data.roundtrip_rows else None,
                       checkpoint=checkpoint)
    print(to_markdown(outcome.table, data_args.eval_dataset, outcome.notes))
    if eval_args.compare:
        print("\n" + compare_markdown(outcome.differences, names[0], names[1], outcome.table[0].rows))
        print(f"\nwrote eval.*, compare.md/json/png and generations.jsonl in {output_dir}")
        return
    if eval_args.update_card:
        update_card_evaluation(card, to_eval_results(outcome.table, data_args.eval_dataset),
                               card_block(outcome.table, data_args.eval_dataset))
    command = write_command_folder(output_dir / "lm_eval", tokenizer, base_dir, args.output_dir, pairs=data.pairs,
                                   texts=data.texts)
    print(f"\nwrote eval.md, eval.json, eval.png in {output_dir}"
          f"{f' and merged the evaluation into {card}' if eval_args.update_card else ''}. The same rows with the "
          f"plain lm-eval command line (the unquantized checkpoint + adapter):\n  {command}")


def push_command(argv: list[str]) -> None:
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HTTPError, OfflineModeIsEnabled

    from ..hub import local_base_model

    _, _, args = parse((NegTeacherModelConfig, DataArguments, NegativeTeacherConfig), argv, "negteacher push")
    folder = Path(args.output_dir)
    missing = [name for name in ("adapter_model.safetensors", "adapter_config.json", "README.md")
               if not (folder / name).is_file()]
    if missing:
        raise RecipeError(f"{folder} is not a trained output_dir: missing {', '.join(missing)} (run negteacher train)")
    if not args.hub_model_id:
        raise RecipeError("push needs hub_model_id (e.g. --hub_model_id you/smollm2-negteacher)")
    local = local_base_model(folder)
    if local:
        raise RecipeError(f"{folder / 'adapter_config.json'} names the local folder {local!r} as its base model, "
                          "which no one else has: train with --base_model_id <Hub id of the base>")
    token = args.hub_token or get_token()
    if not token:
        raise RecipeError(f"no Hugging Face token: log in with `hf auth login` or set HF_TOKEN; {folder} is ready "
                          "to push")
    api = HfApi(token=token)
    try:
        api.create_repo(args.hub_model_id, private=args.hub_private_repo, exist_ok=True)
        commit = api.upload_folder(repo_id=args.hub_model_id, folder_path=folder, allow_patterns=PUSHED_FILES,
                                   commit_message="Upload negteacher adapter")
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise RecipeError(f"the Hub refused the push to {args.hub_model_id} (HTTP {status}: "
                          f"{' '.join(str(error).split())[:160]})") from None
    except (HTTPError, OfflineModeIsEnabled) as error:
        raise RecipeError(f"could not reach the Hugging Face Hub ({type(error).__name__}: {error}); {folder} is "
                          "complete: run this command again when online") from None
    print(f"pushed {folder} to {commit.commit_url if hasattr(commit, 'commit_url') else commit}")


PUSHED_FILES = ["adapter_model.safetensors", "adapter_config.json", "README.md", "eval.md", "eval.json", "eval.png",
                "tokenizer*", "chat_template.jinja"]
