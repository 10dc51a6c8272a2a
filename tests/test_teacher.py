import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from hf_negteacher import PackedLinear, TeacherConfigError, build_negative_teacher, memory_report


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def loss(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


IDS = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))


def test_every_block_linear_is_packed_and_the_rest_is_shared(tiny_llama):
    teacher = build_negative_teacher(tiny_llama, "ternary")
    packed = [n for n, m in teacher.named_modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 3 * 7  # q, k, v, o, gate, up, down per block
    assert not isinstance(teacher.lm_head, PackedLinear)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                 "model.layers.0.input_layernorm.weight"):
        assert teacher.get_parameter(name).data_ptr() == tiny_llama.get_parameter(name).data_ptr()


def test_teacher_is_frozen_and_leaves_the_policy_unchanged(tiny_llama):
    before = state(tiny_llama)
    teacher = build_negative_teacher(tiny_llama, "int3")
    assert not [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert [p for p in teacher.parameters() if p.requires_grad] == []  # nothing for an optimizer
    teacher(input_ids=IDS, labels=IDS).loss  # noqa: B018  (a forward with grad enabled)
    teacher.generate(IDS, max_new_tokens=3, do_sample=True)
    after = state(tiny_llama)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in tiny_llama.parameters())  # the policy stays trainable
    assert tiny_llama.model.layers[0].self_attn.q_proj.__class__ is torch.nn.Linear


def test_teacher_generates_and_scores_like_a_causal_lm(tiny_llama):
    teacher = build_negative_teacher(tiny_llama, "int4", group_size=32)
    out = teacher.generate(IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=5, do_sample=False)
    assert out.shape == (2, 17) and torch.equal(out[:, :12], IDS)
    again = teacher.generate(IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=5, do_sample=False)
    assert torch.equal(out, again)
    assert loss(teacher, IDS) != pytest.approx(loss(tiny_llama, IDS), abs=1e-6)


def test_packed_linear_forward_equals_dequantized_weight(tiny_llama):
    teacher = build_negative_teacher(tiny_llama, "int4", group_size=32)
    layer = teacher.model.layers[1].mlp.down_proj
    x = torch.randn(3, 128)
    torch.testing.assert_close(layer(x), x @ layer.dequantized_weight().T)
    source = tiny_llama.model.layers[1].mlp.down_proj.weight
    assert (layer.dequantized_weight() - source).abs().max() <= layer.scales.float().max() / 2 + 1e-6


def test_ternary_quantizes_activations_by_default_and_can_switch_off(tiny_llama):
    on = build_negative_teacher(tiny_llama, "ternary").model.layers[0].self_attn.q_proj
    off = build_negative_teacher(tiny_llama, "ternary", activation_bits=0).model.layers[0].self_attn.q_proj
    assert on.activation_bits == 8 and off.activation_bits is None
    x = torch.randn(2, 64)
    torch.testing.assert_close(off(x), x @ off.dequantized_weight().T)
    assert not torch.allclose(on(x), off(x))


def test_strength_interpolates_between_policy_layer_and_low_bit_copy(tiny_llama):
    full = build_negative_teacher(tiny_llama, "ternary", activation_bits=0)
    half = build_negative_teacher(tiny_llama, "ternary", activation_bits=0, strength=0.25)
    x = torch.randn(2, 64)
    source = tiny_llama.model.layers[0].self_attn.q_proj
    mixed = half.model.layers[0].self_attn.q_proj
    assert mixed.base.weight.data_ptr() == source.weight.data_ptr()  # the policy's own weight, no copy
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), 0.25 * full.model.layers[0].self_attn.q_proj(x) + 0.75 * source(x))
    losses = [loss(tiny_llama, IDS), loss(half, IDS), loss(full, IDS)]
    assert losses[0] != losses[1] != losses[2]


def test_blocks_selects_what_is_quantized_and_shares_the_rest(tiny_llama):
    teacher = build_negative_teacher(tiny_llama, "int3", blocks=[-1])
    for block in (0, 1):
        ours, theirs = teacher.model.layers[block].mlp.up_proj, tiny_llama.model.layers[block].mlp.up_proj
        assert type(ours) is torch.nn.Linear and ours.weight.data_ptr() == theirs.weight.data_ptr()
    assert isinstance(teacher.model.layers[2].mlp.up_proj, PackedLinear)
    assert memory_report(teacher)["quantized_layers"] == 7


