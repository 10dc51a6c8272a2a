"""Generated answers against references: ROUGE-L, chrF, mean length in words, fraction empty.

The same numbers as `negteacher eval`'s generated-answer columns (hf_negteacher.evaluation.answer_metrics:
rouge_score's ROUGE-L F-measure, sacrebleu's sentence chrF), averaged over answers.
"""

import datasets
import evaluate

from hf_negteacher.evaluation.answer_metrics import answer_quality

_DESCRIPTION = """Mean ROUGE-L F-measure (0..1), mean sentence chrF (0..100), mean words and the fraction of empty
answers of `predictions` against `references` (one reference per prediction)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated answers.
    references (list of str): the reference answers, one per prediction.
Returns:
    rougeL, chrF, words, empty_fraction: means over the answers;
    rougeL_per_answer, chrF_per_answer: each answer's scores.
Examples:
    >>> metric = evaluate.load(hf_negteacher.evaluate_metrics.metric_path("answer_quality"))
    >>> metric.compute(predictions=["a small cat"], references=["a small domesticated feline"])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AnswerQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric", description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            reference_urls=["https://pypi.org/project/hf-negteacher/"],
        )

    def _compute(self, predictions, references):
        scores = answer_quality(predictions, references)
        means = {key: sum(values) / len(values) for key, values in scores.items()}
        return {"rougeL": means["rougeL"], "chrF": means["chrF"], "words": means["words"],
                "empty_fraction": means["empty"], "rougeL_per_answer": scores["rougeL"],
                "chrF_per_answer": scores["chrF"]}
