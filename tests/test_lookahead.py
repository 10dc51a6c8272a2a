"""Negatives generated ahead: per-prompt draws (`row_sampling`), the same pairs whatever the lookahead, fewer calls."""

import copy

import pytest
import torch
from test_trainer import ROWS, config, lora

from hf_negteacher import NegativeTeacherTrainer
from hf_negteacher.generation import GenerationSettings, generate_negative_ids

PROMPTS = [[1, 5, 9], [2, 7], [3, 3, 3, 3, 8], [4], [6, 6, 1]]
SEEDS = [11, 22, 33, 44, 55]


def sampled(model, prompts, seeds, n=2, **settings):
    values = {"max_new_tokens": 5, "temperature": 1.0, "top_p": 0.95, "batch_size": 5, **settings}
    return generate_negative_ids(model, prompts, GenerationSettings(**values), seed=0, pad_token_id=0,
                                 stop_token_ids=[], num_return_sequences=n, prompt_seeds=seeds)


@pytest.fixture
def untiring_llama(tiny_llama):
    tiny_llama.generation_config.eos_token_id = None  # every answer runs to its full length
    return tiny_llama


def test_a_prompts_samples_depend_on_its_seed_not_on_its_batch(untiring_llama):
    together = sampled(untiring_llama, PROMPTS, SEEDS)
    assert sampled(untiring_llama, PROMPTS, SEEDS, batch_size=2) == together  # other batches, other padding
    assert sampled(untiring_llama, PROMPTS[::-1], SEEDS[::-1])[::-1] == together
    assert sampled(untiring_llama, PROMPTS[:1], SEEDS[:1]) == together[:1]
    long = sampled(untiring_llama, PROMPTS, SEEDS, max_new_tokens=40)  # positions whose hash overflows int64
    assert long == sampled(untiring_llama, PROMPTS, SEEDS, max_new_tokens=40, batch_size=3)
    assert all(len(answer) == 40 for answers in long for answer in answers)
    assert sampled(untiring_llama, PROMPTS, [s + 1 for s in SEEDS]) != together
    assert all(a != b for a, b in together)  # a prompt's two samples draw apart
    greedy = generate_negative_ids(untiring_llama, PROMPTS, GenerationSettings(max_new_tokens=5, temperature=0.0),
                                   seed=0, pad_token_id=0, stop_token_ids=[])
    assert sampled(untiring_llama, PROMPTS, SEEDS, n=1, top_k=1) == greedy


def test_the_dense_noise_a_gpu_adds_equals_the_sparse_noise_over_the_kept_tokens():
    """On a GPU every token is hashed (no host sync to find the kept ones); the values must be the CPU's."""
    from hf_negteacher.row_sampling import with_gumbel_noise

    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    scores[scores < 0.3] = -float("inf")  # what top-k / top-p leave
    seeds = torch.tensor([11, 2**40 - 5, 123_456_789_000])
    for position in (0, 3, 40, 10**6):  # hashes that overflow int64
        sparse = with_gumbel_noise(scores, seeds, position, sparse=True)
        assert torch.equal(with_gumbel_noise(scores, seeds, position, sparse=False), sparse)
        assert torch.equal(torch.isfinite(sparse), torch.isfinite(scores))


def test_the_draws_follow_the_models_distribution(untiring_llama):
    prompt, draws = [1, 5, 9], 4000
    with torch.no_grad():
        probs = torch.softmax(untiring_llama(input_ids=torch.tensor([prompt])).logits[0, -1] / 0.7, -1)
    first = sampled(untiring_llama, [prompt] * draws, list(range(draws)), n=1, max_new_tokens=1, temperature=0.7,
                    top_p=1.0, batch_size=500)
    counts = torch.bincount(torch.tensor([answer[0][0] for answer in first]), minlength=probs.numel())
    assert 0.5 * (counts / draws - probs).abs().sum().item() < 0.06  # total variation, sampling noise ~0.03


