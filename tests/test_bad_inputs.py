"""The whole bad-input table (``tests/bad_input_table.py``): 0 tracebacks, every case as
expected (a clear one-line error, or a run that works and gives the right result)."""

from __future__ import annotations

import pytest

from bad_input_table import ERROR, WORKS, counts, run_table

pytestmark = pytest.mark.slow


def test_every_bad_input_gives_a_clear_error_or_works():
    outcomes = run_table(verbose=False)
    tally = counts(outcomes)
    wrong = [
        f"{o.case.kind}/{o.case.name}: expected {o.case.expected}, got {o.result}: {o.detail}"
        for o in outcomes
        if o.result != o.case.expected
    ]
    assert tally["traceback"] == 0 and not wrong, "\n".join(wrong)
    # the classes of the issue are all there
    kinds = {o.case.kind for o in outcomes}
    assert kinds == {"image", "keypoints", "option", "output", "cache", "api"}
    assert tally[ERROR] >= 50 and tally[WORKS] >= 20
