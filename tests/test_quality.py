"""Generated-answer metrics, held-out preference accuracy, the paired bootstrap over rows and the two-level
bootstrap over seeds and rows."""

import numpy as np
import pytest
from conftest import answer_logprob_by_hand

from hf_negteacher.data.rows import PromptAnswer
from hf_negteacher.evaluation.answer_metrics import answer_quality, chrf, rouge_l
from hf_negteacher.evaluation.preference import preference_rows
from hf_negteacher.evaluation.statistics import metrics, paired_bootstrap, seed_row_bootstrap


def test_rouge_l_and_chrf_equal_hand_computed_values():
    # LCS("the cat sat", "the cat sat on the mat") = 3 words: P = 3/3, R = 3/6, F = 2PR / (P + R) = 2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l("The Cat", "the cat") == pytest.approx(1.0)  # lower-cased words
    assert rouge_l("dog", "the cat") == 0.0
    # chrF, hyp "ab" vs ref "abc": 1-grams P = 2/2, R = 2/3; 2-grams P = 1/1, R = 1/2; no 3-grams in hyp.
    # Averages over those 2 orders: P = 1, R = 7/12; F(beta=2) = 5PR / (4P + R) = 35/55
    assert chrf("ab", "abc") == pytest.approx(100 * 35 / 55)
    assert chrf("a b c", "abc") == pytest.approx(100.0)  # whitespace is ignored
    scores = answer_quality(["the cat sat", ""], ["the cat sat on the mat", "x"])
    assert scores["words"] == [3.0, 0.0] and scores["empty"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        answer_quality(["a", "b"], ["a"])


def test_preference_accuracy_on_planted_pairs_gives_the_known_answer(tiny_chat_model, smol_tokenizer):
    # A continuation's summed log-probability only falls as tokens are added, so a negative that extends the
    # reference always loses (row 0) and a negative that the reference extends always wins (row 1).
    pairs = [PromptAnswer("Define cat:", " a small feline"), PromptAnswer("Define dog:", " a loyal canine and more")]
    negatives = [" a small feline and more", " a loyal canine", ""]
    rows = preference_rows(tiny_chat_model, smol_tokenizer, pairs + [PromptAnswer("x:", " y")], negatives)
    assert rows["preference_correct"].tolist() == [1.0, 0.0]  # the empty negative's row is left out
    reference = [answer_logprob_by_hand(tiny_chat_model, smol_tokenizer, p.prompt, p.answer) for p in pairs]
    negative = [answer_logprob_by_hand(tiny_chat_model, smol_tokenizer, p.prompt, n)
                for p, n in zip(pairs, negatives, strict=False)]
    expected_margin = np.mean([r[0] - n[0] for r, n in zip(reference, negative, strict=True)])
    scored = metrics({"preference": rows})
    assert scored["preference_accuracy"] == 0.5
    assert scored["preference_margin"] == pytest.approx(expected_margin, abs=1e-4)  # a difference of two sums
    per_token = [r[0] / r[1] > n[0] / n[1] for r, n in zip(reference, negative, strict=True)]
    assert scored["preference_accuracy_per_token"] == pytest.approx(np.mean(per_token))


def _synthetic(rng, mean, n=400):
    return {"generation": {"rougeL": rng.normal(mean, 0.1, n), "chrF": rng.normal(40, 5, n),
                           "words": rng.normal(9, 2, n), "empty": np.zeros(n), "cut_off": np.zeros(n)},
            "answers": {"answer_logprob": rng.normal(-30, 3, n), "answer_tokens": np.full(n, 10),
                        "answer_bytes": np.full(n, 40)}}


def test_bootstrap_of_a_model_against_itself_is_exactly_zero():
    scores = _synthetic(np.random.default_rng(0), 0.2)
    for difference in paired_bootstrap(scores, scores, resamples=200).values():
        assert (difference.difference, difference.low, difference.high) == (0.0, 0.0, 0.0)
        assert not difference.excludes_zero


def test_bootstrap_interval_covers_the_true_difference_of_synthetic_models():
    rng = np.random.default_rng(1)
    intervals = [paired_bootstrap(_synthetic(rng, 0.30, 100), _synthetic(rng, 0.20, 100), resamples=400,
                                  seed=trial)["rougeL"] for trial in range(200)]
    coverage = np.mean([d.low < 0.10 < d.high for d in intervals])
    assert 0.90 <= coverage <= 0.99  # a 95% interval: about 190 of 200 cover the true 0.10
    assert all(d.excludes_zero for d in intervals)  # 0.10 is ~7 standard errors away from 0
    same_mean = paired_bootstrap(_synthetic(rng, 0.2), _synthetic(rng, 0.2), resamples=2000)["rougeL"]
    assert same_mean.low < 0 < same_mean.high
    with pytest.raises(ValueError, match="different row groups"):
        paired_bootstrap(_synthetic(rng, 0.2), {"answers": _synthetic(rng, 0.2)["answers"]})


def _seeded_runs(rng, seed_offsets, n=500, mean=0.5):
    """Runs of one method, one per training seed: per-row correctness whose rate the seed moves by its offset."""
    base = rng.random(n)
    return [{"choice": {"choice_correct": (base < mean + offset).astype(float)}} for offset in seed_offsets]


def test_two_level_bootstrap_widens_with_seed_variance_where_the_rows_only_interval_does_not():
    widths = {}
    for spread in (0.0, 0.12):
        rng = np.random.default_rng(3)
        a, b = _seeded_runs(rng, (-spread, 0.0, spread)), _seeded_runs(rng, (0.0, 0.0, 0.0))
        two_level = seed_row_bootstrap(a, b, resamples=1000)["choice_accuracy/builtin"]
        rows_only = seed_row_bootstrap(a, b, resamples=1000, min_seeds=99)["choice_accuracy/builtin"]
        assert two_level.over_seeds and not rows_only.over_seeds
        assert len(two_level.per_seed) == 3 and two_level.difference == pytest.approx(np.mean(two_level.per_seed))
        assert rows_only.difference == pytest.approx(two_level.difference)
        widths[spread] = (two_level.half_width, rows_only.half_width)
    assert widths[0.12][0] > 1.5 * widths[0.0][0]  # seed variance widens the two-level interval
    assert widths[0.12][1] < 1.2 * widths[0.0][1]  # and leaves the rows-only one about as it was
    assert widths[0.0][0] == pytest.approx(widths[0.0][1], rel=0.35)  # without seed variance they agree


def test_two_level_bootstrap_pairs_each_seed_and_lets_one_untrained_run_stand_for_every_seed():
    trained = [{"choice": {"choice_correct": np.r_[np.ones(k), np.zeros(10 - k)]}} for k in (6, 7, 8)]
    untrained = [{"choice": {"choice_correct": np.r_[np.ones(5), np.zeros(5)]}}]
    result = seed_row_bootstrap(trained, untrained, resamples=500)["choice_accuracy/builtin"]
    assert result.per_seed == pytest.approx((0.1, 0.2, 0.3)) and result.difference == pytest.approx(0.2)
    assert (result.a, result.b) == (pytest.approx(0.7), pytest.approx(0.5))
    assert result.low < 0.2 < result.high <= 0.5
    with pytest.raises(ValueError, match="3 runs of A and 2 of B"):
        seed_row_bootstrap(trained, untrained * 2)


@pytest.mark.parametrize("seeds", [1, 3])
def test_differences_match_metrics_by_name_when_runs_hold_their_row_groups_in_another_order(seeds):
    # An untrained run backfilled with a later score lists that group last; the trained runs list it first. The
    # point difference once paired the metrics by position and printed one metric minus another.
    trained = [{"checkpoint_kl": {"kl_sum": np.full(10, 0.3), "kl_tokens": np.ones(10)},
                "choice": {"choice_correct": np.r_[np.ones(7), np.zeros(3)]}} for _ in range(seeds)]
    untrained = [{"choice": {"choice_correct": np.r_[np.ones(5), np.zeros(5)]},
                  "checkpoint_kl": {"kl_sum": np.full(10, 0.6), "kl_tokens": np.ones(10)}}]
    result = seed_row_bootstrap(trained, untrained, resamples=200)
    choice, kl = result["choice_accuracy/builtin"], result["checkpoint_kl/builtin"]
    assert choice.difference == pytest.approx(0.2) and kl.difference == pytest.approx(-0.3)
    assert choice.low <= 0.2 <= choice.high and kl.low == pytest.approx(-0.3) == kl.high


def test_answer_quality_evaluate_module_loads_offline_by_path(monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    from hf_negteacher.evaluate_metrics import metric_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = evaluate.load(metric_path("answer_quality")).compute(
        predictions=["the cat sat", "ab"], references=["the cat sat on the mat", "abc"])
    assert result["rougeL_per_answer"][0] == pytest.approx(2 / 3)
    assert result["chrF"] == pytest.approx((chrf("the cat sat", "the cat sat on the mat") + 100 * 35 / 55) / 2)
    assert result["words"] == 2.0 and result["empty_fraction"] == 0.0


def test_checkpoint_kl_is_token_weighted_and_resampled_with_its_rows():
    rows = {"checkpoint_kl": {"kl_sum": np.array([3.0, 0.0, 1.0]), "kl_tokens": np.array([3, 1, 4])}}
    assert metrics(rows) == {"checkpoint_kl/builtin": pytest.approx(4.0 / 8)}  # not the mean of per-row means
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 9, 40)
    far = {"checkpoint_kl": {"kl_sum": tokens * rng.uniform(0.5, 1.5, 40), "kl_tokens": tokens}}
    closer = {"checkpoint_kl": {"kl_sum": far["checkpoint_kl"]["kl_sum"] * 0.8, "kl_tokens": tokens}}
    difference = paired_bootstrap(closer, far, resamples=200)["checkpoint_kl/builtin"]
    assert difference.difference == pytest.approx(-0.2 * difference.b) and difference.low < difference.high < 0
