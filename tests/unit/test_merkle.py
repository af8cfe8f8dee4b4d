"""RFC 6962 proofs: every shared test vector, and proofs Baton generates verifying against its own roots."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from tests.scenarios import ROOT

VECTORS = ROOT.parent / "shared" / "testvectors" / "rfc6962"


def cases(kind: str) -> list[Path]:
    found = sorted((VECTORS / kind).rglob("*.json"))
    assert found or not VECTORS.exists(), f"no {kind} vectors under {VECTORS}"
    return found


def b64(value: str) -> bytes:
    return base64.b64decode(value)


@pytest.mark.parametrize("path", cases("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vectors(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [b64(p) for p in case["proof"] or []]
    check = lambda: verify_inclusion(  # noqa: E731
        b64(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, b64(case["root"])
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


@pytest.mark.parametrize("path", cases("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vectors(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [b64(p) for p in case["proof"] or []]
    check = lambda: verify_consistency(  # noqa: E731
        case["size1"], case["size2"], proof, b64(case["root1"]), b64(case["root2"])
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


def test_the_vectors_are_all_there() -> None:
    if not VECTORS.exists():
        pytest.fail(f"the shared RFC 6962 vectors are missing at {VECTORS}")
    assert len(cases("inclusion")) + len(cases("consistency")) == 196


def test_known_roots() -> None:
    assert root_of([]) == EMPTY_ROOT
    # RFC 6962 reference tree of 8 leaves from the transparency-dev test data.
    leaves = [
        leaf_hash(bytes.fromhex(h))
        for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
    ]
    assert base64.b64encode(root_of(leaves)).decode() == "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=70), st.data())
def test_generated_proofs_verify_and_tampered_ones_do_not(data_items: list[bytes], data: st.DataObject) -> None:
    tree = MemoryTree()
    for item in data_items:
        tree.append(leaf_hash(item))
    size = tree.size
    assert tree.root() == root_of(tree.levels[0])
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(tree.subtree, index, size)
    verify_inclusion(tree.levels[0][index], index, size, proof, tree.root())
    first = data.draw(st.integers(1, size))
    consistency = consistency_proof(tree.subtree, first, size)
    verify_consistency(first, size, consistency, tree.root(first), tree.root())
    if proof:
        bad = list(proof)
        bad[0] = bytes([bad[0][0] ^ 1]) + bad[0][1:]
        with pytest.raises(ProofError):
            verify_inclusion(tree.levels[0][index], index, size, bad, tree.root())
    if consistency:
        with pytest.raises(ProofError):
            verify_consistency(first, size, consistency[:-1], tree.root(first), tree.root())
