"""The negative teacher: a frozen, packed low-bit copy of a causal LM that shares everything else.

`build_negative_teacher` returns a model of the same class as the source (so `generate` and
`forward(labels=...)` work as usual) in which every `nn.Linear` of the chosen decoder blocks is a
`PackedLinear`. Embeddings, norms, the LM head and the layers of blocks left unquantized are the
source model's own tensors, not copies; LoRA adapters are stripped (the teacher is the base).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterator, Mapping

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .bnb import dequantized_weight
from .layer import PackedLinear
from .spec import TeacherConfig, TeacherConfigError

logger = logging.getLogger(__name__)


def build_negative_teacher(model: nn.Module, quantizer: str = "ternary", *, config: TeacherConfig | None = None,
                           weights: Mapping[str, torch.Tensor] | None = None, standalone: bool = False,
                           **options) -> nn.Module:
    """Build the frozen low-bit teacher from a loaded causal LM (full precision, 4-bit, or PEFT).

    Pass either a `TeacherConfig` or its fields (`quantizer`, `granularity`, `group_size`,
    `blocks`, `strength`, `activation_bits`). `weights` (e.g. `models.checkpoint_weights(source)`)
    supplies the checkpoint's full-precision tensors by name; without it the layers' own weights are
    used, dequantized when 4-bit. Quantizing an NF4-dequantized weight again compounds both errors:
    on SmolLM2-135M int3 of the NF4 weights is noise (ppl 10^7) where int3 of the checkpoint's
    weights is not (ppl 600), so pass `weights` for a 4-bit policy. The source model is left unchanged.
    """
    if config is None:
        config = TeacherConfig(quantizer=quantizer, **options)
    elif options:
        raise TeacherConfigError(f"pass either config or options, not both (got {sorted(options)})")
    if standalone and (config.blocks is not None or config.strength < 1.0):
        raise TeacherConfigError(
            f"a standalone teacher (FSDP / ZeRO-3) cannot share the policy's layers: it needs blocks=None (all) "
            f"and strength=1, got blocks={config.blocks}, strength={config.strength}"
        )
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    replacements = {}
    for name, layer in _quantizable_linears(base_model, config):
        base_layer = _without_adapter(layer)
        device = _layer_device(base_layer)
        weight = _source_weight(name, base_layer, weights)
        if device.type != "meta":  # quantize where the layer lives (a GPU quantizes faster than the CPU)
            weight = weight.to(device)
        bias = getattr(base_layer, "bias", None)
        replacements[layer] = PackedLinear(
            weight, None if bias is None else bias.detach(), config,
            base=_share_frozen(base_layer, {}) if config.strength < 1.0 else None,
        ).to(device)  # the checkpoint's tensors are read onto the CPU: the codes go where the policy's layer is
    teacher = _share_frozen(base_model, replacements, standalone)
    if standalone:
        _fill_partitioned(teacher, weights)
    teacher.teacher_config = config
    logger.info("negative teacher %s: %d packed linear layers, %.2f bits per weight",
                config.to_spec(), len(replacements), memory_report(teacher)["bits_per_weight"])
    return teacher


def memory_report(teacher: nn.Module) -> dict[str, float]:
    """Bytes by component: `packed_codes`, `scales` (the teacher's own), `shared` (tensors it
    shares with its source model), `own_total`; `quantized_weights` and `bits_per_weight`."""
    packed_layers = [m for m in teacher.modules() if isinstance(m, PackedLinear)]
    if not packed_layers:
        raise TypeError("memory_report expects a teacher from build_negative_teacher (no PackedLinear found)")
    own = {t.data_ptr() for m in packed_layers for t in (m.packed, m.scales)}
    packed_bytes = sum(m.packed.nbytes for m in packed_layers)
    scale_bytes = sum(m.scales.nbytes for m in packed_layers)
    shared_bytes = sum(t.nbytes for t in _unique_tensors(teacher) if t.data_ptr() not in own)
    weights = sum(m.in_features * m.out_features for m in packed_layers)
    return {
        "packed_codes": packed_bytes,
        "scales": scale_bytes,
        "own_total": packed_bytes + scale_bytes,
        "shared": shared_bytes,
        "quantized_weights": weights,
        "quantized_layers": len(packed_layers),
        "bits_per_weight": 8 * (packed_bytes + scale_bytes) / weights,
    }


def teacher_digest(teacher: nn.Module) -> str:
    """A digest of what the teacher computes beyond its source model: every packed layer's name, setting,
    and a strided sample of its codes and scales (so two teachers built from different weights, or by hand
    in Python, never share a cache key)."""
    digest = hashlib.sha256()
    for name, layer in teacher.named_modules():
        if isinstance(layer, PackedLinear):
            digest.update(f"{name}:{layer.quantizer}:{layer.bits}:{layer.strength}:{layer.activation_bits}".encode())
            for tensor in (layer.packed, layer.scales):
                flat = tensor.detach().flatten()
                digest.update(flat[:: max(1, flat.numel() // 256)].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks: `model.get_decoder().layers`, else the ModuleList with
    `config.num_hidden_layers` items."""
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    try:
        layers = model.get_decoder().layers
    except (AttributeError, NotImplementedError):
        layers = None
    if isinstance(layers, nn.ModuleList) and len(layers) == num_layers:  # transformers' decoder-only models
        return layers
    for module in model.modules():  # others (GPT-2's `h`, ...): the ModuleList of num_hidden_layers blocks
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise TeacherConfigError(
        f"{type(model).__name__} has no decoder blocks to quantize: expected an nn.ModuleList of "
        f"config.num_hidden_layers={num_layers} blocks (a transformers causal LM)"
    )