def test_lookahead_writes_the_same_pairs_in_fewer_generate_calls(tiny_chat_model, smol_tokenizer, tmp_path):
    def run(lookahead, **overrides):
        values = {"max_steps": 4, "per_device_train_batch_size": 2, "logging_steps": 4, **overrides}
        args = config(tmp_path / f"{lookahead}-{len(overrides)}", negatives_lookahead=lookahead, **values)
        trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), args, ROWS, processing_class=smol_tokenizer,
                                         peft_config=lora())
        written, pairs = [], trainer.online.pairs
        trainer.online.pairs = lambda examples: written.append(out := pairs(examples)) or out
        trainer.train()
        return written, trainer.online.generation_calls, [e for e in trainer.state.log_history if "loss" in e]

    one, one_calls, one_log = run(1)
    eight, eight_calls, eight_log = run(8)
    assert one == eight and len(one) == 4 and all(len(batch) == 2 for batch in one)
    assert (one_calls, eight_calls) == (4, 1)  # 8 prompts in one call of generation_batch_size 16
    assert 0 < eight_log[-1]["negatives/generation_time_share"] < 1  # generated before the step, still counted
    accumulated, calls, _ = run(1, max_steps=2, gradient_accumulation_steps=2)
    per_micro_batch, micro_calls, _ = run(0, max_steps=2, gradient_accumulation_steps=2)
    assert accumulated == per_micro_batch and len(accumulated) == 4
    assert (calls, micro_calls) == (2, 4)  # one call per optimizer step; 0 keeps one per micro-batch


@pytest.mark.parametrize("overrides, reason", [
    ({"chosen_source": "policy"}, "chosen_source='policy'"),
    ({"band_max_margin": 1.0}, "band_min_margin / band_max_margin"),
    ({"negative_source": "in_batch"}, "negative_source='in_batch'"),
    ({"loss_type": ["sft"]}, "a loss that reads no rejected side"),
])
def test_lookahead_is_off_with_a_warning_where_negatives_depend_on_the_policy_or_the_batch(
        overrides, reason, tiny_chat_model, smol_tokenizer, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="hf_negteacher.training.trainer"):
        trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, negatives_lookahead=4, **overrides), ROWS,
                                         processing_class=smol_tokenizer, peft_config=lora())
    assert trainer.online.lookahead_steps() == 0
    assert "negatives_lookahead=4 has no effect here" in caplog.text and reason in caplog.text


def test_resamples_drawn_in_one_call_write_the_pairs_of_one_call_per_try(tiny_chat_model, smol_tokenizer, tmp_path):
    """Where each example samples from its own seeds, every resample left goes into one call; only the tries an
    example still needs are read, so the pairs are those of one call per try."""
    def run(one_call_per_try: bool):
        args = config(tmp_path / str(one_call_per_try), max_steps=2, per_device_train_batch_size=2, num_negatives=4,
                      negatives_max_new_tokens=2, negatives_top_k=2, negatives_max_tries=4)
        trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), args, ROWS, processing_class=smol_tokenizer,
                                         peft_config=lora())
        source = trainer.negative_source
        source.per_example = not one_call_per_try  # per instance: the teacher source itself samples per example
        calls, candidates = [], source.candidates
        source.candidates = lambda context, request: calls.append(len(request.prompts)) or candidates(context,
                                                                                                      request)
        written, pairs = [], trainer.online.pairs
        trainer.online.pairs = lambda examples: written.append(out := pairs(examples)) or out
        trainer.train()
        return written, calls, dict(trainer.negative_filter.counts)

    tries, try_calls, try_counts = run(one_call_per_try=True)
    batched, batched_calls, batched_counts = run(one_call_per_try=False)
    assert len(try_calls) >= 2 * 3  # all 4 distinct answers (2 tokens, top 2): three tries or more a step
    assert batched == tries and batched_counts == try_counts and try_counts["filtered_duplicate"] > 0
    assert len(batched_calls) == 4 and batched_calls[1] > try_calls[1]  # two per step: the first, every try left
