"""SFT-style rows -> (prompt text, reference answer) pairs; the accepted dataset formats."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..data import BUNDLED_SPLITS

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = (
    "conversational `messages` (the last assistant turn is the reference); "
    "`prompt` + `completion` (text or conversational); `prompt` + `chosen` (text or conversational)"
)
PROMPT_ONLY_FORMATS = "`messages` ending with a user turn, or `prompt` alone"
"""Rows without a reference answer: accepted when the chosen side is written by a model (`chosen_source`)."""


class DataFormatError(ValueError):
    """A dataset row fits none of the accepted formats, or a value is unusable."""


@dataclass(frozen=True)
class PromptAnswer:
    prompt: str
    """The prompt as the model sees it (chat template applied, generation prompt added)."""
    answer: str
    """The reference answer text (no end-of-turn marker); empty for a prompt-only row."""
    accepted: tuple[str, ...] = ()
    """Other answers that count as right (a row's `accepted` list: the reverse dictionary's synonyms)."""


def load_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"dataset file {str(path)!r} not found")
    rows = []
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark (Windows editors) is not a row
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataFormatError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if not rows:
        raise DataFormatError(f"dataset file {str(path)!r} is empty")
    return rows


def load_rows(source: str) -> list[dict]:
    """Rows from `bundled:train`, `bundled:eval`, a local .jsonl / .json file (a list of rows), a .txt
    file (one row, its whole text under `text`), or a directory written by `datasets.save_to_disk`."""
    if source.startswith("bundled:"):
        split = source.removeprefix("bundled:")
        if split not in BUNDLED_SPLITS:
            raise DataFormatError(f"dataset {source!r}: allowed bundled splits are "
                                  f"{', '.join('bundled:' + s for s in BUNDLED_SPLITS)}")
        return load_jsonl(BUNDLED_SPLITS[split])
    try:
        return _load_file_or_folder(Path(source))
    except UnicodeDecodeError as error:
        raise DataFormatError(f"dataset {source!r}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _load_file_or_folder(path: Path) -> list[dict]:
    source = str(path)
    if path.is_dir():
        return _load_saved_dataset(path)
    if path.suffix == ".json" and path.is_file():
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})") from None
        if not isinstance(rows, list) or not rows:
            raise DataFormatError(f"dataset file {source!r} must hold a non-empty JSON list of rows")
        return rows
    if path.suffix == ".txt" and path.is_file():
        text = path.read_text(encoding="utf-8-sig")
        if not text.strip():
            raise DataFormatError(f"text file {source!r} is empty")
        return [{"text": text}]
    if path.suffix != ".jsonl":
        raise DataFormatError(f"dataset {source!r}: expected {', '.join('bundled:' + s for s in BUNDLED_SPLITS)}, "
                              "a .jsonl/.json/.txt file or a datasets.save_to_disk directory")
    return load_jsonl(path)


def _load_saved_dataset(path: Path) -> list[dict]:
    from datasets import Dataset, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError as error:
        raise DataFormatError(f"directory {str(path)!r} is not a datasets.save_to_disk folder ({error})") from None
    if not isinstance(dataset, Dataset):
        raise DataFormatError(f"{str(path)!r} holds the splits {sorted(dataset)}: pass one split's folder, "
                              f"e.g. {str(path / sorted(dataset)[0])!r}")
    if not len(dataset):
        raise DataFormatError(f"dataset {str(path)!r} has no rows")
    return dataset.to_list()


def text_documents(rows: list[dict], column: str = "text") -> list[str] | None:
    """The documents of plain-text data (every row has `column`), or None for prompt/answer data."""
    if not any(column in row for row in rows):
        return None
    for index, row in enumerate(rows):
        if not isinstance(row.get(column), str) or not row[column].strip():
            raise DataFormatError(f"row {index}: column {column!r} must be non-empty text (rows {sorted(row)})")
    return [row[column] for row in rows]


def _is_conversation(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)


def split_conversation(row: dict) -> tuple[list[dict] | str, list[dict] | str | None]:
    """Return (prompt, reference) of a row, each text or a list of chat messages; the reference is None
    for a prompt-only row (`messages` ending with a user turn, or `prompt` alone)."""
    if not isinstance(row, dict):
        raise DataFormatError(f"expected a row of named columns, got {type(row).__name__} {str(row)[:40]!r}")
    if "messages" in row:
        messages = row["messages"]
        if not _is_conversation(messages) or not messages or messages[-1]["role"] not in ("assistant", "user"):
            raise DataFormatError("`messages` must be a list of {role, content} ending with an assistant turn "
                                  "(or, for a prompt alone, a user turn)")
        return (messages, None) if messages[-1]["role"] == "user" else (messages[:-1], messages[-1:])
    for answer_key in ("completion", "chosen"):
        if "prompt" in row and answer_key in row:
            return row["prompt"], row[answer_key]
    if "prompt" in row:
        return row["prompt"], None
    raise DataFormatError(f"row with columns {sorted(row)} fits no accepted format: {ACCEPTED_FORMATS}; "
                          f"or, for prompts alone, {PROMPT_ONLY_FORMATS}")


def to_prompt_answer(row: dict, tokenizer, *, require_answer: bool = True) -> PromptAnswer:
    """Render a row's prompt as the model sees it (chat template when conversational); a prompt-only row
    (answer "") is an error unless `require_answer` is False."""
    prompt, reference = split_conversation(row)
    for side, value in (("prompt", prompt), ("answer", reference)):
        texts = [m["content"] for m in value] if _is_conversation(value) else [value] if value is not None else []
        if wrong := [t for t in texts if not isinstance(t, str)]:
            raise DataFormatError(f"the {side} must be text (or chat messages with text content), got "
                                  f"{type(wrong[0]).__name__} {str(wrong[0])[:40]!r}")
    if reference is None:
        if require_answer:
            raise DataFormatError("a prompt alone, with no reference answer: SFT and chosen_source=reference need "
                                  "one; give it, or set chosen_source: policy to train on prompts alone")
        reference = ""
    conversational = _is_conversation(prompt) or _is_conversation(reference)
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise DataFormatError("conversational data needs a tokenizer with a chat template; this one has none")
    if conversational:
        prompt_messages = prompt if _is_conversation(prompt) else [{"role": "user", "content": str(prompt)}]
        prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
        answer = reference[-1]["content"] if _is_conversation(reference) else str(reference)
    else:
        prompt_text, answer = str(prompt), str(reference)
    if not prompt_text.strip():
        raise DataFormatError("a row has an empty prompt")
    if not answer.strip() and require_answer:
        raise DataFormatError(f"a row has an empty reference answer (prompt: {prompt_text[:60]!r})")
    accepted = row.get("accepted", ())
    if not isinstance(accepted, list | tuple) or not all(isinstance(a, str) and a.strip() for a in accepted):
        raise DataFormatError(f"`accepted` must be a list of non-empty answer texts, got {str(accepted)[:60]!r}")
    return PromptAnswer(prompt_text, answer, tuple(accepted))


def without_reference(row: dict) -> dict:
    """The row's prompt alone, as a prompt-only row (`messages` ending with the user turn, or `prompt`)."""
    prompt, _ = split_conversation(row)
    return {"messages": prompt} if _is_conversation(prompt) else {"prompt": prompt}


