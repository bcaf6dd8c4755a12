"""The per-element ledger: how many frames of each chemistry went where.

A frame counts once for every distinct element it contains, so that the row of a rare
element shows how much of the exploration (and of the labelling budget) reached it. The
functions are pure: the flow stores their output on the ``Generation`` document
(``Generation.ledger``, ``Generation.counts``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ase.data import atomic_numbers, chemical_symbols

#: Ledger columns filled by selection; the report stage adds :data:`LABEL_COLUMNS` with
#: :func:`with_labels`.
SELECTION_COLUMNS = ("explored", "accurate", "candidate", "failed", "unscored", "selected", "sentinel")
#: Ledger columns filled once the frames are labelled (:func:`with_labels`).
LABEL_COLUMNS = ("labelled", "dft_failed")
#: Every column, in the order tables show them.
COLUMNS = SELECTION_COLUMNS + LABEL_COLUMNS


def _element_order(symbol: str) -> int:
    return atomic_numbers.get(symbol, len(chemical_symbols))


def frame_elements(numbers: Iterable[int]) -> list[str]:
    """Distinct element symbols of a frame, in order of atomic number."""
    return [chemical_symbols[z] for z in sorted({int(z) for z in numbers})]


def element_ledger(
    element_sets: Sequence[Iterable[str]],
    classes: Sequence[str],
    selected: Sequence[bool],
    sentinel: Sequence[bool],
) -> dict[str, dict[str, int]]:
    """Per-element counts ``{element: {column: count}}`` for one batch of explored frames.

    ``classes[i]`` is the class of frame ``i`` ("accurate", "candidate", "failed" or
    "unscored"); ``selected`` and ``sentinel`` flag the frames sent to labelling as
    candidates and as sentinels. Elements are listed in order of atomic number.
    """
    if not (len(element_sets) == len(classes) == len(selected) == len(sentinel)):
        raise ValueError(
            f"ledger inputs differ in length: {len(element_sets)} frames, {len(classes)} classes, "
            f"{len(selected)} selected flags, {len(sentinel)} sentinel flags"
        )
    ledger: dict[str, dict[str, int]] = {}
    for elements, cls, is_selected, is_sentinel in zip(element_sets, classes, selected, sentinel):
        if cls not in SELECTION_COLUMNS[1:5]:
            raise ValueError(f"unknown frame class {cls!r}")
        for element in set(elements):
            row = ledger.setdefault(element, dict.fromkeys(SELECTION_COLUMNS, 0))
            row["explored"] += 1
            row[cls] += 1
            row["selected"] += int(bool(is_selected))
            row["sentinel"] += int(bool(is_sentinel))
    return {element: ledger[element] for element in sorted(ledger, key=_element_order)}


def add_counts(*ledgers: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Sum ledgers column by column (e.g. the batches of one generation, or generations)."""
    total: dict[str, dict[str, int]] = {}
    for ledger in ledgers:
        for element, row in ledger.items():
            target = total.setdefault(element, {})
            for column, count in row.items():
                target[column] = target.get(column, 0) + int(count)
    return {element: total[element] for element in sorted(total, key=_element_order)}


def totals(classes: Sequence[str], selected: Sequence[bool], sentinel: Sequence[bool]) -> dict[str, int]:
    """Frame counts over the whole batch (each frame once), for ``Generation.counts``."""
    counts = dict.fromkeys(SELECTION_COLUMNS, 0)
    counts["explored"] = len(classes)
    for cls in classes:
        counts[cls] += 1
    counts["selected"] = int(sum(bool(s) for s in selected))
    counts["sentinel"] = int(sum(bool(s) for s in sentinel))
    return counts


def with_labels(
    ledger: Mapping[str, Mapping[str, int]],
    labelled: Iterable[Iterable[str]],
    failed: Iterable[Iterable[str]],
) -> dict[str, dict[str, int]]:
    """``ledger`` with its :data:`LABEL_COLUMNS` counted afresh from the element sets of the
    labelled and of the failed frames (recounted, not added, so a rerun gives the same)."""
    rows = {element: {**dict(row), **dict.fromkeys(LABEL_COLUMNS, 0)} for element, row in ledger.items()}
    for column, element_sets in zip(LABEL_COLUMNS, (labelled, failed)):
        for elements in element_sets:
            for element in set(elements):
                rows.setdefault(element, dict.fromkeys(LABEL_COLUMNS, 0))[column] += 1
    return {element: rows[element] for element in sorted(rows, key=_element_order)}
