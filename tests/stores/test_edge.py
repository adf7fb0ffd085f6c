"""Qdrant Edge specifics: it has no background optimiser, so the adapter optimises after
every ``optimize_every`` points written and once after a bulk load."""

import numpy as np

from hybridembed.sparse import SparseVector
from hybridembed.stores.base import Record
from hybridembed.stores.qdrant_edge import QdrantEdgeBackend

META = {"schema": {"model": "synthetic", "dense_dim": 8, "sparse_kind": "learned",
                   "multivector_dim": 0, "vocab_size": 100}, "fields": []}


def records(start, n, rng):
    return [Record(key=f"k{i}", text=f"text {i}", payload={},
                   dense=rng.standard_normal(8).astype("f4"),
                   sparse=SparseVector(np.array([i % 100], "i4"), np.array([1.0], "f4")))
            for i in range(start, start + n)]


def test_writes_optimise_every_n_points_and_bulk_once_at_the_end(tmp_path, monkeypatch):
    backend = QdrantEdgeBackend(tmp_path, optimize_every=50)
    backend.create("c", META)
    optimised = []
    real = QdrantEdgeBackend.optimize
    monkeypatch.setattr(QdrantEdgeBackend, "optimize",
                        lambda self, name: optimised.append(name) or real(self, name))
    rng = np.random.default_rng(0)
    for start in range(0, 120, 20):  # 120 points in writes of 20: due at 60 and 120
        backend.write("c", records(start, 20, rng))
    assert optimised == ["c", "c"]
    optimised.clear()
    with backend.bulk("c"):
        for start in range(120, 320, 20):
            backend.write("c", records(start, 20, rng))
        assert optimised == []  # none while the bulk load runs
    assert optimised == ["c"]
    assert backend.count("c") == 320
    backend.close()
