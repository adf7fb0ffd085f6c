"""Stores that never half-write and always answer in the same order, on every adapter
(embedded Qdrant Edge, qdrant-client, real PostgreSQL with pgvector)."""

import dataclasses

import numpy as np
import pytest

from hybridembed import InvalidOptionError
from hybridembed.errors import InvalidInputError, NonFiniteOutputError
from hybridembed.sparse import SparseVector
from hybridembed.stores import VectorStore
from hybridembed.stores.base import Record

POISON = "poison"  # the fake model's output for a text holding this word is NaN


class NaNModel:
    """The real model, except that every output of a text holding :data:`POISON` is NaN
    (an fp16 overflow's result). ``raises``: report it as the Embedder does
    (NonFiniteOutputError with the batch's indexes) instead of returning the NaN rows."""

    def __init__(self, embedder, raises: bool = False):
        self.embedder, self.raises, self.calls = embedder, raises, 0

    @property
    def spec(self):
        return self.embedder.spec

    def embed(self, texts, **options):
        self.calls += 1
        result = self.embedder.embed(texts, **options)
        bad = [i for i, t in enumerate(texts) if POISON in t]
        if bad and self.raises:
            raise NonFiniteOutputError(bad)
        dense = result.dense.copy()
        sparse, multivector = list(result.sparse), result.multivector
        for i in bad:
            dense[i] = np.nan
            sparse[i] = SparseVector(sparse[i].indices, np.full_like(sparse[i].values, np.nan))
        return dataclasses.replace(result, dense=dense, sparse=sparse, multivector=multivector)


def docs(n, bad_at=None, bad_text="x"):
    return [{"id": f"d{i:03d}", "text": bad_text if i == bad_at else f"document number {i}"}
            for i in range(n)]


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b", "\udfff"])
def test_a_bad_text_anywhere_writes_nothing_and_names_the_document(store, name, bad):
    """301 documents with a NUL byte in #280 gave a 500 on pgvector with 256 written."""
    store.create_collection(name)
    store.upsert(name, docs(3))
    with pytest.raises(InvalidInputError, match="document #280") as caught:
        store.upsert(name, docs(301, bad_at=280, bad_text=bad))
    assert caught.value.index == 280
    assert store.count(name) == 3


@pytest.mark.parametrize("document, where", [
    ({"id": "a\x00", "text": "t"}, "id"),
    ({"text": "t", "payload": {"title": "x\x00y"}}, "payload field 'title'"),
    ({"text": "t", "payload": {"tags": ["ok", "\ud800"]}}, r"payload field 'tags'\[1\]"),
    ({"text": "t", "payload": {"meta": {"k\x00": 1}}}, "payload field 'meta' key"),
])
def test_ids_and_payload_strings_get_the_same_hygiene(store, name, document, where):
    store.create_collection(name)
    with pytest.raises(InvalidInputError, match=f"document #1 {where}"):
        store.upsert(name, [{"text": "fine"}, document])
    assert store.count(name) == 0


@pytest.mark.parametrize("payload", [{"score": float("nan")}, {"score": float("inf")},
                                     {"when": object()}, {"nested": {1: "x"}}])
def test_payloads_that_json_cannot_hold_are_refused(store, name, payload):
    store.create_collection(name)
    with pytest.raises(InvalidOptionError, match="document #0 payload field"):
        store.upsert(name, [{"text": "t", "payload": payload}])
    assert store.count(name) == 0


@pytest.mark.parametrize("raises", [False, True], ids=["silent-nan", "embedder-raises"])
def test_a_nan_output_in_a_later_batch_writes_nothing(backend, minilm, name, raises):
    fake = NaNModel(minilm, raises=raises)
    store = VectorStore(backend, fake, batch_size=4)
    store.create_collection(name)
    store.upsert(name, docs(2))
    with pytest.raises(NonFiniteOutputError, match="#9") as caught:
        store.upsert(name, docs(12, bad_at=9, bad_text=f"a {POISON} pill"))
    assert caught.value.indices == [9]
    assert fake.calls == 1 + 3  # batches 0-3, 4-7 embedded, 8-11 failed: nothing written
    assert backend.count(name) == 2 and store.schema(name).dense_dim == 384


def test_the_adapter_refuses_non_finite_records_from_elsewhere(store, name, minilm):
    """backend.write takes records computed elsewhere (a re-embed, a benchmark)."""
    store.create_collection(name, multivector=False)
    out = minilm.embed(["one", "two"], dense=True, sparse=True)
    records = [Record(key=k, text=t, payload={}, dense=out.dense[i], sparse=out.sparse[i])
               for i, (k, t) in enumerate([("a", "one"), ("b", "two")])]
    broken = dataclasses.replace(records[1], dense=np.full(384, np.inf, np.float32))
    with pytest.raises(NonFiniteOutputError, match="#1"):
        store.backend.write(name, [records[0], broken])
    with pytest.raises(InvalidInputError, match="document #0"):
        store.backend.write(name, [dataclasses.replace(records[0], text="nul\x00")])
    assert store.count(name) == 0
    store.backend.write(name, records)
    assert store.count(name) == 2


TWINS = ["t-b", "t-a", "t-d", "t-c", "t-e"]  # ids of five documents with the same text


@pytest.mark.parametrize("mode, fusion", [("dense", "rrf"), ("sparse", "rrf"),
                                          ("hybrid", "rrf"), ("hybrid", "dbsf"),
                                          ("hybrid", "weighted")])
@pytest.mark.parametrize("rerank", [None, "multivector"])
def test_ties_are_broken_by_id_the_same_way_every_time(store, name, mode, fusion, rerank):
    """Qdrant Edge gave 4 orders in 20 runs for hits tied on fused score."""
    store.create_collection(name)
    store.upsert(name, [{"id": i, "text": "the cat sat on the warm mat"} for i in TWINS]
                 + [{"id": "x-dog", "text": "dogs bark at the postman"},
                    {"id": "x-cat", "text": "a cat and a mat"}])
    runs = {tuple((h.id, round(h.score, 6)) for h in
                  store.search(name, "cat on the mat", mode=mode, fusion=fusion, k=6,
                               rerank=rerank, weights=(2.0, 0.5)))
            for _ in range(12)}
    assert len(runs) == 1, runs
    hits = list(next(iter(runs)))
    twins = [i for i, _ in hits if i in TWINS]
    assert twins == sorted(TWINS)  # tied on every score: in id order
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_a_missing_collection_names_where_it_was_looked_for(store, name):
    from hybridembed.stores import CollectionNotFoundError

    where = {"edge": str(getattr(store.backend, "data_dir", "")), "qdrant": ":memory:",
             "pgvector": "database "}[store.kind]
    for call in (lambda: store.search(name, "q"), lambda: store.drop_collection(name),
                 lambda: store.count(name)):
        with pytest.raises(CollectionNotFoundError, match=f"does not exist (in|at) {where}"):
            call()
