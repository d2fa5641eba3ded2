"""securecore.audit.merkle against the published Certificate Transparency vectors.

The entries, roots and proofs are the reference test data of the CT
implementations (RFC 6962 / RFC 9162 hashing is the same); a tree no other
implementation agrees with would prove nothing to an outside verifier.
"""

from __future__ import annotations

import hashlib

import pytest

from securecore.audit import merkle

ENTRIES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
LEAVES = [merkle.leaf_hash(entry) for entry in ENTRIES]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (leaf index, tree size, path)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
CONSISTENCY = [  # (first size, second size, proof)
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def test_hashes_use_the_rfc_prefixes() -> None:
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()


@pytest.mark.parametrize("size", range(9))
def test_roots_match_the_published_ones(size: int) -> None:
    assert merkle.root(LEAVES[:size]).hex() == ROOTS[size]
    compact = merkle.CompactRange()
    for leaf in LEAVES[:size]:
        compact.append(leaf)
    assert compact.root().hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_the_published_ones(index: int, size: int, path: list) -> None:
    proof = merkle.inclusion_proof(LEAVES[:size], index)
    assert [p.hex() for p in proof] == path
    assert merkle.verify_inclusion(LEAVES[index], index, size, proof, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("first", "second", "path"), CONSISTENCY)
def test_consistency_proofs_match_the_published_ones(first: int, second: int, path: list) -> None:
    proof = merkle.consistency_proof(LEAVES[:second], first)
    assert [p.hex() for p in proof] == path
    assert merkle.verify_consistency(
        first, second, bytes.fromhex(ROOTS[first]), bytes.fromhex(ROOTS[second]), proof
    )


MANY = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(40)]
MANY_ROOTS = [merkle.root(MANY[:n]) for n in range(len(MANY) + 1)]


def test_every_inclusion_proof_verifies_and_a_changed_one_does_not() -> None:
    for size in range(1, len(MANY) + 1):
        for index in range(size):
            proof = merkle.inclusion_proof(MANY[:size], index)
            assert merkle.verify_inclusion(MANY[index], index, size, proof, MANY_ROOTS[size])
            other = MANY[(index + 1) % len(MANY)]
            assert not merkle.verify_inclusion(other, index, size, proof, MANY_ROOTS[size])
            if proof:
                bent = [*proof[:-1], bytes(32)]
                assert not merkle.verify_inclusion(MANY[index], index, size, bent, MANY_ROOTS[size])
                assert not merkle.verify_inclusion(
                    MANY[index], index, size, proof[:-1], MANY_ROOTS[size]
                )
            assert not merkle.verify_inclusion(
                MANY[index], index, size, [*proof, bytes(32)], MANY_ROOTS[size]
            )


def test_every_consistency_proof_verifies_and_a_rewritten_history_does_not() -> None:
    for second in range(1, len(MANY) + 1):
        for first in range(1, second + 1):
            proof = merkle.consistency_proof(MANY[:second], first)
            assert merkle.verify_consistency(
                first, second, MANY_ROOTS[first], MANY_ROOTS[second], proof
            )
            if first < second:
                # A first tree that differs in its last leaf is not a prefix.
                rewritten = merkle.root([*MANY[: first - 1], bytes(32)])
                assert not merkle.verify_consistency(
                    first, second, rewritten, MANY_ROOTS[second], proof
                )
                assert not merkle.verify_consistency(
                    first, second, MANY_ROOTS[first], MANY_ROOTS[second], proof[:-1]
                )


def test_bad_indexes_are_errors() -> None:
    with pytest.raises(ValueError, match="leaf index 8 is outside a tree of size 8"):
        merkle.inclusion_proof(LEAVES, 8)
    with pytest.raises(ValueError, match=r"first size 0 must be within 1\.\.8"):
        merkle.consistency_proof(LEAVES, 0)
    assert not merkle.verify_inclusion(LEAVES[0], 8, 8, [], bytes.fromhex(ROOTS[8]))


@pytest.mark.parametrize("chunk", [1, 2, 4, 8, 64])
def test_a_tree_built_a_chunk_at_a_time_has_every_root_of_one_built_leaf_by_leaf(chunk) -> None:
    """What verification does: the complete subtrees of each chunk (levels) pushed
    onto the tree, and any size's root from the tree before its chunk plus the
    chunk's subtrees up to that size (prefix_subtrees)."""
    leaves = [merkle.leaf_hash(b"entry %d" % n) for n in range(70)]
    one_by_one, expected = merkle.CompactRange(), [merkle.EMPTY_ROOT]
    for leaf in leaves:
        one_by_one.append(leaf)
        expected.append(one_by_one.root())
    tree, roots = merkle.CompactRange(), [merkle.EMPTY_ROOT]
    for base in range(0, len(leaves), chunk):
        levels = merkle.levels(leaves[base : base + chunk])
        for size in range(1, len(levels[0]) + 1):
            prefix = tree.copy()
            for value, height in merkle.prefix_subtrees(levels, size):
                prefix.push_subtree(value, height)
            assert prefix.size == base + size
            roots.append(prefix.root())
        for value, height in merkle.prefix_subtrees(levels, len(levels[0])):
            tree.push_subtree(value, height)
    assert roots == expected
    assert roots[-1] == merkle.root(leaves)


def test_a_subtree_pushed_out_of_line_is_refused() -> None:
    tree = merkle.CompactRange()
    tree.append(merkle.leaf_hash(b"a"))
    with pytest.raises(ValueError, match="does not start at 1"):
        tree.push_subtree(merkle.leaf_hash(b"b"), 1)
