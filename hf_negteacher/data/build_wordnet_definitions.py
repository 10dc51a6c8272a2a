"""Rebuild the bundled datasets from WordNet 3.0 (Debian: `apt-get install wordnet-base`).

    python -m hf_negteacher.data.build_wordnet_definitions [--wordnet-dir /usr/share/wordnet]

Writes beside this file, byte-identical for the same WordNet files:

- `wordnet_definitions_{train,eval}.jsonl`: one row per word, the word's most frequent sense (first synset
  in WordNet's index) among words attested in the SemCor sense-tagged corpus, as a chat: the user asks what
  the word means, the assistant gives WordNet's definition.
- `reverse_dictionary_{train,eval}.jsonl`: the same senses the other way round, a task whose answers are
  plainly right or wrong: the user gives the definition and asks for the word, the assistant answers with
  the word alone; `accepted` lists it and the synset's other one-word lemmas. Its train words are the
  definitions' train words; its held-out words are in neither definitions split.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

POS_FILES = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
POS_NAMES = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
TRAIN_ROWS, EVAL_ROWS, TEST_ROWS, SEED = 3000, 500, 500, 1234
DEFINITION_PROMPT = 'What does the {pos} "{word}" mean?'
REVERSE_PROMPT = 'Which English {pos} means: "{definition}"? Answer with one word.'
HERE = Path(__file__).parent


def _index(path: Path) -> dict[str, tuple[int, int]]:
    """lemma -> (times tagged in SemCor, offset of its most frequent sense)."""
    entries = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        parts = line.split()
        pointer_count = int(parts[3])
        tagged = int(parts[5 + pointer_count])
        entries[parts[0]] = (tagged, int(parts[6 + pointer_count]))
    return entries


def _synsets(path: Path) -> dict[int, tuple[str, list[str]]]:
    """synset offset -> (its definition, its one-word lemmas in WordNet's order)."""
    result = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        fields, gloss = line.split("|", 1)
        parts = fields.split()
        words = [re.sub(r"\(\w+\)$", "", w).lower() for w in parts[4:4 + 2 * int(parts[3], 16):2]]
        definition = re.split(r';\s*"', gloss.strip())[0].strip().rstrip(";").strip()
        result[int(parts[0])] = definition, list(dict.fromkeys(w for w in words if re.fullmatch(r"[a-z]+", w)))
    return result


def _senses(wordnet_dir: Path) -> list[tuple[str, str, str, list[str]]]:
    """(lemma, part of speech, definition, the synset's one-word lemmas) of each word's most frequent sense,
    sorted by lemma."""
    best: dict[str, tuple[int, str, str, list[str]]] = {}
    for pos in POS_FILES:
        synsets = _synsets(wordnet_dir / f"data.{pos}")
        for lemma, (tagged, offset) in _index(wordnet_dir / f"index.{pos}").items():
            definition, lemmas = synsets[offset]
            if tagged < 1 or not re.fullmatch(r"[a-z]{3,}", lemma) or not 3 <= len(definition.split()) <= 20:
                continue
            if lemma not in best or tagged > best[lemma][0]:
                best[lemma] = (tagged, pos, definition, lemmas)
    return [(lemma, *best[lemma][1:]) for lemma in sorted(best)]


def definition_answer(definition: str) -> str:
    """A WordNet gloss as the definitions rows answer it: capitalized, ending with a period."""
    return definition[0].upper() + definition[1:] + ("" if definition.endswith((".", "!", "?")) else ".")


def _definition_row(lemma: str, pos: str, definition: str) -> dict:
    return {"word": lemma, "pos": pos, "messages": [
        {"role": "user", "content": DEFINITION_PROMPT.format(pos=POS_NAMES[pos], word=lemma)},
        {"role": "assistant", "content": definition_answer(definition)},
    ]}


def _reverse_row(lemma: str, pos: str, definition: str, lemmas: list[str]) -> dict:
    accepted = list(dict.fromkeys([lemma, *lemmas]))
    return {"word": lemma, "pos": pos, "definition": definition, "accepted": accepted, "messages": [
        {"role": "user", "content": REVERSE_PROMPT.format(pos=POS_NAMES[pos], definition=definition)},
        {"role": "assistant", "content": lemma},
    ]}


def build_rows(wordnet_dir: Path) -> list[dict]:
    """The definition rows of every eligible word, sorted by word."""
    return [_definition_row(lemma, pos, definition) for lemma, pos, definition, _ in _senses(wordnet_dir)]


def build_splits(wordnet_dir: Path) -> dict[str, list[dict]]:
    """Every bundled file's rows by file stem. One shuffle decides the words: definitions eval, then train,
    then the reverse dictionary's held-out words, then the sealed test words (taken last, so adding them left
    every earlier split unchanged)."""
    senses = _senses(wordnet_dir)
    random.Random(SEED).shuffle(senses)
    held_out, train = senses[:EVAL_ROWS], senses[EVAL_ROWS:EVAL_ROWS + TRAIN_ROWS]
    reverse_held_out = senses[EVAL_ROWS + TRAIN_ROWS:2 * EVAL_ROWS + TRAIN_ROWS]
    test = senses[2 * EVAL_ROWS + TRAIN_ROWS:2 * EVAL_ROWS + TRAIN_ROWS + TEST_ROWS]
    if len(test) < TEST_ROWS:
        raise ValueError(f"{wordnet_dir}: {len(senses)} eligible words, expected at least "
                         f"{2 * EVAL_ROWS + TRAIN_ROWS + TEST_ROWS}")
    return {
        "wordnet_definitions_eval": [_definition_row(*sense[:3]) for sense in held_out],
        "wordnet_definitions_train": [_definition_row(*sense[:3]) for sense in train],
        "reverse_dictionary_eval": [_reverse_row(*sense) for sense in reverse_held_out],
        "reverse_dictionary_train": [_reverse_row(*sense) for sense in train],
        "wordnet_definitions_test": [_definition_row(*sense[:3]) for sense in test],
        "reverse_dictionary_test": [_reverse_row(*sense) for sense in test],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()
    for stem, split_rows in build_splits(args.wordnet_dir).items():
        path = args.out_dir / f"{stem}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows), encoding="utf-8")
        tmp.replace(path)
        print(f"{path}: {len(split_rows)} rows")


if __name__ == "__main__":
    main()
