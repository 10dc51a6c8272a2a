"""Multiple choice without generation: which of k options the model finds likeliest after the prompt.

Items come from rows that name a word, its part of speech and its definition (the bundled
`reverse-eval` / `reverse-train` rows), in two directions:

- `word`: the reverse-dictionary prompt (the definition), options = the row's word and k - 1 other
  words of the same part of speech;
- `definition`: the definitions prompt (the word), options = its definition and k - 1 definitions of
  other words of the same part of speech; `calibrated` subtracts each option's log-likelihood after a
  neutral prompt (lm-eval's `acc_mutual_info`), since a definition's own prior swamps the raw score.

Distractors are drawn once per row from a seeded generator, and never include the row's accepted words.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.build_wordnet_definitions import DEFINITION_PROMPT, POS_NAMES, REVERSE_PROMPT, definition_answer
from ..logprobs import option_logprobs

DIRECTIONS = ("word", "definition")
NEUTRAL_PROMPT = "Say something."


class ChoiceDataError(ValueError):
    """The rows cannot make multiple-choice items; the message names the row and the field."""


@dataclass(frozen=True)
class ChoiceItem:
    prompt: str
    """Rendered as the model sees it (chat template)."""
    choices: tuple[str, ...]
    label: int
    """Index of the right option."""


def choice_items(rows: Sequence[Mapping], tokenizer, *, direction: str = "word", options: int = 5,
                 seed: int = 0, neutral: bool = False) -> list[ChoiceItem]:
    """One item per row; with `neutral`, the same items under the neutral prompt (for calibration)."""
    if direction not in DIRECTIONS:
        raise ChoiceDataError(f"direction={direction!r}; allowed: {', '.join(DIRECTIONS)}")
    for index, row in enumerate(rows):
        missing = [key for key in ("word", "pos", "definition") if not row.get(key)]
        if missing or row["pos"] not in POS_NAMES:
            raise ChoiceDataError(f"row {index}: multiple choice needs `word`, `pos` (noun/verb/adj/adv) and "
                                  f"`definition`; missing or invalid: {missing or ['pos']}")
    rng = random.Random(seed)
    by_pos: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_pos.setdefault(row["pos"], []).append(index)
    items = []
    for index, row in enumerate(rows):
        accepted = set(row.get("accepted") or [row["word"]])
        pool = [j for j in by_pos[row["pos"]] if j != index and rows[j]["word"] not in accepted]
        if len(pool) < options - 1:
            raise ChoiceDataError(f"row {index}: only {len(pool)} other {row['pos']}s to draw {options - 1} "
                                  "distractors from; give more rows or fewer options")
        picked = [index, *rng.sample(pool, options - 1)]
        rng.shuffle(picked)
        if direction == "word":
            text = REVERSE_PROMPT.format(pos=POS_NAMES[row["pos"]], definition=row["definition"])
            choices = tuple(rows[j]["word"] for j in picked)
        else:
            text = DEFINITION_PROMPT.format(pos=POS_NAMES[row["pos"]], word=row["word"])
            choices = tuple(definition_answer(rows[j]["definition"]) for j in picked)
        prompt = NEUTRAL_PROMPT if neutral else text
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
        items.append(ChoiceItem(rendered, choices, picked.index(index)))
    return items


def choice_rows(model, tokenizer, items: Sequence[ChoiceItem], *, neutral: Sequence[ChoiceItem] | None = None,
                batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per item: 1.0 where the right option has the highest summed log-likelihood (minus its log-likelihood
    under `neutral`, the same items after a neutral prompt, when given), else 0.0; ties go to the first."""
    scores = _option_scores(model, tokenizer, items, batch_size)
    if neutral is not None:
        scores = scores - _option_scores(model, tokenizer, neutral, batch_size)
    labels = np.array([item.label for item in items])
    return {"choice_correct": (scores.argmax(1) == labels).astype(float)}


def _option_scores(model, tokenizer, items: Sequence[ChoiceItem], batch_size: int) -> np.ndarray:
    width = {len(item.choices) for item in items}
    if len(width) != 1:
        raise ChoiceDataError(f"every item needs the same number of options, got {sorted(width)}")
    prompt_ids = tokenizer([item.prompt for item in items], add_special_tokens=False).input_ids
    option_ids = [tokenizer(list(item.choices), add_special_tokens=False).input_ids for item in items]
    return np.array(option_logprobs(model, prompt_ids, option_ids, pad_token_id=tokenizer.pad_token_id,
                                    batch_size=batch_size, progress=True))
