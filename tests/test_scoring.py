import math

import pytest
import torch

from hf_negteacher.logprobs import (
    completion_kl,
    completion_logprobs,
    option_logprobs,
    perplexity,
    rolling_windows,
    sliding_window_logprob,
)

TOKENS = [5, 17, 42, 8, 8, 61, 3, 90, 12]


@pytest.mark.parametrize("num_tokens, window, stride", [(10, 4, 4), (10, 4, 2), (3, 8, 8), (9, 3, 1), (1, 1, 1)])
def test_windows_score_every_token_exactly_once_within_the_window(num_tokens, window, stride):
    windows = rolling_windows(num_tokens, window, stride)
    scored = [p for _, end, first in windows for p in range(first, end + 1)]
    assert scored == list(range(1, num_tokens + 1))
    assert all(end - begin <= window and begin < first for begin, end, first in windows)


def test_window_settings_are_checked():
    with pytest.raises(ValueError, match="1 <= stride <= window"):
        rolling_windows(10, 4, 5)


def test_full_window_equals_the_models_own_loss(tiny_llama):
    total, count = sliding_window_logprob(tiny_llama, TOKENS, window=64, stride=64, prefix_token_id=1)
    ids = torch.tensor([[1, *TOKENS]])
    with torch.no_grad():
        loss = tiny_llama(input_ids=ids, labels=ids).loss.item()  # mean NLL of tokens 1..n
    assert count == len(TOKENS)
    assert total == pytest.approx(-loss * len(TOKENS), rel=1e-5)


def test_window_of_one_predicts_each_token_from_the_previous_alone(tiny_llama):
    total, _ = sliding_window_logprob(tiny_llama, TOKENS, window=1, stride=1, prefix_token_id=1)
    expected = 0.0
    with torch.no_grad():
        for previous, token in zip([1, *TOKENS[:-1]], TOKENS, strict=True):
            logits = tiny_llama(input_ids=torch.tensor([[previous]])).logits[0, -1]
            expected += torch.log_softmax(logits, -1)[token].item()
    assert total == pytest.approx(expected, rel=1e-5)


def test_more_context_changes_the_score(tiny_llama):
    narrow = sliding_window_logprob(tiny_llama, TOKENS, window=3, stride=3, prefix_token_id=1)[0]
    overlapping = sliding_window_logprob(tiny_llama, TOKENS, window=3, stride=1, prefix_token_id=1)[0]
    assert narrow != pytest.approx(overlapping)


def test_completion_logprobs_and_perplexity_by_hand(tiny_llama):
    prompt, answer = [4, 9, 2], [7, 7, 30]
    (total, count), = completion_logprobs(tiny_llama, [prompt], [answer], pad_token_id=0)
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_llama(input_ids=torch.tensor([prompt + answer])).logits[0], -1)
    expected = sum(logprobs[len(prompt) - 1 + i, token].item() for i, token in enumerate(answer))
    assert count == 3 and total == pytest.approx(expected, rel=1e-5)
    padded = completion_logprobs(tiny_llama, [prompt, [4]], [answer, [7, 8, 9, 10, 11]], pad_token_id=0)
    assert padded[0][0] == pytest.approx(total, rel=1e-4)  # padding leaves a row's score unchanged
    alone = completion_logprobs(tiny_llama, [[4]], [[7, 8, 9, 10, 11]], pad_token_id=0)
    assert padded[1] == (pytest.approx(alone[0][0], rel=1e-4), 5)
    assert completion_logprobs(tiny_llama, [prompt], [[]], pad_token_id=0) == [(0.0, 0)]
    assert perplexity([(total, count)]) == pytest.approx(math.exp(-total / 3))
    with pytest.raises(ValueError, match="zero tokens"):
        perplexity([(0.0, 0)])


def test_completion_kl_is_the_hand_computed_kl_over_answer_positions_and_zero_against_itself(tiny_llama):
    import copy

    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    prompt, answer = [4, 9, 2], [7, 7, 30]
    (total, count), = completion_kl(tiny_llama, other, [prompt], [answer], pad_token_id=0)
    with torch.no_grad():
        ours, theirs = (torch.log_softmax(m(input_ids=torch.tensor([prompt + answer])).logits[0], -1)
                        for m in (tiny_llama, other))
    positions = range(len(prompt) - 1, len(prompt) - 1 + len(answer))  # the logits that predict each answer token
    expected = sum((theirs[i].exp() * (theirs[i] - ours[i])).sum().item() for i in positions)
    assert count == 3 and expected > 1e-3 and total == pytest.approx(expected, rel=1e-4)
    padded = completion_kl(tiny_llama, other, [prompt, [4]], [answer, [7, 8, 9, 10, 11]], pad_token_id=0)
    assert padded[0] == (pytest.approx(total, rel=1e-3), 3)  # padding leaves a row's score unchanged
    assert completion_kl(tiny_llama, tiny_llama, [prompt], [answer], pad_token_id=0)[0][0] == pytest.approx(0, abs=1e-6)


def test_option_logprobs_equal_each_option_scored_alone_by_hand(tiny_llama):
    # Prompts of different lengths (left padding in a batch) and options of 1-3 tokens (right padding).
    prompts = [[5, 17, 42], [8], [61, 3, 90, 12, 7]]
    options = [[[9], [10, 11], [12, 13, 14]], [[3, 4], [5], [6]], [[20, 21, 22], [23], [24, 25]]]
    scored = option_logprobs(tiny_llama, prompts, options, pad_token_id=0, batch_size=2)
    with torch.no_grad():
        for prompt, row, got in zip(prompts, options, scored, strict=True):
            for option, value in zip(row, got, strict=True):
                logits = tiny_llama(input_ids=torch.tensor([[*prompt, *option]])).logits[0]
                logprobs = torch.log_softmax(logits, -1)
                expected = sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(option))
                assert value == pytest.approx(expected, abs=1e-4)
    assert len({round(v, 3) for row in scored for v in row}) == 9  # every option scored on its own


def test_option_logprobs_reject_ragged_options(tiny_llama):
    with pytest.raises(ValueError, match="same number of options"):
        option_logprobs(tiny_llama, [[1], [2]], [[[3], [4]], [[5]]], pad_token_id=0)
