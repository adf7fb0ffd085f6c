"""Score maths against hand-computed cases."""

import numpy as np
import pytest

from hybridembed import SparseVector
from hybridembed.scores import combined, cosine, lexical, maxsim


def test_cosine():
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2 ** -0.5)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_lexical_sums_shared_ids():
    a = SparseVector([1, 4, 9], [0.5, 2.0, 1.0])
    b = SparseVector([4, 9, 12], [3.0, 0.25, 8.0])
    assert lexical(a, b) == pytest.approx(2.0 * 3.0 + 1.0 * 0.25)


def test_maxsim_means_best_match_per_query_token():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 0.5]])
    # token 1 best = 1.0 (doc row 1), token 2 best = 0.8 (doc row 0)
    assert maxsim(q, d) == pytest.approx(0.9)
    assert maxsim(q, np.empty((0, 2))) == 0.0


def test_combined_uses_bge_m3_weights():
    assert combined(0.8, 0.3, 0.6) == pytest.approx((0.4 * 0.8 + 0.2 * 0.3 + 0.4 * 0.6) / 1.0)
    assert combined(0.8, 0.3) == pytest.approx((0.4 * 0.8 + 0.2 * 0.3) / 0.6)
    with pytest.raises(ValueError):
        combined()
