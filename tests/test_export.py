"""`export_teacher`: the crippled copy as a plain transformers checkpoint with the in-process teacher's logits."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_negteacher import TeacherConfig, build_negative_teacher
from hf_negteacher.teacher.export import export_teacher
from hf_negteacher.teacher.spec import TeacherConfigError


def logits_of(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("spec", ["int3,group_size=32,blocks=0",
                                  "ternary,group_size=32,strength=0.5,activation_bits=0"])
def test_the_exported_checkpoint_loads_with_the_teachers_logits(spec, tiny_chat_model, smol_tokenizer, tmp_path):
    teacher = build_negative_teacher(tiny_chat_model.eval(), config=TeacherConfig.from_spec(spec))
    export_teacher(teacher, smol_tokenizer, tmp_path / "teacher", source="tiny", setting=spec,
                   policy_weights="as in the checkpoint")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    ids = torch.randint(0, len(smol_tokenizer), (2, 11), generator=torch.Generator().manual_seed(0))
    expected = logits_of(teacher, ids)
    torch.testing.assert_close(logits_of(exported, ids), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits_of(tiny_chat_model, ids), expected, atol=1e-2)  # it is the crippled copy
    card = (tmp_path / "teacher" / "README.md").read_text()
    assert "meant to answer badly" in card and f"`{spec}`" in card and "base_model: tiny" in card
    assert (tmp_path / "teacher" / "chat_template.jinja").is_file() and not (tmp_path / "teacher.partial").exists()


def test_settings_a_checkpoint_cannot_hold_and_occupied_folders_are_refused(tiny_chat_model, smol_tokenizer,
                                                                            tmp_path):
    ternary = build_negative_teacher(copy.deepcopy(tiny_chat_model), config=TeacherConfig.from_spec("ternary"))
    with pytest.raises(TeacherConfigError, match=r"teacher='ternary,activation_bits=0'"):
        export_teacher(ternary, smol_tokenizer, tmp_path / "a", source="tiny", setting="ternary", policy_weights="")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    int3 = build_negative_teacher(copy.deepcopy(tiny_chat_model), config=TeacherConfig.from_spec("int3"))
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_teacher(int3, smol_tokenizer, tmp_path / "b", source="tiny", setting="int3", policy_weights="")
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine" and not (tmp_path / "a").exists()