def test_memory_report_counts_packed_bits(tiny_llama):
    ternary = memory_report(build_negative_teacher(tiny_llama, "ternary"))
    int4 = memory_report(build_negative_teacher(tiny_llama, "int4", group_size=64))
    binary = memory_report(build_negative_teacher(tiny_llama, "binary"))
    weights = sum(m.weight.numel() for n, m in tiny_llama.named_modules()
                  if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}")
    assert ternary["quantized_weights"] == weights
    assert ternary["bits_per_weight"] == pytest.approx(2.0, abs=0.01)  # 4 codes per byte + 21 scales
    assert int4["bits_per_weight"] == pytest.approx(4 + 16 / 64)
    assert binary["bits_per_weight"] == pytest.approx(1.0, abs=0.01)
    tensors = {t.data_ptr(): t.nbytes for t in [*tiny_llama.parameters(), *tiny_llama.buffers()]}
    shared = sum(tensors.values()) - 4 * weights  # everything but the fp32 block Linear weights
    assert ternary["shared"] == shared
    assert ternary["own_total"] == ternary["packed_codes"] + ternary["scales"]


def test_wrapping_the_policy_later_does_not_reach_the_teacher(tiny_llama):
    teacher = build_negative_teacher(tiny_llama, "int4", group_size=32, blocks=[0])
    before = loss(teacher, IDS)
    tiny_llama.forward = lambda *a, **k: None  # as TRL's fused LM head patches the instance
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    assert "lora" not in " ".join(n for n, _ in teacher.named_modules())
    assert loss(teacher, IDS) == before
    rebuilt = build_negative_teacher(peft_model, "int4", group_size=32, blocks=[0])  # after both wrappings
    assert loss(rebuilt, IDS) == pytest.approx(before)


def test_teacher_of_a_peft_model_is_the_base_without_adapter(tiny_llama):
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    teacher = build_negative_teacher(peft_model, "int4", group_size=32, strength=0.5)
    reference = build_negative_teacher(peft_model.get_base_model(), "int4", group_size=32, strength=0.5)
    assert "lora" not in " ".join(n for n, _ in teacher.named_modules())
    assert loss(teacher, IDS) == pytest.approx(loss(reference, IDS))
    with peft_model.disable_adapter():
        plain = loss(peft_model, IDS)
    assert loss(peft_model, IDS) != pytest.approx(plain)  # the adapter matters to the policy...
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data.add_(1.0)
    assert loss(teacher, IDS) == pytest.approx(loss(reference, IDS))  # ...and not to the teacher


def test_teacher_from_a_4bit_model_shares_the_unquantized_4bit_blocks(tiny_llama, tmp_path):
    from hf_negteacher import load_causal_lm, nf4_config

    tiny_llama.save_pretrained(tmp_path)
    policy = load_causal_lm(str(tmp_path), quantization=nf4_config(), device_map="cpu")
    policy.requires_grad_(False)  # as under PEFT: the 4-bit base is frozen, so it is shared as is
    teacher = build_negative_teacher(policy, "int4", group_size=32, blocks=[0])
    assert teacher.model.layers[1].mlp.up_proj is policy.model.layers[1].mlp.up_proj
    assert type(policy.model.layers[1].mlp.up_proj).__name__ == "Linear4bit"
    report = memory_report(teacher)
    assert report["quantized_layers"] == 7
    assert torch.isfinite(teacher(input_ids=IDS, labels=IDS).loss)
    assert teacher(input_ids=IDS, labels=IDS).loss.item() != pytest.approx(loss(policy, IDS), abs=1e-6)  # block 0
    # bitsandbytes repacks 4-bit weights for its CPU kernel at the first eval-mode forward: a
    # teacher built after that must quantize the same weights as one built before.
    with torch.no_grad():
        policy(input_ids=IDS)
    again = build_negative_teacher(policy, "int4", group_size=32, blocks=[0])
    for ours, theirs in zip(teacher.modules(), again.modules(), strict=True):
        if isinstance(ours, PackedLinear):
            assert torch.equal(ours.codes(), theirs.codes())
            torch.testing.assert_close(ours.scales, theirs.scales, rtol=0.02, atol=0)  # bnb's inverse re-quantizes



@pytest.mark.parametrize("kwargs, message", [
    ({"quantizer": "int7"}, r"quantizer='int7' is unknown; allowed: ternary, binary, int2, int3, int4"),
    ({"quantizer": "int4", "blocks": [3]}, r"blocks=3: the model has 3 decoder blocks \(0-2, .*; 3 are not"),
    ({"quantizer": "int4", "group_size": 48}, r"group_size=48 does not divide in_features=64"),
])
def test_bad_settings_raise_before_building(tiny_llama, kwargs, message):
    with pytest.raises(TeacherConfigError, match=message):
        build_negative_teacher(tiny_llama, **kwargs)


