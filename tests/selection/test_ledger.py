from __future__ import annotations

import pytest

from pipeline.ledger import add_counts, element_ledger, frame_elements, totals


def test_each_frame_counts_once_per_distinct_element():
    ledger = element_ledger(
        [["O", "H"], ["H"], ["Cu", "O", "O"]],
        ["candidate", "accurate", "failed"],
        [True, False, False],
        [False, True, False],
    )
    assert list(ledger) == ["H", "O", "Cu"]  # atomic-number order
    assert ledger["H"] == {
        "explored": 2,
        "accurate": 1,
        "candidate": 1,
        "failed": 0,
        "unscored": 0,
        "selected": 1,
        "sentinel": 1,
    }
    assert ledger["O"]["explored"] == 2 and ledger["O"]["failed"] == 1 and ledger["O"]["selected"] == 1
    assert ledger["Cu"] == {
        "explored": 1,
        "accurate": 0,
        "candidate": 0,
        "failed": 1,
        "unscored": 0,
        "selected": 0,
        "sentinel": 0,
    }


def test_add_counts_and_totals():
    a = {"H": {"explored": 2, "selected": 1}}
    b = {"H": {"explored": 1, "labelled": 1}, "He": {"explored": 4}}
    assert add_counts(a, b) == {"H": {"explored": 3, "selected": 1, "labelled": 1}, "He": {"explored": 4}}
    assert totals(["accurate", "candidate", "candidate"], [False, True, False], [True, False, False]) == {
        "explored": 3,
        "accurate": 1,
        "candidate": 2,
        "failed": 0,
        "unscored": 0,
        "selected": 1,
        "sentinel": 1,
    }
    assert frame_elements([8, 1, 1, 29]) == ["H", "O", "Cu"]


def test_bad_ledger_input():
    with pytest.raises(ValueError, match="differ in length"):
        element_ledger([["H"]], ["accurate", "failed"], [False], [False])
    with pytest.raises(ValueError, match="unknown frame class"):
        element_ledger([["H"]], ["great"], [False], [False])
