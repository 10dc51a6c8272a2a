"""The bundled dataset: English definitions derived from WordNet 3.0 (see WORDNET_LICENSE.md).

`train` holds 3000 rows and `eval` 500 held-out rows; load them with
`hf_negteacher.data.rows.load_rows("bundled:train")`.
"""

from pathlib import Path

DATA_DIR = Path(__file__).parent
BUNDLED_SPLITS = {
    "train": DATA_DIR / "wordnet_definitions_train.jsonl",
    "eval": DATA_DIR / "wordnet_definitions_eval.jsonl",
}
