"""``hybridembed index --late-chunking``: the same chunks (ids, texts, payloads) as plain
``index``, with vectors from ``Embedder.embed_chunks``, written into the store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybridembed.errors import InvalidOptionError
from hybridembed.ingest import late_chunked, read_documents
from hybridembed.stores import open_store
from tests.test_ingest_cli import run_here

TEXT = ("The Rhine rises in the Swiss Alps. It flows north through Germany. "
        "Its delta meets the North Sea near Rotterdam, where the port handles most cargo. ") * 30


def test_late_chunked_documents_are_the_plain_chunks(minilm, tmp_path):
    (tmp_path / "river.txt").write_text(TEXT)
    (tmp_path / "facts.jsonl").write_text(json.dumps({"id": "f1", "text": "Cats purr.",
                                                      "lang": "en"}) + "\n")
    paths = [tmp_path / "river.txt", tmp_path / "facts.jsonl"]
    plain = list(read_documents(paths, minilm.tokenizer, 64, 8))
    parts = list(late_chunked(paths, minilm, 64, 8, multivector=True))
    late = [d for docs, _ in parts for d in docs]
    assert sorted((d.key, d.text, d.payload["chunk"]) for d in late) == \
        sorted((d.key, d.text, d.payload["chunk"]) for d in plain)
    whole = minilm.embed_chunks(TEXT, every=64, overlap=8, sparse=True, multivector=True)
    by_key = {d.key: (r, result) for docs, result in parts for r, d in enumerate(docs)}
    for n in range(len(whole)):
        r, result = by_key[f"{tmp_path / 'river.txt'}#{n}"]
        np.testing.assert_allclose(result.dense[r], whole.result.dense[n], atol=1e-6)
        assert result.sparse[r] == whole.result.sparse[n]


def test_index_late_chunking_cli(minilm, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "river.txt").write_text(TEXT)
    status, out, err = run_here(capsys, tmp_path, "index", "river.txt", "--collection", "kb",
                                "--chunk-tokens", "64", "--overlap", "8", "--late-chunking",
                                "--device", "cpu")
    assert status == 0, err
    plain = list(read_documents([tmp_path / "river.txt"], minilm.tokenizer, 64, 8))
    assert f"holds {len(plain)}" in out
    status, out, _ = run_here(capsys, tmp_path, "search", "Which sea does the delta meet?",
                              "--collection", "kb", "-k", "3", "--json", "--device", "cpu")
    assert status == 0 and len(json.loads(out)) == 3


def test_upsert_embedded_checks_before_writing(minilm, tmp_path):
    store = open_store(minilm, "edge", data_dir=str(tmp_path / "d"))
    store.ensure_collection("kb", multivector=True)
    result = minilm.embed(["one", "two"], sparse=True)  # no multi-vectors
    with pytest.raises(InvalidOptionError, match="multi-vectors"):
        store.upsert_embedded("kb", [{"text": "one"}, {"text": "two"}], result)
    with pytest.raises(InvalidOptionError, match="2 rows for 1 documents"):
        store.upsert_embedded("kb", [{"text": "one"}],
                              minilm.embed(["one", "two"], sparse=True, multivector=True))
    assert store.count("kb") == 0
    store.close()
