"""Per-document results of the negteacher lm-eval tasks."""

import re


def process_results(doc, results):
    """`negteacher_text_ppl`: the rolling log-likelihood with the words and bytes of the original text."""
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["text"].strip()))
    size = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, size),
        "bits_per_byte": (loglikelihood, size),
    }


def answer_results(doc, results):
    """`negteacher_answer_ppl`: the answer's log-likelihood with its token count (from the data file, counted
    with the model's tokenizer) and byte count."""
    ((loglikelihood, _is_greedy),) = results
    return {
        "answer_perplexity": (loglikelihood, doc["answer_tokens"]),
        "answer_bits_per_byte": (loglikelihood, len(doc["answer"].encode("utf-8"))),
    }
