"""``hybridembed bench`` end to end on a few texts: engines in child processes, the
report, JSON and chart (no timing thresholds: this machine's speed is not under test)."""

from __future__ import annotations

import json

from hybridembed.bench import throughput


def test_bench_two_engines_report_json_and_chart(tmp_path):
    started = []
    report = throughput.run("minilm", "short", n=24, budgets=(256, 1024),
                            engines=("sentence-transformers", "torch"), singles=3,
                            out_dir=tmp_path, progress=started.append,
                            outputs=("dense", "sparse"))
    assert started == ["sentence-transformers", "torch"]
    st, torch_ = report["engines"]
    assert "error" not in st and "error" not in torch_, report["engines"]
    assert [r["budget"] for r in torch_["runs"]] == [256, 1024]
    for r in st["runs"] + torch_["runs"]:
        assert r["texts_per_s"] > 0 and r["compute_utilisation"] > 0
    # Batch fill (real / padded tokens) is at most 1.0; above 0.5 on these mixed-length
    # texts shows length-sorted packing at work.
    fills = [r["padding_efficiency"] for r in torch_["runs"]]
    assert all(0.5 < f <= 1.0 for f in fills), fills
    assert 0 < torch_["latency"]["p50_ms"] <= torch_["latency"]["p99_ms"]
    assert torch_["peak_rss_mb"] > 0 and torch_["cache_hits_per_s"] > 0
    assert report["matmul_flops"] > 0 and report["flops_per_token"] > 0
    assert report["device"] == "cpu" and report["outputs"] == ["dense", "sparse"]
    assert json.loads((tmp_path / "bench.json").read_text())["texts"] == 24
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    text = throughput.format_report(report)
    assert "vs ST" in text and "cache hits" in text and "fill" in text
    assert "dense+sparse in one pass" in text


def test_matmul_probe_takes_the_best_shape():
    small = throughput.matmul_flops(shapes=((32, 32, 32),), seconds=0.05)
    both = throughput.matmul_flops(shapes=((32, 32, 32), (256, 256, 256)), seconds=0.1)
    assert small > 0 and both > 0
