"""`hybridembed index` and `search` from the command line, on a fresh data directory."""

import json
import os
import subprocess
import sys

import pytest

from hybridembed.ingest import chunk_text

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(cwd, *args):
    return subprocess.run([sys.executable, "-m", "hybridembed", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300)


def test_index_then_search_idempotently(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hybrid.md").write_text("# Hybrid search\n\nDense vectors find meaning; BM25 "
                                    "finds exact keywords. " * 60)
    (docs / "facts.jsonl").write_text(
        json.dumps({"id": "f1", "text": "Cats are small carnivorous mammals.", "lang": "en"})
        + "\n" + json.dumps({"id": "f2", "text": "Le Rhin coule vers la mer du Nord.",
                             "lang": "fr"}) + "\n")
    first = run(tmp_path, "index", "docs", "--collection", "kb", "--chunk-tokens", "64")
    assert first.returncode == 0, first.stderr
    again = run(tmp_path, "index", "docs", "--collection", "kb", "--chunk-tokens", "64")
    count = int(first.stdout.split("holds ")[1].split()[0])
    assert count > 3 and f"holds {count}" in again.stdout  # re-run: no duplicates
    out = run(tmp_path, "search", "small carnivorous mammals", "--collection", "kb", "-k", "3")
    assert out.returncode == 0 and "f1" in out.stdout.splitlines()[1]
    hits = json.loads(run(tmp_path, "search", "mer", "--collection", "kb", "--filter", "lang=fr",
                          "--json").stdout)
    assert [h["id"] for h in hits] == ["f2"] and hits[0]["payload"]["lang"] == "fr"
    bad = run(tmp_path, "search", "x", "--collection", "missing")
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    cols = run(tmp_path, "collections", "--json")
    assert json.loads(cols.stdout)[0]["count"] == count


def test_chunks_overlap_at_token_boundaries():
    text = " ".join(f"w{i}" for i in range(10))
    spans = [(text.index(f"w{i}"), text.index(f"w{i}") + len(f"w{i}")) for i in range(10)]
    assert chunk_text(text, spans, 4, 1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunk_text("short", [(0, 5)], 4, 1) == ["short"]
    with pytest.raises(ValueError):
        chunk_text(text, spans, 4, 4)
