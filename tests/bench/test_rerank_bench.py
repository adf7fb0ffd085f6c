"""``hybridembed bench --suite rerank`` end to end on a tiny cross-encoder and a few
passages: every engine runs and the report holds its rates (no timing thresholds)."""

from __future__ import annotations

from hybridembed import cli
from hybridembed.bench import rerank


def test_rerank_bench_reports_every_engine(tiny_ce_dir):
    steps = []
    report = rerank.run(str(tiny_ce_dir), passages=6, words=12, rounds=2,
                        progress=steps.append)
    assert set(report["pairs_per_s"]) == set(rerank.ENGINES)
    assert all(rate > 0 for rate in report["pairs_per_s"].values())
    assert all(len(w) == 2 for w in report["seconds"].values())
    assert report["http_over_in_process"] > 0 and report["tokens_per_pair"] > 12
    assert steps == ["round 1/2", "round 2/2"]
    text = rerank.format_report(report)
    assert "http / in-process" in text and "sentence-transformers" in text


def test_serve_sizes_and_repeated_models_parse():
    args = cli.build_parser().parse_args(
        ["serve", "--model", "minilm", "--model", "rr=bge-reranker-base", "--max-memory",
         "1.5GiB", "--lazy", "--keep-alive", "5m"])
    assert args.model == ["minilm", "rr=bge-reranker-base"]
    assert args.max_memory == int(1.5 * 2**30) and args.lazy and args.keep_alive == "5m"
    assert cli._size("512MB") == 512_000_000 and cli._size("4096") == 4096
