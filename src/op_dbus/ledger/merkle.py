"""RFC 6962 / RFC 9162 Merkle tree: hashing, inclusion and consistency proofs, and their verifiers.

Proof generation reads only "perfect" subtree hashes through a `NodeGetter`: `get(level, index)` is
the hash of the complete subtree over leaves `[index * 2**level, (index + 1) * 2**level)`. Such a
node never changes once its last leaf exists, so a store can cache them forever, and any proof or
tree head for any size needs O(log n) of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

from op_dbus.errors import LedgerError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeGetter = Callable[[int, int], bytes]

_sha256 = hashlib.sha256


class ProofError(LedgerError, ValueError):
    """A proof does not verify, or its parameters are impossible."""


def leaf_hash(entry: bytes) -> bytes:
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than `n` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_ranges(start: int, end: int) -> Iterator[tuple[int, int]]:
    """The (level, index) of the perfect subtrees that make up leaves [start, end), left to right.

    Only valid for the ranges RFC 6962 trees are built from: each piece must be aligned, which holds
    for prefixes [0, n) and for every subtree the proof recursions visit.
    """
    pos = start
    length = end - start
    for level in range(length.bit_length() - 1, -1, -1):
        if length >> level & 1:
            if pos & ((1 << level) - 1):
                raise ValueError(f"range [{start}, {end}) is not made of aligned subtrees")
            yield level, pos >> level
            pos += 1 << level


def fold(hashes: Sequence[bytes]) -> bytes:
    """Combine the perfect-subtree hashes of a range (left to right) into its Merkle tree hash."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def range_hash(start: int, end: int, get: NodeGetter) -> bytes:
    """MTH of leaves [start, end)."""
    return fold([get(level, index) for level, index in perfect_ranges(start, end)])


def root(size: int, get: NodeGetter) -> bytes:
    return range_hash(0, size, get)


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[0:size]), ordered from the leaf up."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    path = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(range_hash(lo + k, hi, get))
            hi = lo + k
        else:
            path.append(range_hash(lo, lo + k, get))
            lo += k
    path.reverse()
    return path


def consistency_proof(old: int, new: int, get: NodeGetter) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(old, D[0:new])."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    path = []
    lo, hi, m, complete = 0, new, old, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                path.append(range_hash(lo, hi, get))
            break
        k = _split(n)
        if m <= k:
            path.append(range_hash(lo + k, hi, get))
            hi = lo + k
        else:
            path.append(range_hash(lo, lo + k, get))
            lo += k
            m -= k
            complete = False
    path.reverse()
    return path


def _check_hash(name: str, value: bytes) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be a {HASH_SIZE}-byte hash")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root that `proof` implies for `leaf` (a leaf hash) at `index`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash("leaf hash", leaf)
    fn, sn, r = index, size - 1, bytes(leaf)
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes] | None, root_hash: bytes) -> None:
    """Raise ProofError unless `proof` shows leaf hash `leaf` at `index` in the tree of `size` with `root_hash`."""
    _check_hash("root", root_hash)
    got = root_from_inclusion_proof(index, size, leaf, proof or [])
    if got != root_hash:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the root of size {size}")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes] | None, root1: bytes, root2: bytes) -> None:
    """RFC 9162 §2.1.4.2: raise ProofError unless the tree (size2, root2) extends (size1, root1)."""
    proof = list(proof or [])
    if size1 <= 0:
        # An empty tree is a prefix of every tree: a proof from it says nothing, so none is accepted.
        raise ProofError("a consistency proof from an empty tree is meaningless")
    if size2 < size1:
        raise ProofError(f"size {size2} is smaller than size {size1}")
    if size1 == size2:
        # Nothing to prove: the same tree must have the same head (compared as given, like other verifiers).
        if proof:
            raise ProofError("equal sizes need an empty consistency proof")
        if root1 != root2:
            raise ProofError("equal sizes but different roots")
        return
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    if not proof:
        raise ProofError("empty consistency proof between different sizes")
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
    if size1 & (size1 - 1) == 0:
        proof.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != root1:
        raise ProofError(f"consistency proof does not match the root of size {size1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not match the root of size {size2}")


class Frontier:
    """The right edge of a growing tree: one perfect-subtree hash per set bit of the size.

    Appending a leaf is O(log n) and yields the perfect nodes it completes, so a store can persist them.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} holds {size.bit_count()} hashes, not {len(hashes)}")
        self.size = size
        self.hashes = list(hashes)

    @staticmethod
    def positions(size: int) -> list[tuple[int, int]]:
        return list(perfect_ranges(0, size))

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the (level, index, hash) of every perfect node it completes."""
        index = self.size
        h = leaf
        created = [(0, index, h)]
        level = 0
        while index & 1:
            h = node_hash(self.hashes.pop(), h)
            level += 1
            index >>= 1
            created.append((level, index, h))
        self.hashes.append(h)
        self.size += 1
        return created

    def root(self) -> bytes:
        return fold(self.hashes)


class MemoryTree:
    """Every perfect node of a tree, in memory: for tests, benchmarks and rebuilding a log's tree."""

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        levels = self.levels
        levels[0].append(leaf)
        index = len(levels[0]) - 1
        level = 0
        h = leaf
        while index & 1:
            h = node_hash(levels[level][index - 1], h)
            level += 1
            index >>= 1
            if level == len(levels):
                levels.append([])
            levels[level].append(h)

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return root(self.size if size is None else size, self.node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self.size if size is None else size, self.node)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        return consistency_proof(old, self.size if new is None else new, self.node)
