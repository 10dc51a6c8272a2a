"""The reverse-dictionary task: bundled data (rebuilt byte for byte, words disjoint, the sealed test split),
exact-match metrics, multiple-choice items and their score (built in, against lm-eval, planted and uniform models)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import DynamicCache

from hf_negteacher.data import BUNDLED_SPLITS, DATA_DIR
from hf_negteacher.data.build_wordnet_definitions import build_splits
from hf_negteacher.data.rows import load_rows, validate_rows
from hf_negteacher.evaluation.generation_quality import accepted_anywhere, exact_match, first_word_match
from hf_negteacher.evaluation.multiple_choice import (
    ChoiceDataError,
    ChoiceItem,
    choice_items,
    choice_rows,
    end_of_turn_text,
    masked_definition,
    round_trip_items,
    round_trip_rows,
)

WORDNET = Path("/usr/share/wordnet")


def words(split: str) -> set[str]:
    return {row["word"] for row in load_rows(f"bundled:{split}")}


def test_reverse_dictionary_words_are_disjoint_from_its_own_and_the_definitions_held_out_words():
    train, held_out = words("reverse-train"), words("reverse-eval")
    assert (len(train), len(held_out)) == (3000, 500)
    assert not train & held_out
    assert not held_out & (words("train") | words("eval"))  # unseen by either task's training rows
    assert not train & words("eval")
    assert train == words("train")  # the definitions' train words, the other way round


def test_the_sealed_test_split_is_both_tasks_on_500_words_no_other_split_holds():
    sealed = words("test")
    assert len(sealed) == 500 and sealed == words("reverse-test")
    others = [split for split in BUNDLED_SPLITS if split not in ("test", "reverse-test")]
    assert others and all(not sealed & words(split) for split in others), others
    definitions = {r["word"]: r["messages"][1]["content"] for r in load_rows("bundled:test")}
    reverse = load_rows("bundled:reverse-test")
    assert all(definitions[r["word"]].lower().startswith(r["definition"][:-1].lower()) for r in reverse)


def test_reverse_dictionary_rows_ask_for_the_word_and_accept_its_synonyms():
    rows = load_rows("bundled:reverse-eval")
    master = next(r for r in rows if r["word"] == "master")
    assert master["accepted"] == ["master", "maestro"]
    assert master["messages"][0]["content"] == ('Which English noun means: "an artist of consummate skill"? '
                                               "Answer with one word.")
    assert master["messages"][1]["content"] == "master" and master["definition"] == "an artist of consummate skill"
    assert all(r["accepted"][0] == r["word"] and r["messages"][1]["content"] == r["word"] for r in rows)


@pytest.mark.skipif(not (WORDNET / "data.noun").is_file(), reason="Debian's wordnet-base is not installed")
def test_every_bundled_file_rebuilds_byte_for_byte_from_wordnet(tmp_path):
    import json

    splits = build_splits(WORDNET)
    assert {f"{stem}.jsonl" for stem in splits} == {path.name for path in BUNDLED_SPLITS.values()}
    for stem, rows in splits.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        assert text.encode("utf-8") == (DATA_DIR / f"{stem}.jsonl").read_bytes(), stem


@pytest.mark.parametrize("answer, references, expected", [
    ("Broker.", ["broker"], True), ('"brake"', ["brake"], True), ("  Maestro!\n", ["master", "maestro"], True),
    ("The brake", ["brake"], False), ("brakes", ["brake"], False), ("", ["brake"], False)])
def test_exact_match_ignores_case_and_surrounding_punctuation_only(answer, references, expected):
    assert exact_match(answer, references) is expected


@pytest.mark.parametrize("answer, first, anywhere", [
    ("Maestro.", True, True), ("Maestro, a master of an art", True, True), ("A master.", False, True),
    ("The word is brake", False, False), ("", False, False), ("masterful", False, False)])
def test_first_word_and_anywhere_see_the_word_in_an_answer_that_runs_on(answer, first, anywhere):
    assert first_word_match(answer, ["master", "maestro"]) is first
    assert accepted_anywhere(answer, ["master", "maestro"]) is anywhere
    assert not exact_match(answer, ["master", "maestro"]) or first  # exact match implies the first word


def test_round_trip_items_put_the_masked_generated_definition_before_the_same_options(smol_tokenizer):
    rows = load_rows("bundled:reverse-test")
    generated = ['The noun "Steeply" means steeply, in a steep manner.', ""]
    items, reference = round_trip_items(rows, generated, smol_tokenizer), choice_items(rows, smol_tokenizer)
    assert len(items) == 2 and [(i.choices, i.label) for i in items] == [(i.choices, i.label) for i in reference[:2]]
    assert 'means: "The noun "___" means ___, in a steep manner."?' in items[0].prompt
    assert masked_definition("", ["x"]) == "___" and masked_definition("Steeply.", ["steeply"]) == "___."
    definitions = round_trip_rows(load_rows("bundled:test"))  # the definitions split names the same words
    assert [(i.choices, i.label) for i in round_trip_items(definitions, generated, smol_tokenizer)] == [
        (i.choices, i.label) for i in reference[:2]]
    assert round_trip_rows([{"messages": []}]) == []


def test_the_ended_choice_score_reads_each_option_followed_by_the_end_of_turn(smol_tokenizer):
    assert end_of_turn_text(smol_tokenizer) == "<|im_end|>"
    items = [ChoiceItem("p", ("ab", "a"), 1)]

    class Model:  # the scores are read through option_logprobs: plant them per option text
        pass

    seen = []

    def fake_scores(model, tokenizer, items, batch_size):
        seen.append([c for item in items for c in item.choices])
        # bare: the prefix "a" of "ab" scores higher; ended: "ab<|im_end|>" scores higher
        return np.array([[0.0, 1.0]]) if len(seen) == 1 else np.array([[1.0, 0.0]])

    import hf_negteacher.evaluation.multiple_choice as mc

    original, mc._option_scores = mc._option_scores, fake_scores
    try:
        rows = choice_rows(Model(), smol_tokenizer, items, end_of_turn="<|im_end|>")
    finally:
        mc._option_scores = original
    assert seen == [["ab", "a"], ["ab<|im_end|>", "a<|im_end|>"]]
    assert rows["choice_correct"].tolist() == [1.0] and rows["choice_correct_ended"].tolist() == [0.0]


def test_reverse_rows_keep_their_accepted_answers(smol_tokenizer):
    pairs = validate_rows(load_rows("bundled:reverse-eval")[:3], smol_tokenizer)
    assert [p.accepted for p in pairs] == [tuple(r["accepted"]) for r in load_rows("bundled:reverse-eval")[:3]]


def test_choice_items_draw_same_pos_distractors_that_are_not_accepted_answers(smol_tokenizer):
    rows = load_rows("bundled:reverse-eval")[:200]
    items = choice_items(rows, smol_tokenizer, options=5, seed=0)
    pos_of = {r["word"]: r["pos"] for r in rows}
    for row, item in zip(rows, items, strict=True):
        assert len(item.choices) == 5 and item.choices[item.label] == row["word"]
        assert all(pos_of[c] == row["pos"] for c in item.choices)
        assert not (set(item.choices) - {row["word"]}) & set(row["accepted"])
        assert row["definition"] in item.prompt and item.prompt.endswith("<|im_start|>assistant\n")
    assert items == choice_items(rows, smol_tokenizer, options=5, seed=0)  # deterministic for a seed
    labels = np.array([item.label for item in items])
    assert 0.1 < (labels == 0).mean() < 0.3  # the right option's place is shuffled
    with pytest.raises(ChoiceDataError, match=r"row 0: multiple choice needs `word`, `pos`"):
        choice_items([{"word": "cat"}], smol_tokenizer)


class PlantedLM(nn.Module):
    """Next-token log-probabilities that do not depend on the context: `bias` (0 everywhere: uniform)."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1), past_key_values=DynamicCache())


