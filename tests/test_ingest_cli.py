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


def run_here(capsys, cwd, *args):
    """The CLI in this process (no model start-up per call); returns (status, out, err)."""
    from hybridembed.cli import main

    status = main([*args, "--data-dir", str(cwd / ".hybridembed")])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_index_then_search_idempotently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
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
    status, again, _ = run_here(capsys, tmp_path, "index", "docs", "--collection", "kb",
                                "--chunk-tokens", "64")
    count = int(first.stdout.split("holds ")[1].split()[0])
    assert status == 0 and count > 3 and f"holds {count}" in again  # re-run: no duplicates
    status, out, _ = run_here(capsys, tmp_path, "search", "small carnivorous mammals",
                              "--collection", "kb", "-k", "3")
    assert status == 0 and "f1" in out.splitlines()[1]
    status, out, _ = run_here(capsys, tmp_path, "search", "mer", "--collection", "kb",
                              "--filter", "lang=fr", "--json")
    hits = json.loads(out)
    assert [h["id"] for h in hits] == ["f2"] and hits[0]["payload"]["lang"] == "fr"
    status, _, err = run_here(capsys, tmp_path, "search", "x", "--collection", "missing")
    assert status == 2 and "does not exist" in err
    status, out, _ = run_here(capsys, tmp_path, "collections", "--json")
    assert json.loads(out)[0]["count"] == count


def test_chunks_overlap_at_token_boundaries():
    text = " ".join(f"w{i}" for i in range(10))
    spans = [(text.index(f"w{i}"), text.index(f"w{i}") + len(f"w{i}")) for i in range(10)]
    assert chunk_text(text, spans, 4, 1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunk_text("short", [(0, 5)], 4, 1) == ["short"]
    with pytest.raises(ValueError):
        chunk_text(text, spans, 4, 4)
