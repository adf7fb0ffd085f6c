"""Shared checks for the runtime tests."""

import numpy as np


def assert_same_result(a, b, atol: float = 2e-5, sparse_atol: float = 2e-4) -> None:
    """Two ``EmbedResult``s hold the same dense, sparse and multi-vector outputs (those
    present), within ``atol`` (``sparse_atol`` for sparse weights)."""
    if a.dense is not None:
        np.testing.assert_allclose(a.dense, b.dense, atol=atol)
    for x, y in zip(a.sparse or (), b.sparse or (), strict=True):
        assert x.indices.tolist() == y.indices.tolist()
        np.testing.assert_allclose(x.values, y.values, atol=sparse_atol)
    for x, y in zip(a.multivector or (), b.multivector or (), strict=True):
        np.testing.assert_allclose(x, y, atol=atol)
