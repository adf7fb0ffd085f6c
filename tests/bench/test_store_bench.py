"""The store benchmark runs end to end on a small Qdrant Edge collection (no timing
thresholds: this machine's speed is not under test)."""

from __future__ import annotations

import pytest

pytest.importorskip("qdrant_edge")
pytest.importorskip("scipy")

from hybridembed.bench import stores  # noqa: E402


def test_edge_run_report(tmp_path):
    messages = []
    report = stores.run(kinds=("edge",), n_docs=2000, queries=20, data_dir=tmp_path,
                        progress=messages.append)
    cfg = report["config"]
    assert cfg["n_docs"] == 2000 and cfg["queries"] == 20 and cfg["sparse_kind"] == "learned"
    assert 20 <= cfg["mean_doc_terms"] <= 60 and 3 <= cfg["mean_query_terms"] <= 6
    assert report["machine"]["cores"] >= 1
    assert list(report["stores"]) == ["edge"]
    edge = report["stores"]["edge"]
    assert edge["n_docs"] == edge["count"] == 2000
    assert edge["write_s"] > 0 and edge["write_rate"] > 0 and edge["disk_mb"] > 0
    assert edge["load"] == "bulk" and edge["index_build_s"] >= 0
    for mode in ("hybrid", "dense", "sparse"):
        lat = edge[mode]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        assert lat["mean"] > 0
        assert 0 <= edge["recall"][mode] <= 1
    # random unit vectors at 2000 points: search is close to exact
    assert edge["recall"]["dense"] > 0.5
    assert messages and any("[edge]" in m for m in messages)
    assert list(tmp_path.iterdir()) == []  # the temporary stores are gone

    text = stores.format_report(report)
    assert "edge" in text and "hyb p50" in text and "built once after the load" in text


def test_synthetic_data_is_reproducible():
    a = stores.Synthetic(50, 8, 5, seed=3)
    b = stores.Synthetic(50, 8, 5, seed=3)
    assert (a.dense == b.dense).all()
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all()
               for x, y in zip(a.sparse, b.sparse, strict=True))
    assert all(x == y for x, y in zip(a.query_sparse, b.query_sparse, strict=True))
    assert all((w > 0).all() and (t < stores.VOCAB_SIZE).all() for t, w in a.sparse)