def test_checkpoint_weights_are_quantized_instead_of_the_layers_own(tiny_llama):
    names = {n: m.weight for n, m in tiny_llama.named_modules() if isinstance(m, torch.nn.Linear)}
    doubled = {f"{n}.weight": 2 * w.detach() for n, w in names.items()}
    teacher = build_negative_teacher(tiny_llama, "int4", group_size=32, weights=doubled)
    plain = build_negative_teacher(tiny_llama, "int4", group_size=32)
    ours, theirs = teacher.model.layers[2].mlp.up_proj, plain.model.layers[2].mlp.up_proj
    assert torch.equal(ours.codes(), theirs.codes())
    torch.testing.assert_close(ours.scales.float(), 2 * theirs.scales.float(), rtol=1e-3, atol=0)
    with pytest.raises(KeyError, match=r"no tensor 'model.layers.0.self_attn.q_proj.weight'"):
        build_negative_teacher(tiny_llama, "int4", group_size=32, weights={})


def test_model_without_linear_layers_is_rejected():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(TeacherConfigError, match=r"GPT2LMHeadModel has no nn.Linear layers inside its decoder"):
        build_negative_teacher(gpt2, "ternary")


def test_dequantizing_once_per_generate_call_gives_the_same_outputs_and_frees_the_copy(tiny_llama):
    from hf_negteacher.teacher.layer import materialized

    teacher = build_negative_teacher(tiny_llama, "int3")
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        expected = teacher(input_ids=ids).logits
        with materialized(teacher):
            cached = teacher(input_ids=ids).logits
            again = teacher(input_ids=ids).logits
            layers = [m for m in teacher.modules() if isinstance(m, PackedLinear)]
            assert all(m._dequantized is not None for m in layers)
    torch.testing.assert_close(cached, expected)
    torch.testing.assert_close(again, expected)
    assert all(m._dequantized is None and not m.keep_dequantized for m in layers)


def test_dequantizing_once_is_decided_from_the_free_memory_and_always_taken_on_the_cpu(tiny_llama, caplog):
    from hf_negteacher.teacher.layer import dequantize_once_fits, materialized
    from hf_negteacher.teacher.packing import _plane_shifts

    teacher = build_negative_teacher(tiny_llama, "int3")
    layers = [m for m in teacher.modules() if isinstance(m, PackedLinear)]
    bf16_copy = sum(m.out_features * m.in_features for m in layers) * 2
    assert dequantize_once_fits(layers, None, torch.bfloat16)  # the CPU
    assert dequantize_once_fits(layers, 2 * bf16_copy, torch.bfloat16)
    assert not dequantize_once_fits(layers, 2 * bf16_copy - 1, torch.bfloat16)
    assert not dequantize_once_fits(layers, 2 * bf16_copy, torch.float32)  # twice the bytes per weight
    with caplog.at_level("INFO", logger="hf_negteacher.teacher.layer"), materialized(teacher, None):
        assert all(m.keep_dequantized for m in layers)
    assert "dequantizing its packed layers once per generate call (on the CPU)" in caplog.text
    # The int3 planes' shifts are made once per device, not copied from the CPU at every unpack.
    assert _plane_shifts(torch.device("cpu")) is _plane_shifts(torch.device("cpu"))


def test_teacher_codes_live_on_the_device_of_the_layers_they_replace(tiny_llama):
    # The checkpoint's tensors are read onto the CPU; the packed codes must still go where the policy's layers
    # are (a GPU in real use; the meta device stands in for it here).
    weights = {name: tensor.clone() for name, tensor in tiny_llama.state_dict().items()}
    tiny_llama.to("meta")
    teacher = build_negative_teacher(tiny_llama, "int3", group_size=32, weights=weights)
    packed = [m for m in teacher.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 21  # 3 blocks x 7 linears
    assert {buffer.device.type for m in packed for buffer in m.buffers()} == {"meta"}


def test_a_standalone_teacher_reads_tensors_that_zero3_partitioned_from_the_checkpoint(tiny_llama):
    """Under `zero3_init` every process holds 0-element placeholders; copying them would make an empty teacher."""
    import copy

    checkpoint = state(tiny_llama)
    expected = build_negative_teacher(tiny_llama, "int4", standalone=True, weights=checkpoint)
    partitioned = copy.deepcopy(tiny_llama)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                 "model.layers.1.post_attention_layernorm.weight"):
        partitioned.get_parameter(name).data = torch.empty(0)  # what DeepSpeed leaves outside a gather
    teacher = build_negative_teacher(partitioned, "int4", standalone=True, weights=checkpoint)
    with torch.no_grad():
        assert torch.equal(teacher(input_ids=IDS).logits, expected(input_ids=IDS).logits)
    assert partitioned.get_parameter("lm_head.weight").numel() == 0  # the source model is left as it was
    with pytest.raises(TeacherConfigError, match="'model.embed_tokens.weight' is empty here .*teacher_weights"):
        build_negative_teacher(partitioned, "int4", standalone=True)
