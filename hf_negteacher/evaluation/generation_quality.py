"""Generated-answer quality: held-out answers, greedy or sampled, scored against the references."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.rows import PromptAnswer
from ..generation import GenerationSettings, ProcessorFactory, generate_negative_ids, stop_token_ids
from .answer_metrics import answer_quality
from .perplexity import EvalConfigError


@dataclass
class QualitySettings:
    """How held-out answers are generated for the quality metrics."""

    generation_rows: int = 100
    max_new_tokens: int = 64
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def check(self) -> None:
        for name in ("generation_rows", "max_new_tokens", "num_samples", "batch_size"):
            if getattr(self, name) <= 0:
                raise EvalConfigError(f"{name}={getattr(self, name)}: expected a positive integer")
        if self.num_samples > 1 and self.temperature <= 0:
            raise EvalConfigError(f"num_samples={self.num_samples} with temperature 0 (greedy) repeats one answer; "
                                  "set temperature > 0")

    def generation(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  top_p=self.top_p, seed=self.seed, batch_size=self.batch_size)


def generation_rows(model, tokenizer, pairs: Sequence[PromptAnswer], settings: QualitySettings,
                    processor: ProcessorFactory | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Per prompt: mean rougeL, chrF, words, empty and cut-off (no end of turn within max_new_tokens) over
    `num_samples` answers; where the rows list `accepted` answers (a crisp task), also the exact match with
    the reference and with any accepted answer, and whether an accepted answer is the answer's first word or any
    of its words (an answer that runs on past the word still counts); and one readable record per prompt.
    `processor`: as in `generate_answers` (contrastive decoding)."""
    from tqdm.auto import tqdm

    pairs = list(pairs)[: settings.generation_rows]
    prompt_ids = tokenizer([p.prompt for p in pairs], add_special_tokens=False).input_ids
    generated = []
    for start in tqdm(range(0, len(pairs), settings.batch_size), desc="generating answers"):
        generated += generate_negative_ids(
            model, prompt_ids[start:start + settings.batch_size], settings.generation(), seed=settings.seed + start,
            pad_token_id=tokenizer.pad_token_id, stop_token_ids=stop_token_ids(tokenizer, model),
            num_return_sequences=settings.num_samples, processor=processor)
    answers = [[tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in samples] for samples in generated]
    flat = answer_quality([a for samples in answers for a in samples],
                          [p.answer for p, samples in zip(pairs, answers, strict=True) for _ in samples])
    flat["cut_off"] = [float(len(ids) >= settings.max_new_tokens) for samples in generated for ids in samples]
    if any(p.accepted for p in pairs):
        flat["exact_match"] = [float(exact_match(a, [p.answer])) for p, samples in zip(pairs, answers, strict=True)
                               for a in samples]
        flat["accepted_match"] = [float(exact_match(a, [p.answer, *p.accepted]))
                                  for p, samples in zip(pairs, answers, strict=True) for a in samples]
        flat["first_word_match"] = [float(first_word_match(a, [p.answer, *p.accepted]))
                                    for p, samples in zip(pairs, answers, strict=True) for a in samples]
        flat["accepted_anywhere"] = [float(accepted_anywhere(a, [p.answer, *p.accepted]))
                                     for p, samples in zip(pairs, answers, strict=True) for a in samples]
    rows = {key: np.array(values).reshape(len(pairs), settings.num_samples).mean(1) for key, values in flat.items()}
    records = [{"answers": samples, "rougeL": float(rows["rougeL"][i]), "chrF": float(rows["chrF"][i])}
               for i, samples in enumerate(answers)]
    return rows, records


def normalized_answer(text: str) -> str:
    """An answer compared by its words: lower case, surrounding whitespace, quotes and punctuation removed."""
    return text.strip().strip(string.punctuation + "\u201c\u201d\u2018\u2019 \n\t").lower()


def exact_match(answer: str, references: Sequence[str]) -> bool:
    """Whether `answer`, normalized, equals one of `references`, normalized."""
    return normalized_answer(answer) in {normalized_answer(r) for r in references}


def answer_words(text: str) -> list[str]:
    """The answer's words, lower case, without the punctuation around them."""
    return [word for word in (normalized_answer(w) for w in text.split()) if word]


def first_word_match(answer: str, references: Sequence[str]) -> bool:
    """Whether the answer's first word, normalized, is one of `references`."""
    words = answer_words(answer)
    return bool(words) and words[0] in {normalized_answer(r) for r in references}


def accepted_anywhere(answer: str, references: Sequence[str]) -> bool:
    """Whether any word of the answer, normalized, is one of `references`."""
    return bool(set(answer_words(answer)) & {normalized_answer(r) for r in references})
