"""`baton verify` reads leaves.bin in pages and folds roots as it goes; the results are the whole-list ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from audit.merkle import root_of
from audit.verify import Failed, Leaves, Roots, roots_at


def leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]


def test_leaves_are_read_in_pages_and_by_index(tmp_path: Path) -> None:
    hashes = leaves(Leaves.PAGE // 32 * 2 + 7)  # across two page boundaries
    path = tmp_path / "leaves.bin"
    path.write_bytes(b"".join(hashes))
    stored = Leaves(path)
    assert len(stored) == len(hashes)
    assert list(stored) == hashes
    assert [stored[i] for i in (0, 4095, 4096, len(hashes) - 1)] == [hashes[i] for i in (0, 4095, 4096, -1)]
    with pytest.raises(IndexError):
        stored[len(hashes)]


def test_a_torn_or_missing_leaves_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "leaves.bin"
    with pytest.raises(Failed, match="missing"):
        Leaves(path)
    path.write_bytes(b"x" * 33)
    with pytest.raises(Failed, match="whole number"):
        Leaves(path)


def test_roots_folded_one_leaf_at_a_time_match_the_tree() -> None:
    hashes = leaves(1100)
    sizes = {0, 1, 2, 3, 255, 256, 257, 1024, 1100}
    assert roots_at(iter(hashes), sizes) == {size: root_of(hashes[:size]) for size in sizes}
    folded = Roots({7, 1000})
    for leaf in hashes:
        folded.add(leaf)
    assert folded.count == 1100
    assert folded.roots == {7: root_of(hashes[:7]), 1000: root_of(hashes[:1000])}
