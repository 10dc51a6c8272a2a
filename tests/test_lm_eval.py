"""The built-in sliding-window scorer agrees with lm-evaluation-harness's rolling loglikelihood."""

import json
import math
import re

import pytest

from hf_negteacher.lm_eval_glue import text_perplexity
from hf_negteacher.scoring import sliding_window_logprob

lm_eval = pytest.importorskip("lm_eval")  # the [eval] extra; .ci/run installs it
TEXTS = [
    "A businessman who buys or sells for another in exchange for a commission. " * 6,
    "The act of enrolling, and everything that follows from it.",
]


def test_built_in_rolling_perplexity_matches_lm_eval_within_one_percent(tiny_chat_model, smol_tokenizer, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    window = 16
    lm = HFLM(pretrained=tiny_chat_model, tokenizer=smol_tokenizer, max_length=window, batch_size=1)
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=i)
                for i, text in enumerate(TEXTS)]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    ours = [sliding_window_logprob(tiny_chat_model, lm.tok_encode(text), window=window, stride=window,
                                   prefix_token_id=lm.prefix_token_id)[0] for text in TEXTS]
    assert len(lm.tok_encode(TEXTS[0])) > 4 * window  # several windows
    for a, b in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, rel=0.01)

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    metrics = text_perplexity(tiny_chat_model, smol_tokenizer, data, tmp_path / "tasks", max_length=window)
    words = sum(len(re.split(r"\s+", t.strip())) for t in TEXTS)
    assert metrics["word_perplexity"] == pytest.approx(math.exp(-sum(ours) / words), rel=0.01)