def _quantizable_linears(model: nn.Module, config: TeacherConfig) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, layer) of every Linear or PEFT layer in the selected decoder blocks."""
    blocks = decoder_blocks(model)
    prefix = next(name for name, module in model.named_modules() if module is blocks)
    count = len(blocks)
    config.check_blocks(count)
    indices = range(count) if config.blocks is None else config.blocks
    found = 0
    for index in sorted({i % count for i in indices}):
        for name, module in blocks[index].named_modules():
            if isinstance(module, BaseTunerLayer) or (
                isinstance(module, nn.Linear) and not _inside_tuner_layer(blocks[index], name)
            ):
                found += 1
                yield f"{prefix}.{index}.{name}", module
    if not found:
        raise TeacherConfigError(
            f"{type(model).__name__} has no nn.Linear layers inside its decoder blocks to quantize "
            "(allowed: torch.nn.Linear, bitsandbytes Linear4bit/Linear8bitLt, PEFT LoRA layers)"
        )


def _inside_tuner_layer(root: nn.Module, name: str) -> bool:
    """True for the base layer and adapters *inside* a PEFT layer (handled through the layer)."""
    parts = name.split(".")
    module = root
    for part in parts[:-1]:
        module = getattr(module, part)
        if isinstance(module, BaseTunerLayer):
            return True
    return False


def _layer_device(layer: nn.Module) -> torch.device:
    tensor = next(layer.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _source_weight(name: str, layer: nn.Module, weights: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    expected = (layer.out_features, layer.in_features)
    if weights is not None:
        key = f"{name}.weight"
        if key not in weights:
            raise KeyError(f"checkpoint weights have no tensor {key!r} for layer {name}")
        weight = weights[key]
        if tuple(weight.shape) != expected:
            raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(weight.shape)}, the layer {expected}")
        return weight
    return dequantized_weight(layer).detach()


def _without_adapter(layer: nn.Module) -> nn.Module:
    return layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer


def _share_frozen(module: nn.Module, replacements: dict[nn.Module, nn.Module], standalone: bool = False) -> nn.Module:
    """A copy of the module tree with `replacements` swapped in and adapters stripped, whose leaf
    layers (and so all tensors) are the source's own. Trainable parameters appear as frozen views
    of the same storage. Containers are copied, so wrapping the source later (PEFT injects LoRA
    layers into its parents, TRL patches its `forward`) does not reach the teacher."""
    if module in replacements:
        return replacements[module]
    if isinstance(module, BaseTunerLayer):
        return _share_frozen(module.get_base_layer(), replacements, standalone)
    if standalone and not module._modules:
        return copy.deepcopy(module).requires_grad_(False).eval()
    trainable = {name for name, p in module._parameters.items() if p is not None and p.requires_grad}
    if not module._modules and not trainable:
        return module
    new = copy.copy(module)
    new.__dict__ = {k: v.copy() if isinstance(v, dict) else v for k, v in module.__dict__.items()}
    new.__dict__.pop("forward", None)  # an instance-level patch would call the source's forward
    new._modules = {name: None if child is None else _share_frozen(child, replacements, standalone)
                    for name, child in module._modules.items()}
    for name in trainable:
        new._parameters[name] = nn.Parameter(module._parameters[name].detach(), requires_grad=False)
    new.training = False
    return new


@torch.no_grad()
def _fill_partitioned(teacher: nn.Module, weights: Mapping[str, torch.Tensor] | None) -> None:
    """A standalone teacher's copied tensors that came out empty (DeepSpeed ZeRO-3 partitions a model loaded
    under `zero3_init`, leaving each process a 0-element placeholder) are read from the checkpoint instead; a tied
    LM head the checkpoint does not store takes the input embeddings (listed before it)."""
    tied = getattr(teacher.config.get_text_config(), "tie_word_embeddings", False)
    output = teacher.get_output_embeddings()
    for name, tensor in [*teacher.named_parameters(), *teacher.named_buffers()]:
        if tensor.numel():
            continue
        if weights is not None and name in weights:
            tensor.data = weights[name].to(dtype=tensor.dtype)
        elif tied and output is not None and tensor is output.weight:
            tensor.data = teacher.get_input_embeddings().weight.data
        else:
            raise TeacherConfigError(
                f"the model's tensor {name!r} is empty here (partitioned by DeepSpeed ZeRO-3?): a standalone teacher "
                "needs the checkpoint's own tensors; pass teacher_weights=models.checkpoint_weights(source)")


def _unique_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            yield tensor
