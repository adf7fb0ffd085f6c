"""Property tests of the sparse utilities against plain-dict references."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridembed import SparseVector, dot, merge, prune

weights = st.dictionaries(st.integers(0, 300), st.floats(0, 10, width=32), max_size=40)


def vec(d):
    return SparseVector.from_dict(d)


@given(weights)
def test_construction_sorts_and_keeps_pairs(d):
    v = vec(d)
    assert v.indices.dtype == np.int64 and v.values.dtype == np.float32
    assert np.all(np.diff(v.indices) > 0)
    assert v.to_dict() == pytest.approx(d)


@given(weights, st.one_of(st.none(), st.floats(0, 10)), st.one_of(st.none(), st.integers(0, 50)))
def test_prune(d, min_weight, top_k):
    out = prune(vec(d), min_weight=min_weight, top_k=top_k).to_dict()
    kept = {k: v for k, v in vec(d).to_dict().items() if min_weight is None or v >= min_weight}
    assert set(out) <= set(kept)
    assert np.all(np.diff(list(out)) > 0)
    if top_k is None:
        assert out == kept
    else:
        assert len(out) == min(top_k, len(kept))
        if out and len(kept) > len(out):
            assert min(out.values()) >= max(v for k, v in kept.items() if k not in out)


@given(st.lists(weights, max_size=5), st.sampled_from(["sum", "max", "avg"]))
def test_merge(dicts, how):
    ref: dict[int, float] = {}
    for d in dicts:
        for k, v in vec(d).to_dict().items():
            ref[k] = max(ref[k], v) if how == "max" and k in ref else ref.get(k, 0.0) + v
    if how == "avg" and dicts:
        ref = {k: v / len(dicts) for k, v in ref.items()}
    out = merge([vec(d) for d in dicts], how=how).to_dict()
    assert set(out) == set(ref)
    for k in ref:
        assert out[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-5)


@given(weights, weights)
def test_dot_is_symmetric_and_matches_reference(a, b):
    a32, b32 = vec(a).to_dict(), vec(b).to_dict()
    ref = sum(a32[k] * b32[k] for k in a32.keys() & b32.keys())
    assert dot(vec(a), vec(b)) == pytest.approx(ref, rel=1e-6, abs=1e-6)
    assert dot(vec(a), vec(b)) == dot(vec(b), vec(a))


def test_bad_vectors_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        SparseVector([3, 1, 3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="length"):
        SparseVector([1, 2], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        SparseVector([-1], [1.0])
    with pytest.raises(ValueError, match="valid: sum, max, avg"):
        merge([], how="mean")


def test_from_pairs_takes_max_of_repeats():
    v = SparseVector.from_pairs([5, 2, 5, 2], [0.1, 0.4, 0.9, 0.3])
    assert v.to_dict() == pytest.approx({2: 0.4, 5: 0.9})


def test_conversions():
    v = SparseVector([7, 2], [0.5, 1.5])
    edge = v.to_qdrant_edge()
    assert list(edge.indices) == [2, 7] and list(edge.values) == pytest.approx([1.5, 0.5])
    assert v.to_json() == {"indices": [2, 7], "values": [1.5, 0.5]}
    assert list(v.to_tokens({2: "two", 7: "seven"})) == ["two", "seven"]
    qc = v.to_qdrant()
    assert qc.indices == [2, 7] and qc.values == pytest.approx([1.5, 0.5])
    pg = v.to_pgvector(10)
    assert pg.dimensions() == 10 and pg.indices() == [2, 7]
    with pytest.raises(ValueError, match="does not fit"):
        v.to_pgvector(5)
