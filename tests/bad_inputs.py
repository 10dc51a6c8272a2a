"""The bad inputs a new user can give the `negteacher` command line, and the one line each one gets.

`tests/test_bad_inputs.py` runs every case; `python tests/bad_inputs.py` rewrites `docs/bad-inputs.md`
from what the commands print, so the table there is what the tests see.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "recipes" / "smollm2-135m" / "negteacher.yaml")
DOC = ROOT / "docs" / "bad-inputs.md"


@dataclass
class Case:
    id: str
    what: str
    """The bad input, in words."""
    argv: Callable[[Path], list[str]]
    """Builds whatever files the case needs under a temporary folder and returns the command line."""
    expect: str
    """A fragment the one-line message must contain."""
    env: dict[str, str] = field(default_factory=dict)
    patches: dict[str, object] = field(default_factory=dict)
    """Attributes set for the run, e.g. a Hub endpoint nobody listens on."""
    warns: bool = False
    """The command goes on (up to loading the model, here) after one warning line, rather than exiting 2."""


def _file(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _jsonl(tmp: Path, rows: list) -> str:
    return _file(tmp, "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _adapter_dir(tmp: Path, base: str = "HuggingFaceTB/SmolLM2-135M-Instruct") -> str:
    folder = tmp / "run"
    _file(folder, "adapter_config.json", json.dumps({"base_model_name_or_path": base}))
    _file(folder, "adapter_model.safetensors", b"\0")
    _file(folder, "README.md", "---\nlibrary_name: peft\n---\n")
    return str(folder)


def other_vocabulary_checkpoint(tmp: Path) -> str:
    """A checkpoint folder (config and tokenizer) whose 96-word vocabulary is not SmolLM2's."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    folder = tmp / "other-vocabulary"
    words = {f"w{i}": i for i in range(95)} | {"<unk>": 95}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(words, unk_token="<unk>")), unk_token="<unk>",
                            pad_token="<unk>").save_pretrained(folder)
    LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(folder)
    return str(folder)


