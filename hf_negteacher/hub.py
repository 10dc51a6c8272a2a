"""Model card rendering and the folder pushed to the Hub."""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .atomic_write import atomic_write_text
from .data import BUNDLED_SPLITS

TEMPLATE = Path(__file__).parent / "model_cards" / "negteacher_adapter.md"
TAGS = ["negteacher", "dpo", "qlora", "trl", "peft"]
_PACKAGES = ("hf-negteacher", "trl", "transformers", "peft", "bitsandbytes", "torch")


def render_model_card(*, base_model: str, repo_id: str, teacher: Mapping[str, object], dataset_name: str,
                      training: Mapping[str, object], train_metrics: Mapping[str, float] | None = None,
                      eval_results: Sequence[EvalResult] = (), evaluation_blocks: Sequence[str] = (),
                      trained_weights: str | None = None) -> ModelCard:
    """The adapter's model card: `library_name: peft`, `base_model` (a Hub id), our tags, which weights it
    was trained on, the teacher setting, the dataset, training metrics and, when given, evaluation results
    as a model-index and, in the text, `evaluation_blocks` (`evaluation.report.card_block`: adapter beside base)."""
    card_data = ModelCardData(
        base_model=base_model, library_name="peft", tags=TAGS,
        datasets=[dataset_name] if is_hub_dataset_id(dataset_name) else None,
        model_name=repo_id.split("/")[-1], eval_results=list(eval_results) or None,
        pipeline_tag="text-generation",
    )
    card_data.tags = [*TAGS, f"base_model:adapter:{base_model}"]
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=repo_id.split("/")[-1], base_model=base_model,
        repo_id=repo_id, teacher=dict(teacher), dataset_name=dataset_name,
        trained_weights=trained_weights or f"{base_model} as published on the Hub",
        evaluation=evaluation_section(evaluation_blocks),
        train_metrics={k: f"{v:.4g}" for k, v in (train_metrics or {}).items()}, versions=versions, **training,
    )


def evaluation_section(blocks: Sequence[str]) -> str:
    """The card's evaluation text, between the `negteacher-eval` markers: one block per dataset."""
    if not blocks:
        return "No evaluation was attached to this adapter: run `negteacher eval --update_card` to score it."
    return "\n\n".join(blocks)


_SECTION = re.compile(r"(<!-- negteacher-eval -->\n)(.*?)(\n<!-- /negteacher-eval -->)", flags=re.S)


def update_card_evaluation(card_path: str | Path, eval_results: Sequence[EvalResult], block: str) -> None:
    """Merge one dataset's evaluation into a saved card (atomically): its model-index entries replace those of
    the same dataset, and `block` (headed `### <dataset>`) the text block of the same heading; the other
    datasets' entries and blocks stay."""
    card_path = Path(card_path)
    card = ModelCard(card_path.read_text(encoding="utf-8"))
    card.data.model_name = card.data.model_name or card_path.parent.name
    datasets = {r.dataset_name for r in eval_results}
    kept = [r for r in card.data.eval_results or [] if r.dataset_name not in datasets]
    card.data.eval_results = [*kept, *eval_results] or None
    found = _SECTION.search(card.text)
    blocks = [b for b in re.split(r"\n(?=### )", found.group(2) if found else "") if b.startswith("### ")]
    heading = block.splitlines()[0]
    blocks = [b.strip() for b in blocks if b.splitlines()[0] != heading] + [block]
    section = evaluation_section(blocks)
    if found:
        card.text = _SECTION.sub(lambda m: m.group(1) + section + m.group(3), card.text)
    else:
        card.text += f"\n## Evaluation\n\n<!-- negteacher-eval -->\n{section}\n<!-- /negteacher-eval -->\n"
    atomic_write_text(card_path, str(card))


def name_adapter_base(adapter_dir: str | Path, hub_id: str) -> None:
    """Write `hub_id` as `base_model_name_or_path` into `adapter_dir/adapter_config.json` (atomically)."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = hub_id
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def local_base_model(adapter_dir: str | Path) -> str | None:
    """The base named in `adapter_dir/adapter_config.json` when it is a local path, not a Hub id; else None."""
    name = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) and not name.startswith(".") and not Path(name).exists():
        return None
    return name


def is_hub_dataset_id(name: str) -> bool:
    """`owner/name` that is not a local path: the only form the card's `datasets` field may list."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def dataset_label(name: str) -> str:
    """A readable name for a dataset source in the card's model-index (`bundled:eval` and paths too)."""
    split = name.removeprefix("bundled:")
    if name.startswith("bundled:") and split in BUNDLED_SPLITS:
        return BUNDLED_SPLITS[split].stem.replace("_", "-")
    return name if is_hub_dataset_id(name) else Path(name).stem


def last_logged_metrics(log_history: Sequence[Mapping[str, float]], keys: Sequence[str]) -> dict[str, float]:
    """The most recent value of each key in a Trainer's `state.log_history`."""
    found: dict[str, float] = {}
    for entry in reversed(log_history):
        for key in keys:
            if key in entry and key not in found:
                found[key] = float(entry[key])
    return {k: found[k] for k in keys if k in found}
