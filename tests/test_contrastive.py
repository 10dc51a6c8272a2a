import copy
import math
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from hf_negteacher import build_negative_teacher, contrastive_answers
from hf_negteacher.generation import GenerationSettings, generate_answers, generate_negative_ids
from hf_negteacher.teacher.contrastive import (
    ContrastiveDecodingError,
    ContrastSettings,
    TeacherContrastLogitsProcessor,
    contrast_with,
)

PROMPTS = [[5, 9, 2, 7, 11, 3], [4, 8], [12, 13, 14, 15]]


def left_padded(prompts, pad=0):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


class FixedTeacher(nn.Module):
    """Returns the same next-token probabilities whatever the input."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.tensor(probs).log()

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], input_ids.shape[1], -1),
                               past_key_values=None)


def test_scores_follow_the_formula_and_beta_can_flip_the_choice():
    policy = torch.tensor([[0.6, 0.35, 0.05]])
    teacher = FixedTeacher([0.5, 0.1, 0.4])
    ids, mask = left_padded([[1, 2]])
    for beta, expected, best in [(0.25, [math.log(0.6**1.25 / 0.5**0.25), math.log(0.35**1.25 / 0.1**0.25)], 0),
                                 (1.0, [math.log(0.36 / 0.5), math.log(0.1225 / 0.1)], 1)]:
        scores = TeacherContrastLogitsProcessor(teacher, mask, ContrastSettings(beta=beta, alpha=0.1))(
            ids, policy.log())
        torch.testing.assert_close(scores[0, :2], torch.tensor(expected))
        assert scores[0, 2] == -math.inf  # 0.05 < 0.1 * 0.6: not plausible to the policy
        assert scores.argmax().item() == best


def test_teacher_cache_with_left_padding_matches_a_full_forward_of_each_prompt(tiny_llama):
    teacher = build_negative_teacher(tiny_llama, "int3")
    ids, mask = left_padded(PROMPTS)
    processor = TeacherContrastLogitsProcessor(teacher, mask, ContrastSettings())
    steps = [ids, torch.cat([ids, torch.tensor([[20], [21], [22]])], 1)]
    steps.append(torch.cat([steps[-1], torch.tensor([[30], [31], [32]])], 1))
    for step in steps:
        cached = processor.teacher_log_probs(step)
        for row, prompt in enumerate(PROMPTS):
            unpadded = step[row, ids.shape[1] - len(prompt):].unsqueeze(0)
            with torch.no_grad():
                full = torch.log_softmax(teacher(input_ids=unpadded).logits[0, -1], -1)
            torch.testing.assert_close(cached[row], full, atol=1e-5, rtol=1e-5)


GREEDY = GenerationSettings(max_new_tokens=8, temperature=0)


def greedy(model, processor=None, settings=GREEDY, n=1):
    return generate_negative_ids(model, PROMPTS, settings, seed=0, pad_token_id=0, stop_token_ids=[],
                                 num_return_sequences=n, processor=processor)


def test_a_teacher_equal_to_the_policy_leaves_greedy_decoding_unchanged(tiny_llama):
    twin = copy.deepcopy(tiny_llama)
    assert greedy(tiny_llama, contrast_with(twin, ContrastSettings(beta=2.0))) == greedy(tiny_llama)


def test_contrast_changes_a_peft_policys_answers_and_beta_zero_does_not(tiny_llama):
    policy = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    teacher = build_negative_teacher(policy, "int2")
    assert greedy(policy, contrast_with(teacher, ContrastSettings(beta=0.0))) == greedy(policy)
    assert greedy(policy, contrast_with(teacher, ContrastSettings(beta=2.0, alpha=0.01))) != greedy(policy)
    sampling = GenerationSettings(max_new_tokens=6, temperature=1.0, top_p=1.0)
    sampled = greedy(policy, contrast_with(teacher, ContrastSettings(beta=0.0, alpha=1e-9)), sampling, n=2)
    assert sampled == greedy(policy, None, sampling, n=2)  # log-softmax then sampling: same draws
    assert [len(s) for s in sampled] == [2, 2, 2]


@pytest.mark.parametrize("kwargs, message", [({"beta": -0.5}, "beta=-0.5"), ({"alpha": 0.0}, "alpha=0.0"),
                                             ({"alpha": 1.5}, "alpha=1.5")])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ContrastiveDecodingError, match=message):
        ContrastSettings(**kwargs)


def test_contrastive_answers_decode_text_prompts_and_leave_the_teacher_as_it_was(tiny_chat_model, smol_tokenizer):
    teacher = build_negative_teacher(tiny_chat_model, "int2")
    prompts = [smol_tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                  add_generation_prompt=True) for q in ("Define cat.", "Define a dog.")]
    settings = GenerationSettings(max_new_tokens=5, temperature=0)
    plain = generate_answers(tiny_chat_model, smol_tokenizer, prompts, settings)
    assert contrastive_answers(tiny_chat_model, teacher, smol_tokenizer, prompts, settings,
                               ContrastSettings(beta=0.0)) == plain
    contrasted = contrastive_answers(tiny_chat_model, teacher, smol_tokenizer, prompts, settings,
                                     ContrastSettings(beta=3.0, alpha=0.001))
    assert len(contrasted) == 2 and contrasted != plain
    layers = [m for m in teacher.modules() if hasattr(m, "keep_dequantized")]
    assert layers and not any(m.keep_dequantized for m in layers)
