"""Every bad input of `tests/bad_inputs.py`: exit code 2, one line naming what is wrong, no traceback, no model
loaded; and `docs/bad-inputs.md` lists each case with the line it gets."""

import re

import pytest
from bad_inputs import CASES, DOC, message_line, run_case


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gets_one_clear_line(case, tmp_path):
    code, stderr = run_case(case, tmp_path)
    assert "Traceback" not in stderr, stderr
    assert code == (None if case.warns else 2), stderr  # None: it went on to load the model
    line = message_line(stderr, case.warns)
    assert case.expect in line, stderr
    assert [ln for ln in stderr.splitlines() if ln.startswith("negteacher")] == ([] if case.warns else [line])


def test_doc_lists_every_case_with_its_message():
    row = re.compile(r"^\| `([\w-]+)` \| .*? \| `` (.*) `` \|$", re.M)
    rows = {m.group(1): m.group(2) for m in row.finditer(DOC.read_text())}
    assert set(rows) == {case.id for case in CASES}
    for case in CASES:
        assert case.expect.replace("|", "\\|") in rows[case.id], case.id