def test_a_planted_model_scores_one_and_a_uniform_one_scores_chance(smol_tokenizer):
    # Single-token options: the planted model puts its mass on the right option's token, the uniform one
    # ties every option (the first wins, as in lm-eval's argmax), so it scores the share of label 0: ~1/5.
    vocabulary = [f" {w}" for w in ("cat", "dog", "sun", "tree", "car")]
    ids = [smol_tokenizer(w, add_special_tokens=False).input_ids for w in vocabulary]
    assert all(len(i) == 1 for i in ids)
    rng = np.random.default_rng(0)
    items = [ChoiceItem("Pick one:", tuple(vocabulary), int(rng.integers(0, 5))) for _ in range(400)]
    uniform = PlantedLM(torch.zeros(len(smol_tokenizer)))
    accuracy = choice_rows(uniform, smol_tokenizer, items)["choice_correct"].mean()
    assert accuracy == pytest.approx(0.2, abs=0.05) and accuracy == np.mean([i.label == 0 for i in items])
    right = ids[0][0]
    planted_items = [ChoiceItem(i.prompt, tuple(np.roll(vocabulary, i.label)), i.label) for i in items]
    assert all(i.choices[i.label] == " cat" for i in planted_items)
    planted = PlantedLM(torch.zeros(len(smol_tokenizer)).index_fill(0, torch.tensor([right]), 5.0))
    assert choice_rows(planted, smol_tokenizer, planted_items)["choice_correct"].mean() == 1.0