def preference_row(row: dict) -> dict:
    """A row in TRL's preference format: `prompt`, `chosen` (text, or chat messages; for a prompt-only row
    an empty answer, a placeholder the chosen source fills), and the dataset's own `rejected` when it has one."""
    prompt, chosen = split_conversation(row)
    if chosen is None:
        chosen = [{"role": "assistant", "content": ""}] if _is_conversation(prompt) else ""
    result = {"prompt": prompt, "chosen": chosen}
    if "rejected" in row:
        result["rejected"] = row["rejected"]
    return result


def validate_rows(rows: list[dict], tokenizer, max_length: int | None = None, *,
                  require_answer: bool = True) -> list[PromptAnswer]:
    """Check every row before any model is loaded; errors name the row and what is wrong. With
    `require_answer=False`, prompt-only rows are accepted (their `answer` is empty)."""
    if not rows:
        raise DataFormatError("the dataset has no rows")
    pairs = []
    for index, row in enumerate(rows):
        try:
            pair = to_prompt_answer(row, tokenizer, require_answer=require_answer)
        except DataFormatError as error:
            raise DataFormatError(f"row {index}: {error}") from None
        if max_length is not None:
            prompt_tokens = len(tokenizer(pair.prompt, add_special_tokens=False).input_ids)
            if prompt_tokens >= max_length:
                raise DataFormatError(f"row {index}: the prompt has {prompt_tokens} tokens, not fewer than "
                                      f"max_length={max_length}; shorten it or raise max_length")
        pairs.append(pair)
    return pairs


@dataclass(frozen=True)
class AnswerCut:
    """What fitting prompt + answer into `max_length` tokens cut."""

    rows: int
    """Rows whose prompt + answer run past max_length."""
    tokens: int
    """Answer tokens past it, over those rows."""
    total_rows: int
    max_length: int

    def message(self, source: str) -> str:
        return (f"{self.rows} of {self.total_rows} rows of {source} run past max_length={self.max_length} tokens "
                f"(prompt + answer): {self.tokens} answer tokens are cut, alike for training (TRL keeps the first "
                "max_length tokens) and for held-out scoring; raise max_length to keep them")


def fit_answers(pairs: list[PromptAnswer], tokenizer, max_length: int | None, source: str
                ) -> tuple[list[PromptAnswer], AnswerCut]:
    """Each answer cut to the tokens that fit after its prompt within `max_length`: the part a training
    sequence holds (TRL's `keep_start` truncation) and the part held-out scoring scores. Logs a warning
    naming `source` when anything was cut."""
    fitted, rows, tokens = [], 0, 0
    for pair in pairs:
        if max_length and pair.answer:
            answer_ids = tokenizer(pair.answer, add_special_tokens=False).input_ids
            room = max_length - len(tokenizer(pair.prompt, add_special_tokens=False).input_ids)
            if len(answer_ids) > room:
                rows, tokens = rows + 1, tokens + len(answer_ids) - room
                pair = PromptAnswer(pair.prompt, tokenizer.decode(answer_ids[:room]), pair.accepted)
        fitted.append(pair)
    cut = AnswerCut(rows, tokens, len(pairs), max_length or 0)
    if cut.rows:
        logger.warning(cut.message(source))
    return fitted, cut
