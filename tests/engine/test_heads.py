"""Learned sparse weights of a padded batch, against a per-row dictionary reference."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridembed.engine.heads import learned_sparse

SPECIAL = np.array([0, 1, 2, 3], dtype=np.int64)


def reference(ids, weights, n):
    best = {}
    for i, w in zip(ids[:n], weights[:n], strict=True):
        if w > 0 and int(i) not in SPECIAL:
            best[int(i)] = max(best.get(int(i), -np.inf), float(w))
    return dict(sorted(best.items()))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), width=st.integers(1, 12), vocab=st.integers(4, 30),
       seed=st.integers(0, 10_000))
def test_every_row_equals_its_own_max_over_repeats(rows, width, vocab, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, width))
    # some zero and negative weights (dropped), repeats of one id (max kept)
    weights = rng.choice([-0.5, 0.0, 0.1, 0.7, 0.3, 1.2], (rows, width)).astype(np.float32)
    lengths = rng.integers(0, width + 1, rows)
    got = learned_sparse(ids, weights, lengths, SPECIAL)
    assert len(got) == rows
    for r in range(rows):
        vector = got[r]
        assert vector.indices.dtype == np.int64 and vector.values.dtype == np.float32
        assert dict(zip(vector.indices.tolist(), vector.values.tolist(), strict=True)) == \
            reference(ids[r], weights[r], lengths[r])


def test_padding_after_a_rows_length_is_ignored():
    ids = np.array([[0, 7, 9, 2, 9, 9], [0, 9, 2, 1, 1, 1]])
    weights = np.array([[5, 0.5, 0.2, 5, 0.9, 0.9], [5, 0.4, 5, 9, 9, 9]], dtype=np.float32)
    first, second = learned_sparse(ids, weights, [4, 3], SPECIAL)
    assert first.indices.tolist() == [7, 9] and np.allclose(first.values, [0.5, 0.2])
    assert second.indices.tolist() == [9] and np.allclose(second.values, [0.4])
