"""`calibrate`: how far apart the policy already holds each setting's pairs, on planted teacher answers."""

import math

import pytest

from hf_negteacher.data.rows import load_rows, validate_rows
from hf_negteacher.logprobs import answer_logprobs
from hf_negteacher.teacher import calibrate as calibration
from hf_negteacher.teacher.spec import TeacherConfig


def test_pair_gaps_are_per_token_and_an_empty_rejected_answer_is_infinitely_far():
    gaps = calibration.pair_gaps([(-2.0, 2), (-6.0, 3), (-1.0, 1)], [(-8.0, 2), (-3.0, 3), (0.0, 0)])
    assert gaps == [3.0, -1.0, math.inf]


@pytest.mark.parametrize("planted, trivial, inverted", [("reference", 0.0, 0.0), ("empty", 1.0, 0.0),
                                                        ("shuffled", None, None)])
def test_calibrate_reports_trivial_and_inverted_pairs_and_the_gaps(tiny_chat_model, smol_tokenizer, monkeypatch,
                                                                    planted, trivial, inverted):
    pairs = validate_rows(load_rows("bundled:train")[:6], smol_tokenizer)
    references = [p.answer for p in pairs]
    answers = {"reference": references, "empty": [""] * 6, "shuffled": references[1:] + references[:1]}[planted]
    monkeypatch.setattr(calibration, "generate_answers", lambda *args, **kwargs: list(answers))
    report = calibration.calibrate(tiny_chat_model, smol_tokenizer, pairs, [TeacherConfig.from_spec("int4")],
                                   trivial_margin=0.5, progress=False)
    (setting,) = report.settings
    if planted == "shuffled":  # another row's reference: the gaps computed apart decide
        prompts = [p.prompt for p in pairs]
        gaps = calibration.pair_gaps(answer_logprobs(tiny_chat_model, smol_tokenizer, prompts, references),
                                     answer_logprobs(tiny_chat_model, smol_tokenizer, prompts, answers))
        trivial, inverted = sum(g > 0.5 for g in gaps) / 6, sum(g < 0 for g in gaps) / 6
        assert setting.gap_quantiles[1] == pytest.approx(sorted(gaps)[2], abs=1e-4)  # the lower median of 6
        assert 0 < inverted < 1  # the planted case is a real mix
    assert setting.trivial_fraction == pytest.approx(trivial) and setting.inverted_fraction == pytest.approx(inverted)
    if planted == "reference":
        assert setting.gap_quantiles == pytest.approx((0.0, 0.0, 0.0), abs=1e-5)
    assert "| inverted (gap < 0) |" in report.to_markdown()
