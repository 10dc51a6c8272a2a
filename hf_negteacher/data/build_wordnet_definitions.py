"""Rebuild the bundled dataset from WordNet 3.0 (Debian: `apt-get install wordnet-base`).

    python -m hf_negteacher.data.build_wordnet_definitions [--wordnet-dir /usr/share/wordnet]

Writes `wordnet_definitions_{train,eval}.jsonl` beside this file. One row per word: the word's most
frequent sense (first synset in WordNet's index) among words attested in the SemCor sense-tagged
corpus, as a chat: the user asks what the word means, the assistant gives WordNet's definition.
The output is byte-identical for the same WordNet files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

POS_FILES = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
POS_NAMES = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
TRAIN_ROWS, EVAL_ROWS, SEED = 3000, 500, 1234
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


def _definitions(path: Path) -> dict[int, str]:
    result = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue
        gloss = line.split("|", 1)[1].strip()
        definition = re.split(r';\s*"', gloss)[0].strip().rstrip(";").strip()
        result[int(line.split()[0])] = definition
    return result


def build_rows(wordnet_dir: Path) -> list[dict]:
    best: dict[str, tuple[int, str, str]] = {}
    for pos in POS_FILES:
        definitions = _definitions(wordnet_dir / f"data.{pos}")
        for lemma, (tagged, offset) in _index(wordnet_dir / f"index.{pos}").items():
            definition = definitions[offset]
            if tagged < 1 or not re.fullmatch(r"[a-z]{3,}", lemma) or not 3 <= len(definition.split()) <= 20:
                continue
            if lemma not in best or tagged > best[lemma][0]:
                best[lemma] = (tagged, pos, definition)
    rows = []
    for lemma in sorted(best):
        _, pos, definition = best[lemma]
        answer = definition[0].upper() + definition[1:] + ("" if definition.endswith((".", "!", "?")) else ".")
        rows.append({
            "word": lemma,
            "pos": pos,
            "messages": [
                {"role": "user", "content": f'What does the {POS_NAMES[pos]} "{lemma}" mean?'},
                {"role": "assistant", "content": answer},
            ],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()
    rows = build_rows(args.wordnet_dir)
    random.Random(SEED).shuffle(rows)
    splits = {"eval": rows[:EVAL_ROWS], "train": rows[EVAL_ROWS:EVAL_ROWS + TRAIN_ROWS]}
    for split, split_rows in splits.items():
        path = args.out_dir / f"wordnet_definitions_{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows), encoding="utf-8")
        tmp.replace(path)
        print(f"{path}: {len(split_rows)} rows")


if __name__ == "__main__":
    main()
