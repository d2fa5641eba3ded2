"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proofs.

Exactly the algorithms of RFC 9162 section 2.1, so that any CT-style verifier
can check our trees and proofs:
  leaf hash  = SHA-256(0x00 || entry)
  node hash  = SHA-256(0x01 || left || right)
  MTH({})    = SHA-256()
  MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n
Inclusion proofs (2.1.3) and consistency proofs (2.1.4) are lists of node
hashes in the RFC's order; their verification follows 2.1.3.2 and 2.1.4.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, computed bottom-up in O(n) with O(log n) memory."""
    stack: list[tuple[int, bytes]] = []  # (height, hash) of complete subtrees
    for leaf in leaves:
        height, value = 0, leaf
        while stack and stack[-1][0] == height:
            _, left = stack.pop()
            value = node_hash(left, value)
            height += 1
        stack.append((height, value))
    if not stack:
        return EMPTY_ROOT
    # Fold the ragged right edge: smaller subtrees are right children.
    value = stack.pop()[1]
    while stack:
        value = node_hash(stack.pop()[1], value)
    return value


class CompactRange:
    """The right edge of a growing tree: its root in O(log n) space, for appends."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[bytes] = []  # complete subtrees, biggest first

    def append(self, leaf: bytes) -> None:
        value, size = leaf, self.size
        while size & 1:
            value = node_hash(self._stack.pop(), value)
            size >>= 1
        self._stack.append(value)
        self.size += 1

    def push_subtree(self, value: bytes, height: int) -> None:
        """Append a complete subtree of 2**HEIGHT leaves whose root is VALUE (the
        range's size a multiple of 2**HEIGHT): what HEIGHT levels of appends give."""
        if self.size & ((1 << height) - 1):
            raise ValueError(f"a subtree of height {height} does not start at {self.size}")
        size = self.size >> height
        while size & 1:
            value = node_hash(self._stack.pop(), value)
            size >>= 1
        self._stack.append(value)
        self.size += 1 << height

    def copy(self) -> CompactRange:
        other = CompactRange()
        other.size, other._stack = self.size, list(self._stack)
        return other

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        value = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            value = node_hash(left, value)
        return value


def leaf_hashes(entries: Sequence[bytes]) -> list[bytes]:
    """leaf_hash of each entry (the loop inlined: verification hashes millions)."""
    sha256 = hashlib.sha256
    return [sha256(b"\x00" + entry).digest() for entry in entries]


def levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of complete subtrees over LEAVES: levels[h][i] is the root of
    leaves[i * 2**h : (i + 1) * 2**h] (a ragged right end has no node of its own)."""
    sha256 = hashlib.sha256
    found, level = [leaves], leaves
    while len(level) > 1:
        pairs = zip(level[::2], level[1::2], strict=False)  # an odd last node: no parent
        level = [sha256(b"\x01" + a + b).digest() for a, b in pairs]
        found.append(level)
    return found


def prefix_subtrees(tree_levels: list[list[bytes]], count: int) -> list[tuple[bytes, int]]:
    """The complete subtrees that make up the first COUNT leaves of TREE_LEVELS
    (levels()), biggest first, as (root, height): pushed in this order onto a
    CompactRange they add those leaves."""
    found, offset = [], 0
    for height in reversed(range(len(tree_levels))):
        if count & (1 << height):
            found.append((tree_levels[height][offset >> height], height))
            offset += 1 << height
    return found


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} is outside a tree of size {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(leaves[:k], index), root(leaves[k:])]
    return [*inclusion_proof(leaves[k:], index - k), root(leaves[:k])]


def consistency_proof(leaves: Sequence[bytes], first: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 2.1.4.1, for 0 < m <= n."""
    n = len(leaves)
    if not 0 < first <= n:
        raise ValueError(f"first size {first} must be within 1..{n}")
    return _subproof(leaves, first, True)


def _subproof(leaves: Sequence[bytes], m: int, complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(leaves[:k], m, complete), root(leaves[k:])]
    return [*_subproof(leaves[k:], m - k, False), root(leaves[:k])]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 2.1.3.2."""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2 (with the trivial cases of equal and empty first trees)."""
    if first > second or any(len(p) != HASH_SIZE for p in proof):
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the first tree is a complete subtree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root
