"""Multiple choice without generation: which of k options the model finds likeliest after the prompt.

Items come from rows that name a word, its part of speech and its definition (the bundled
`reverse-eval` / `reverse-train` rows), in two directions:

- `word`: the reverse-dictionary prompt (the definition), options = the row's word and k - 1 other
  words of the same part of speech;
- `definition`: the definitions prompt (the word), options = its definition and k - 1 definitions of
  other words of the same part of speech; `calibrated` subtracts each option's log-likelihood after a
  neutral prompt (lm-eval's `acc_mutual_info`), since a definition's own prior swamps the raw score.

Distractors are drawn once per row from a seeded generator, and never include the row's accepted words.

Two readings of generated text reuse the `word` items: `choice_rows(..., end_of_turn=...)` also scores each
option followed by the chat template's end of turn (a bare word that the model would go on past scores lower),
and `round_trip_items` puts a model's generated definition in the prompt, for a frozen judge to pick the word
from: a definition counts when it carries the word's meaning, whatever its wording or length.
"""

from __future__ import annotations

import random
import re
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
                batch_size: int = 16, end_of_turn: str | None = None) -> dict[str, np.ndarray]:
    """Per item: 1.0 where the right option has the highest summed log-likelihood (minus its log-likelihood
    under `neutral`, the same items after a neutral prompt, when given), else 0.0; ties go to the first. With
    `end_of_turn` (see `end_of_turn_text`), also `choice_correct_ended`: each option followed by it, so an
    option counts as the whole answer rather than as the start of a longer one."""
    scores = _option_scores(model, tokenizer, items, batch_size)
    if neutral is not None:
        scores = scores - _option_scores(model, tokenizer, neutral, batch_size)
    labels = np.array([item.label for item in items])
    rows = {"choice_correct": (scores.argmax(1) == labels).astype(float)}
    if end_of_turn:
        ended = [ChoiceItem(i.prompt, tuple(c + end_of_turn for c in i.choices), i.label) for i in items]
        rows["choice_correct_ended"] = (_option_scores(model, tokenizer, ended, batch_size).argmax(1)
                                        == labels).astype(float)
    return rows


def end_of_turn_text(tokenizer) -> str:
    """What the chat template writes right after an assistant's answer (`<|im_end|>` for ChatML), without the
    whitespace that follows it."""
    marker = "\x00"
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    rendered = tokenizer.apply_chat_template(turns, tokenize=False)
    after = rendered[rendered.rindex(marker) + len(marker):].split()
    return after[0] if after else ""


def round_trip_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Definitions rows (`word`, `pos`, the reference as the last message) as multiple-choice rows, for
    `round_trip_items`; [] when they name no word or part of speech."""
    if not rows or not all(row.get("word") and row.get("pos") in POS_NAMES for row in rows):
        return []
    return [{"word": row["word"], "pos": row["pos"], "accepted": row.get("accepted") or [row["word"]],
             "definition": row.get("definition") or row["messages"][-1]["content"]} for row in rows]


def masked_definition(text: str, words: Sequence[str]) -> str:
    """`text` with every word that starts with one of `words` (any case) replaced by `___`: a definition that
    names its word gives the judge nothing to read."""
    pattern = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    masked = re.sub(rf"\b(?:{pattern})\w*", "___", text.strip(), flags=re.IGNORECASE) if pattern else text.strip()
    return masked or "___"


def round_trip_items(rows: Sequence[Mapping], definitions: Sequence[str], tokenizer, *, options: int = 5,
                     seed: int = 0) -> list[ChoiceItem]:
    """One `word` item per generated definition (row i's word, given `definitions[i]`, masked): the options and
    right answer of `choice_items(rows)`, since the distractors are drawn from the rows alone."""
    swapped = [{**row, "definition": masked_definition(text, row.get("accepted") or [row["word"]])}
               for row, text in zip(rows, definitions, strict=False)]
    return choice_items([*swapped, *rows[len(swapped):]], tokenizer, options=options, seed=seed)[:len(definitions)]


def _option_scores(model, tokenizer, items: Sequence[ChoiceItem], batch_size: int) -> np.ndarray:
    width = {len(item.choices) for item in items}
    if len(width) != 1:
        raise ChoiceDataError(f"every item needs the same number of options, got {sorted(width)}")
    prompt_ids = tokenizer([item.prompt for item in items], add_special_tokens=False).input_ids
    option_ids = [tokenizer(list(item.choices), add_special_tokens=False).input_ids for item in items]
    return np.array(option_logprobs(model, prompt_ids, option_ids, pad_token_id=tokenizer.pad_token_id,
                                    batch_size=batch_size, progress=True))
