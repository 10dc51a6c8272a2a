"""The bundled datasets, derived from WordNet 3.0 (see WORDNET_LICENSE.md) by `build_wordnet_definitions`.

- `bundled:train` (3000 rows) and `bundled:eval` (500 held-out rows): "What does the noun "broker"
  mean?" -> WordNet's definition;
- `bundled:reverse-train` (3000) and `bundled:reverse-eval` (500): the reverse dictionary, a definition ->
  the word in one word, with the synset's other one-word lemmas as `accepted` answers. Its train words are
  the definitions' train words; its held-out words are in neither definitions split.
- `bundled:test` and `bundled:reverse-test` (500 each): the sealed test split, both tasks on the same words,
  disjoint from every split above. Choose settings on the others; score these once, after the choice.

Load them with `hf_negteacher.data.rows.load_rows("bundled:train")`.
"""

from pathlib import Path

DATA_DIR = Path(__file__).parent
BUNDLED_SPLITS = {
    "train": DATA_DIR / "wordnet_definitions_train.jsonl",
    "eval": DATA_DIR / "wordnet_definitions_eval.jsonl",
    "reverse-train": DATA_DIR / "reverse_dictionary_train.jsonl",
    "reverse-eval": DATA_DIR / "reverse_dictionary_eval.jsonl",
    "test": DATA_DIR / "wordnet_definitions_test.jsonl",
    "reverse-test": DATA_DIR / "reverse_dictionary_test.jsonl",
}