def _train(*flags: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["train", RECIPE, "--output_dir", str(tmp / "out"), *flags]


def _eval(*flags: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["eval", RECIPE, "--output_dir", _adapter_dir(tmp), *flags]


CASES = [
    Case("unknown-command", "a command that does not exist", lambda tmp: ["trian"], "did you mean train?"),
    Case("recipe-missing", "a recipe path that does not exist", lambda tmp: ["train", str(tmp / "nope.yaml")],
         "not found"),
    Case("recipe-not-yaml", "a recipe that is not valid YAML",
         lambda tmp: ["train", _file(tmp, "r.yaml", "model: [unclosed\n")], "not valid YAML"),
    Case("recipe-empty", "an empty (0-byte) recipe", lambda tmp: ["train", _file(tmp, "r.yaml", "")],
         "empty; expected a mapping of fields"),
    Case("recipe-list", "a recipe that is a list, not a mapping",
         lambda tmp: ["train", _file(tmp, "r.yaml", "- a\n- b\n")], "expected a mapping of fields, got list"),
    Case("recipe-unknown-key", "a misspelt key in a recipe section",
         lambda tmp: ["train", _file(tmp, "r.yaml", "teacher:\n  teacher_quantiser: int3\n")],
         "did you mean teacher_quantizer?"),
    Case("recipe-wrong-type", "a recipe value of the wrong type",
         lambda tmp: ["train", _file(tmp, "r.yaml", "max_steps: ten\n")], "key 'max_steps' = 'ten' is not of type int"),
    Case("recipe-twice", "the same key twice (top level and a section)",
         lambda tmp: ["train", _file(tmp, "r.yaml", "max_steps: 3\ntraining:\n  max_steps: 4\n")], "given twice"),
    Case("two-recipes", "a recipe and --config together",
         lambda tmp: ["train", RECIPE, "--config", RECIPE], "give one recipe"),
    Case("flag-unknown", "a misspelt command-line flag", _train("--max_stepz", "3"),
         "unknown option --max_stepz; did you mean --max_steps?"),
    Case("flag-bad-int", "a flag value that is not a number", _train("--max_steps", "ten"),
         "--max_steps/--max-steps: invalid int value: 'ten'"),
    Case("flag-bad-choice", "a value outside a field's choices", _train("--lr_scheduler_type", "sideways"),
         "sideways"),
    Case("max-steps-zero", "--max_steps 0", _train("--max_steps", "0"), "max_steps=0: give a positive number"),
    Case("max-steps-negative", "--max_steps -5", _train("--max_steps", "-5"), "max_steps=-5"),
    Case("teacher-blocks-outside", "teacher blocks the model does not have", _train("--teacher", "int3,blocks=0-99"),
         "the model has"),
    Case("learning-rate-negative", "--learning_rate -1", _train("--learning_rate", "-1"),
         "learning_rate=-1 must be >= 0"),
    Case("batch-size-zero", "--per_device_train_batch_size 0", _train("--per_device_train_batch_size", "0"),
         "per_device_train_batch_size=0 must be >= 1"),
    Case("lora-r-zero", "--lora_r 0", _train("--lora_r", "0"), "lora_r=0 must be >= 1"),
    Case("lora-alpha-zero", "--lora_alpha 0 (an adapter scaled to nothing)", _train("--lora_alpha", "0"),
         "lora_alpha=0 must be > 0"),
    Case("lora-dropout", "--lora_dropout 1.5", _train("--lora_dropout", "1.5"), "lora_dropout=1.5 must be in [0, 1)"),
    Case("epochs-zero", "--num_train_epochs 0 with max_steps -1",
         _train("--num_train_epochs", "0", "--max_steps", "-1"), "trains nothing"),
    Case("save-steps-zero", "--save_steps 0 with save_strategy steps", _train("--save_steps", "0"),
         "save_steps=0 with save_strategy=steps must be > 0"),
    Case("max-grad-norm-negative", "--max_grad_norm -1", _train("--max_grad_norm", "-1"),
         "max_grad_norm=-1 must be >= 0"),
    Case("negatives-top-p", "--negatives_top_p 0", _train("--negatives_top_p", "0"),
         "negatives_top_p=0 must be in (0, 1]"),
    Case("teacher-quantizer", "an unknown teacher quantizer", _train("--teacher", "int7"),
         "quantizer='int7' is unknown"),
    Case("teacher-strength", "a teacher strength above 1", _train("--teacher", "int3,strength=1.5"),
         "strength=1.5 must be in (0, 1]"),
    Case("teacher-group-size", "a zero group size", _train("--teacher", "int3,group_size=0"), "group_size=0"),
    Case("teacher-twice", "the teacher spec and a deprecated teacher_* field together",
         _train("--teacher", "int4", "--teacher_blocks", "0"), "not both"),
    Case("negatives-mode", "an unknown negatives_mode", _train("--negatives_mode", "sometimes"),
         "negatives_mode='sometimes'"),
    Case("negative-source", "an unknown negative source", _train("--negative_source", "oracle"),
         "negative_source='oracle'; allowed: teacher, self, in_batch, dataset"),
    Case("dataset-source-without-rejected", "negative_source dataset on rows that have no rejected answer",
         _train("--negative_source", "dataset"), "negative_source='dataset': row 0 has no `rejected` answer"),
    Case("chosen-source", "an unknown chosen source", _train("--chosen_source", "oracle"),
         "chosen_source='oracle'; allowed: reference"),
    Case("chosen-checkpoint-missing", "a chosen_checkpoint folder that does not exist",
         lambda tmp: _train("--chosen_source", "checkpoint", "--chosen_checkpoint", str(tmp / "nope"))(tmp),
         "cannot be loaded"),
    Case("chosen-checkpoint-vocabulary", "a chosen_checkpoint with another vocabulary than the policy's",
         lambda tmp: _train("--loss_type", "sigmoid", "checkpoint_kd", "--chosen_checkpoint",
                            other_vocabulary_checkpoint(tmp))(tmp), "has another vocabulary (96 tokens"),
    Case("negative-source-offline", "an online-only negative source with offline negatives",
         _train("--negative_source", "self", "--negatives_mode", "offline"), "is online only"),
    Case("num-negatives", "--num_negatives 0", _train("--num_negatives", "0"), "num_negatives=0 must be >= 1"),
    Case("greedy-several-negatives", "several negatives per prompt with greedy decoding",
         _train("--num_negatives", "2", "--negatives_temperature", "0"), "negatives_temperature=0 (greedy)"),
    Case("unlikelihood-alone", "the token-level loss alone", _train("--loss_type", "teacher_unlikelihood"),
         "only push tokens down"),
    Case("4bit-without-peft", "a 4-bit base without LoRA", _train("--use_peft", "false"),
         "load_in_4bit=true needs use_peft=true"),
    Case("output-dir-file", "an output_dir that is a file",
         lambda tmp: ["train", RECIPE, "--output_dir", _file(tmp, "taken", "x")], "is a file; expected a folder"),
    Case("output-dir-under-file", "an output_dir under a regular file",
         lambda tmp: ["train", RECIPE, "--output_dir", _file(tmp, "taken", "x") + "/run"],
         "cannot be created"),
    Case("dataset-missing", "a dataset file that does not exist",
         lambda tmp: _train("--dataset", str(tmp / "missing.jsonl"))(tmp), "not found"),
    Case("dataset-json-invalid", "a .json dataset that is not valid JSON",
         lambda tmp: _train("--dataset", _file(tmp, "rows.json", '[{"prompt": "a",\n'))(tmp), "not valid JSON"),
    Case("dataset-jsonl-bad-line", "a .jsonl dataset with a broken line",
         lambda tmp: _train("--dataset", _file(tmp, "rows.jsonl", '{"prompt": "a", "completion": "b"}\n{oops\n'))(tmp),
         "rows.jsonl:2: not valid JSON"),
    Case("dataset-empty", "an empty .jsonl dataset",
         lambda tmp: _train("--dataset", _file(tmp, "rows.jsonl", ""))(tmp), "is empty"),
    Case("dataset-csv", "a dataset in an unsupported format (.csv)",
         lambda tmp: _train("--dataset", _file(tmp, "rows.csv", "a,b\n"))(tmp), "expected bundled:train"),
    Case("dataset-bundled-split", "a bundled split that does not exist", _train("--dataset", "bundled:tets"),
         "allowed bundled splits"),
    Case("dataset-number-answer", "a row whose completion is a number",
         lambda tmp: _train("--dataset", _jsonl(tmp, [{"prompt": "q", "completion": 5}]))(tmp),
         "row 0: the answer must be text"),
    Case("dataset-columns", "rows with columns no format knows",
         lambda tmp: _train("--dataset", _jsonl(tmp, [{"question": "q", "answer": "a"}]))(tmp),
         "fits no accepted format"),
    Case("dataset-not-rows", "a .json list of numbers, not rows",
         lambda tmp: _train("--dataset", _file(tmp, "rows.json", "[1, 2]"))(tmp), "expected a row of named columns"),
    Case("dataset-not-utf8", "a dataset file that is not UTF-8 text",
         lambda tmp: _train("--dataset", _file(tmp, "rows.jsonl", b'{"prompt": "\xff\xfe"}\n'))(tmp), "not UTF-8"),
    Case("dataset-messages", "chat messages that end with neither an assistant nor a user turn",
         lambda tmp: _train("--dataset", _jsonl(tmp, [{"messages": [{"role": "system", "content": "hi"}]}]))(tmp),
         "ending with an assistant turn"),
    Case("dataset-prompt-only", "prompts alone, with the chosen side from the reference (the default)",
         lambda tmp: _train("--dataset", _jsonl(tmp, [{"messages": [{"role": "user", "content": "hi"}]}]))(tmp),
         "set chosen_source: policy"),
    Case("dataset-empty-answer", "a row whose reference answer is empty",
         lambda tmp: _train("--dataset", _jsonl(tmp, [{"prompt": "Say hi.", "completion": " "}]))(tmp),
         "empty reference answer"),
    Case("prompt-too-long", "prompts longer than max_length", _train("--max_length", "8"),
         "not fewer than max_length=8"),
    Case("answer-too-long", "an answer that runs past max_length after its prompt",
         lambda tmp: _train("--max_length", "64", "--eval_dataset", "none", "--dataset", _jsonl(tmp, [
             {"prompt": "Say hi.", "completion": " hi"},
             {"prompt": "Count.", "completion": " " + " ".join(str(i) for i in range(60))}]))(tmp),
         "1 of 2 rows", warns=True),
    Case("sharded-held-out", "a held-out table asked for under FSDP or ZeRO-3 (weights sharded across processes)",
         _train(), "no held-out table after training", env={"ACCELERATE_USE_FSDP": "true"}, warns=True),
    Case("model-missing-dir", "a model folder that does not exist",
         lambda tmp: ["train", "--model_name_or_path", str(tmp / "no-such-model"), "--output_dir", str(tmp / "o")],
         "not a model directory or a .gguf file"),
    Case("model-no-config", "a model folder without config.json",
         lambda tmp: ["train", "--model_name_or_path", str(Path(_file(tmp, "m/x.txt", "x")).parent),
                      "--output_dir", str(tmp / "o")], "directory has no config.json"),
    Case("model-missing-gguf", "a .gguf file that does not exist",
         lambda tmp: ["train", "--model_name_or_path", str(tmp / "m.gguf"), "--output_dir", str(tmp / "o")],
         "GGUF file not found"),
    Case("model-hub-offline", "a Hub id with no network",
         lambda tmp: ["train", "--model_name_or_path", "nobody/no-such-model", "--output_dir", str(tmp / "o")],
         "could not be loaded", patches={"huggingface_hub.constants.HF_HUB_OFFLINE": True}),
    Case("generate-num-negatives", "generate with --num_negatives 0",
         lambda tmp: ["generate", RECIPE, "--output_dir", str(tmp / "o"), "--num_negatives", "0"],
         "num_negatives=0"),
    Case("calibrate-empty-grid", "calibrate with an empty grid in the recipe",
         lambda tmp: ["calibrate", _file(tmp, "c.yaml", "grid: []\n")], "grid is empty"),
    Case("calibrate-grid-flag", "calibrate --grid with no setting", lambda tmp: ["calibrate", "--grid"],
         "argument --grid: expected at least one argument"),
    Case("calibrate-target-ratio", "calibrate --target_ratio 0.5", lambda tmp: ["calibrate", "--target_ratio", "0.5"],
         "target_ratio=0.5 must be > 1"),
    Case("calibrate-bad-setting", "calibrate with a setting field that does not exist",
         lambda tmp: ["calibrate", "--grid", "int3,bogus=1"], "bogus"),
    Case("calibrate-num-rows", "calibrate --num_rows 0", lambda tmp: ["calibrate", "--num_rows", "0"],
         "num_rows=0 must be >= 1"),
    Case("calibrate-output-dir", "calibrate into an output_dir under a file",
         lambda tmp: ["calibrate", "--output_dir", _file(tmp, "taken", "x") + "/c"], "cannot be created"),
    Case("eval-no-adapter", "eval of an output_dir that holds no adapter",
         lambda tmp: ["eval", RECIPE, "--output_dir", str(tmp)], "holds no trained adapter"),
    Case("eval-no-data", "eval with no held-out data", _eval("--eval_dataset", ""), "eval needs eval_dataset"),
    Case("eval-compare-one", "eval --compare with one folder", lambda tmp: ["eval", RECIPE, "--compare", "a"],
         "compare: expected two trained output_dirs"),
    Case("eval-engine", "an unknown evaluation engine", _eval("--engines", "vllm"), "engines: expected some of"),
    Case("eval-beta", "a negative contrastive beta", _eval("--contrastive_beta", "-1"), "beta"),
    Case("eval-samples", "several greedy samples per prompt", _eval("--num_samples", "3"),
         "num_samples=3 with temperature 0"),
    Case("eval-window", "a window longer than the model's context", _eval("--window", "100000"),
         "larger than the model's context"),
    Case("export-activations", "export-teacher of a setting that rounds activations at run time",
         lambda tmp: ["export-teacher", RECIPE, "--teacher", "ternary", "--output_dir", str(tmp / "t")],
         "teacher='ternary,activation_bits=0'"),
    Case("export-not-empty", "export-teacher into a folder that holds files",
         lambda tmp: (tmp / "t").mkdir() or (tmp / "t" / "x").write_text("") or
         ["export-teacher", RECIPE, "--output_dir", str(tmp / "t")], "is not empty"),
    Case("push-not-trained", "push of a folder with no adapter",
         lambda tmp: ["push", "--output_dir", str(tmp), "--hub_model_id", "you/a"], "is not a trained output_dir"),
    Case("push-no-repo", "push without hub_model_id", lambda tmp: ["push", "--output_dir", _adapter_dir(tmp)],
         "push needs hub_model_id"),
    Case("push-local-base", "push of an adapter whose config names a local base folder",
         lambda tmp: ["push", "--output_dir", _adapter_dir(tmp, base=str(tmp)), "--hub_model_id", "you/a"],
         "names the local folder"),
    Case("push-no-token", "push with no Hugging Face token",
         lambda tmp: ["push", "--output_dir", _adapter_dir(tmp), "--hub_model_id", "you/a"], "no Hugging Face token",
         env={"HF_TOKEN": "", "HF_HOME": "{tmp}/hf-home"}),
    Case("push-offline", "push with no network",
         lambda tmp: ["push", "--output_dir", _adapter_dir(tmp), "--hub_model_id", "you/a"],
         "could not reach the Hugging Face Hub", env={"HF_TOKEN": "hf_test"},
         patches={"huggingface_hub.constants.ENDPOINT": "http://127.0.0.1:9"}),
]


LATE_WARNINGS = """After its sweep, `negteacher calibrate` also warns (in its output, `calibration.md` and
`calibration.json`) when no setting comes within 25% of `target_ratio` (the recommendation is then only the
closest), and when most pairs of a setting are inverted (the policy already finds the teacher's sample likelier
than the reference: the references are far from what the model writes). `tests/test_smollm2.py` checks both on
the real model.
"""


class ModelLoaded(AssertionError):
    """Raised in place of loading a model: every case must fail before that."""


def run_case(case: Case, tmp: Path) -> tuple[int | None, str]:
    """Run the command in-process: (exit code, everything it wrote to stderr)."""
    from hf_negteacher.cli import main

    argv = case.argv(tmp)
    env = {k: v.replace("{tmp}", str(tmp)) for k, v in case.env.items()}
    stderr = io.StringIO()
    logged = logging.StreamHandler(stderr)
    logged.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    with contextlib.ExitStack() as stack:
        logging.getLogger().addHandler(logged)
        stack.callback(logging.getLogger().removeHandler, logged)
        stack.enter_context(mock.patch.dict(os.environ, env))
        for name in [k for k, v in env.items() if v == ""]:
            os.environ.pop(name)
        stack.enter_context(mock.patch("hf_negteacher.models.load_causal_lm", side_effect=ModelLoaded(case.id)))
        for target, value in case.patches.items():
            stack.enter_context(mock.patch(target, value))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        try:
            main(argv)
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
        except ModelLoaded:
            code = None
    return code, stderr.getvalue()


def message_line(stderr: str, warns: bool = False) -> str:
    """The one line the command printed for the user (warnings of other libraries aside): its error, or
    with `warns` its warning."""
    start = "WARNING hf_negteacher" if warns else "negteacher"
    lines = [line for line in stderr.splitlines() if line.startswith(start)]
    return lines[-1] if lines else ""


def table(messages: dict[str, str], warns: bool = False) -> str:
    rows = [f"| case | bad input | what `negteacher` prints {'(and goes on)' if warns else '(exit code 2)'} |",
            "|---|---|---|"]
    for case in CASES:
        if case.warns == warns:
            text = messages[case.id].replace("|", "\\|")
            rows.append(f"| `{case.id}` | {case.what} | `` {text} `` |")
    return "\n".join(rows)


def main() -> None:
    messages = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            code, stderr = run_case(case, Path(tmp))
            messages[case.id] = message_line(stderr, case.warns).replace(tmp, "<tmp>")
            print(f"{case.id}: exit {code}: {messages[case.id]}", file=sys.stderr)
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(
        "# What each bad input gets\n\n"
        "Every case below exits with code 2 and one line on stderr, before any model loads (only the\n"
        "tokenizer is read where rows must be checked). `tests/test_bad_inputs.py` runs each case;\n"
        "`python tests/bad_inputs.py` rewrites this table from what the commands print. `<tmp>` stands for\n"
        "the case's temporary folder.\n\n" + table(messages) + "\n\n"
        "## Warned, not refused\n\n"
        "Each case below is one warning line, also before any model loads, and the command goes on.\n\n"
        + table(messages, warns=True) + "\n\n" + LATE_WARNINGS
    )


if __name__ == "__main__":
    main()
