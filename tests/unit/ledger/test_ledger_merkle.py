"""RFC 6962 / RFC 9162 Merkle tree: every published test vector, the reference tree, and generated proofs."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from op_dbus.ledger import merkle

DATA = Path(__file__).parent / "data" / "merkle"
VECTORS = DATA / "testdata"

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"test vectors not present at {VECTORS}")


def _files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json")) if VECTORS.is_dir() else []


def _b64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


@pytest.mark.parametrize("path", _files("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b64(p) for p in case["proof"] or []]
    if case["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(case["leafIdx"], case["treeSize"], _b64(case["leafHash"]), proof, _b64(case["root"]))
    else:
        merkle.verify_inclusion(case["leafIdx"], case["treeSize"], _b64(case["leafHash"]), proof, _b64(case["root"]))


@pytest.mark.parametrize("path", _files("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    proof = [_b64(p) for p in case["proof"] or []]
    args = (case["size1"], case["size2"], proof, _b64(case["root1"]), _b64(case["root2"]))
    if case["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_vector_counts() -> None:
    # Guards against a glob that silently matches nothing.
    assert len(_files("inclusion")) == 98
    assert len(_files("consistency")) == 98


def _reference() -> tuple[list[bytes], dict[int, str]]:
    inputs: dict[int, bytes] = {}
    roots: dict[int, str] = {}
    for line in (DATA / "derived" / "rfc6962-8-leaf-reference.txt").read_text().splitlines():
        parts = line.split()
        if line.startswith("input"):
            inputs[int(parts[1])] = b"" if parts[2] == "-" else bytes.fromhex(parts[2])
        elif line.startswith("root"):
            roots[int(parts[1])] = parts[2]
    return [inputs[i] for i in range(len(inputs))], roots


def test_reference_tree_roots() -> None:
    inputs, roots = _reference()
    tree = merkle.MemoryTree()
    frontier = merkle.Frontier()
    assert tree.root(0).hex() == roots[0]
    for data in inputs:
        tree.append(merkle.leaf_hash(data))
        frontier.append(merkle.leaf_hash(data))
        assert frontier.root().hex() == roots[tree.size]
    for size, want in roots.items():
        assert tree.root(size).hex() == want


def test_reference_happy_path_proofs_match_generated() -> None:
    inputs, _ = _reference()
    tree = merkle.MemoryTree()
    for data in inputs:
        tree.append(merkle.leaf_hash(data))
    case = json.loads((VECTORS / "inclusion" / "1" / "happy-path.json").read_text())
    assert tree.inclusion_proof(case["leafIdx"], case["treeSize"]) == [_b64(p) for p in case["proof"]]
    case = json.loads((VECTORS / "consistency" / "1" / "happy-path.json").read_text())
    assert tree.consistency_proof(case["size1"], case["size2"]) == [_b64(p) for p in case["proof"]]


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH written from the definition, as an independent oracle."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return merkle.leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def test_generated_proofs_match_definition_and_verify() -> None:
    entries = [f"entry {i}".encode() for i in range(40)]
    tree = merkle.MemoryTree()
    for e in entries:
        tree.append(merkle.leaf_hash(e))
    for size in range(1, len(entries) + 1):
        root = tree.root(size)
        assert root == _mth(entries[:size])
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == _path(index, entries[:size])
            merkle.verify_inclusion(index, size, merkle.leaf_hash(entries[index]), proof, root)
        for old in range(1, size + 1):
            proof = tree.consistency_proof(old, size)
            assert proof == _subproof(old, entries[:size], True)
            merkle.verify_consistency(old, size, proof, tree.root(old), root)


def test_tampered_proofs_fail() -> None:
    tree = merkle.MemoryTree()
    for i in range(21):
        tree.append(merkle.leaf_hash(bytes([i])))
    root = tree.root()
    proof = tree.inclusion_proof(13)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([proof[i][0] ^ 1]) + proof[i][1:]
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(13, 21, tree.node(0, 13), bad, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(12, 21, tree.node(0, 13), proof, root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_inclusion(13, 21, tree.node(0, 13), proof[:-1], root)
    cproof = tree.consistency_proof(7, 21)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(7, 21, cproof, tree.root(8), root)
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(7, 21, [*cproof, cproof[0]], tree.root(7), root)
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(21, 21, tree.node)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(0, 21, tree.node)


def test_proofs_are_logarithmic_at_a_million_leaves() -> None:
    # A lazily computed perfect-node getter over leaf i = SHA-256(0x00 || i): proofs touch O(log n) nodes.
    size = 1_000_000
    calls = 0

    def node(level: int, index: int) -> bytes:
        nonlocal calls
        calls += 1
        return hashlib.sha256(f"{level}/{index}".encode()).digest()

    proof = merkle.inclusion_proof(123_456, size, node)
    assert len(proof) == 20
    assert calls <= 2 * 20
    calls = 0
    proof = merkle.consistency_proof(500_000, size, node)
    assert len(proof) <= 2 * 20
    assert calls <= 3 * 20
