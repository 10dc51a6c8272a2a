import pytest
import torch

from hf_negteacher.teacher.packing import pack_codes, packed_nbytes, unpack_codes
from hf_negteacher.teacher.quantizers import dequantize, fake_quantize_activations, levels, quantize
from hf_negteacher.teacher.spec import TeacherConfig, TeacherConfigError


def roundtrip(weight: torch.Tensor, config: TeacherConfig) -> torch.Tensor:
    q = quantize(weight, config)
    return dequantize(q.codes, q.scales, q.offset, config.quantizer, torch.float32)


def test_ternary_absmean_per_tensor_matches_formula():
    w = torch.tensor([[0.5, -1.0, 0.1, 2.0], [0.0, 0.4, -0.45, 0.25]])
    scale = w.abs().mean()  # 0.5875
    expected = torch.tensor([[1.0, -1.0, 0.0, 1.0], [0.0, 1.0, -1.0, 0.0]]) * scale
    torch.testing.assert_close(roundtrip(w, TeacherConfig("ternary")), expected)


def test_binary_is_sign_times_mean_abs():
    w = torch.tensor([[0.5, -1.0, 0.0, 2.0]])
    expected = torch.tensor([[1.0, -1.0, 1.0, 1.0]]) * 0.875
    torch.testing.assert_close(roundtrip(w, TeacherConfig("binary")), expected)


def test_int4_group_rtn_uses_absmax_over_seven_per_group():
    w = torch.tensor([[7.0, -3.5, 1.0, 0.2, 0.7, -0.7, 0.35, 0.0]])
    out = roundtrip(w, TeacherConfig("int4", group_size=4))
    torch.testing.assert_close(out[0, :4], torch.tensor([7.0, -4.0, 1.0, 0.0]))
    torch.testing.assert_close(out[0, 4:], torch.tensor([0.7, -0.7, 0.4, 0.0]))


@pytest.mark.parametrize("spec", ["ternary", "ternary,granularity=channel", "ternary,granularity=group",
                                  "binary", "int2", "int3", "int4", "int3,granularity=channel",
                                  "int4,group_size=32"])
def test_values_are_exactly_levels_times_scale(spec):
    torch.manual_seed(1)
    config = TeacherConfig.from_spec(spec)
    w = torch.randn(48, 128)
    q = quantize(w, config)
    low, high = levels(config)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) < 2**config.bits
    ints = (2 * q.codes.float() - 1) if config.quantizer == "binary" else q.codes.float() - q.offset
    assert ints.min() >= low and ints.max() <= high
    rows, groups = q.scales.shape
    scale = q.scales.reshape(rows, groups, 1).expand(rows, groups, w.numel() // (rows * groups)).reshape(w.shape)
    torch.testing.assert_close(roundtrip(w, config), ints * scale)
    expected_groups = {"tensor": (1, 1), "channel": (48, 1), "group": (48, 128 // config.group_size)}
    assert (rows, groups) == expected_groups[config.resolved_granularity]


def test_more_bits_reconstruct_better():
    torch.manual_seed(2)
    w = torch.randn(64, 256)
    errors = [(roundtrip(w, TeacherConfig(q)) - w).pow(2).mean().item() for q in ("int2", "int3", "int4")]
    assert errors[0] > errors[1] > errors[2]


def test_quantize_does_not_modify_input():
    w = torch.randn(8, 64)
    before = w.clone()
    quantize(w, TeacherConfig("ternary"))
    assert torch.equal(w, before)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (13, 64), (576, 192)])
def test_pack_unpack_roundtrip_exact(bits, shape):
    codes = torch.randint(0, 2**bits, shape, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(*shape, bits)
    assert packed.numel() <= shape[0] * shape[1] * bits / 8 + bits + shape[1]  # bits/8 bytes per code + padding
    assert torch.equal(unpack_codes(packed, bits, shape), codes)


def test_ternary_packs_four_codes_per_byte():
    assert packed_nbytes(576, 1536, 2) * 4 == 576 * 1536


def test_group_size_not_dividing_width_is_a_clear_error():
    with pytest.raises(TeacherConfigError, match=r"group_size=64 does not divide in_features=96"):
        quantize(torch.randn(4, 96), TeacherConfig("int4", group_size=64))


@pytest.mark.parametrize("kwargs, message", [
    ({"quantizer": "int5"}, r"quantizer='int5' is unknown; allowed: ternary, binary, int2, int3, int4"),
    ({"quantizer": "int4", "granularity": "row"}, r"granularity='row' is unknown; allowed: tensor, channel"),
    ({"quantizer": "int4", "group_size": 0}, r"group_size=0 must be a positive integer"),
    ({"quantizer": "ternary", "strength": 1.5}, r"strength=1.5 must be in \(0, 1\]"),
    ({"quantizer": "ternary", "activation_bits": 1}, r"activation_bits=1 must be 0 \(off\) or between 2"),
])
def test_bad_settings_name_field_and_allowed_values(kwargs, message):
    with pytest.raises(TeacherConfigError, match=message):
        TeacherConfig(**kwargs)


def test_spec_roundtrip_and_errors():
    config = TeacherConfig.from_spec("int3,group_size=32,blocks=0-3+7,strength=0.5")
    assert config.blocks == [0, 1, 2, 3, 7] and config.group_size == 32 and config.strength == 0.5
    assert TeacherConfig.from_spec(config.to_spec()) == config
    assert TeacherConfig("ternary").to_spec() == "ternary"
    with pytest.raises(TeacherConfigError, match=r"'bits=3' is not `field=value` with field one of"):
        TeacherConfig.from_spec("int3,bits=3")


def test_activation_fake_quant_is_per_token_absmax():
    x = torch.tensor([[1.0, -0.5, 0.25], [100.0, 1.0, -50.0]])
    out = fake_quantize_activations(x, 8)
    assert out[0, 0] == 1.0 and out[1, 0] == 100.0
    assert (out - x).abs().max(dim=-1).values[1] <= 100.0 / 127 / 2 + 1e-6
    assert torch.allclose(out[0], x[0], atol=1 / 127)
