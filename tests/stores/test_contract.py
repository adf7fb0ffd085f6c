"""One contract suite, run against every adapter (embedded Qdrant Edge, qdrant-client in
local mode, real PostgreSQL with pgvector): the same calls must mean the same thing."""

import numpy as np
import pytest

from hybridembed import InvalidOptionError
from hybridembed.bench.labelled import labelled_corpus, recall_at
from hybridembed.stores import (
    CollectionExistsError,
    CollectionNotFoundError,
    SchemaMismatchError,
    VectorStore,
)
from hybridembed.stores.fusion import fuse

DOCS = [
    {"id": "cat", "text": "The cat sat on the warm mat by the fire.",
     "payload": {"lang": "en", "year": 2021}},
    {"id": "dog", "text": "Dogs bark loudly at the postman every morning.",
     "payload": {"lang": "en", "year": 2022}},
    {"id": "db", "text": "Vector databases store embeddings for similarity search.",
     "payload": {"lang": "fr", "year": 2023}},
    {"id": "rain", "text": "Heavy rain flooded the river valley overnight.",
     "payload": {"lang": "de", "year": 2021}},
]


def test_collections_lifecycle(store, name):
    schema = store.create_collection(name)
    assert schema.dense_dim == 384 and schema.sparse_kind == "bm25"
    assert name in store.list_collections() and store.count(name) == 0
    with pytest.raises(CollectionExistsError):
        store.create_collection(name)
    store.drop_collection(name)
    assert name not in store.list_collections()
    with pytest.raises(CollectionNotFoundError):
        store.count(name)
    with pytest.raises(CollectionNotFoundError):
        store.search(name, "anything")
    with pytest.raises(CollectionNotFoundError):
        store.upsert(name, DOCS)


@pytest.mark.parametrize("bad", ['x"; DROP TABLE users; --', "../etc", "UPPER", "", "a b",
                                 "x" * 49, "1abc"])
def test_malicious_names_are_refused_before_anything_happens(store, bad):
    before = store.list_collections()
    with pytest.raises(InvalidOptionError, match="invalid collection name"):
        store.create_collection(bad)
    with pytest.raises(InvalidOptionError):
        store.search(bad, "q")
    assert store.list_collections() == before


def test_upsert_is_idempotent_and_delete_counts(store, name):
    store.create_collection(name)
    assert store.upsert(name, DOCS) == 4
    store.upsert(name, DOCS)
    store.upsert(name, [{"text": "no id: the id comes from the text"}] * 1)
    store.upsert(name, [{"text": "no id: the id comes from the text"}])
    assert store.count(name) == 5
    assert store.delete(name, ["dog", "missing"]) == 1
    assert store.count(name) == 4
    hits = store.search(name, "postman barking", k=4)
    assert "dog" not in [h.id for h in hits]


def test_bad_documents_write_nothing(store, name):
    store.create_collection(name)
    for bad in ([{"id": "x"}], [{"text": 5}],
                [{"text": "a", "payload": {"bad key": 1}}], [{"text": "a", "colour": "red"}]):
        with pytest.raises(InvalidOptionError):
            store.upsert(name, bad)
    assert store.count(name) == 0


def test_one_id_twice_in_an_upsert_keeps_the_later(store, name):
    store.create_collection(name)
    store.upsert(name, [{"text": "first", "id": "d"}, {"text": "second", "id": "d"}])
    assert store.count(name) == 1
    assert store.search(name, "second", k=1)[0].text == "second"


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_search_modes_find_the_obvious_answer(store, name, mode):
    store.create_collection(name)
    store.upsert(name, DOCS)
    hits = store.search(name, "a cat on a mat", mode=mode, k=3)
    assert hits[0].id == "cat" and hits[0].text == DOCS[0]["text"]
    assert hits[0].payload == {"lang": "en", "year": 2021}
    expected = {"dense": {"dense"}, "sparse": {"sparse"}, "hybrid": {"dense", "sparse"}}[mode]
    assert set(hits[0].retrievers) == expected
    assert all(r["rank"] == 1 for r in hits[0].retrievers.values())


@pytest.mark.parametrize("fusion", ["rrf", "dbsf", "weighted"])
def test_fusion_in_the_store_matches_the_reference(store, name, fusion):
    store.create_collection(name)
    # distinct lengths and term counts: no ties, so every retriever's order is defined
    store.upsert(name, DOCS + [{"id": f"x{i}", "text": "cat " * (i % 3 + 1) + "and dogs "
                                + "story " * (i % 4 + 1) + "filler " * i} for i in range(8)])
    query, pool, weights = "cat dog stories", 20, (2.0, 0.5)
    dense = [(h.id, h.score) for h in store.search(name, query, mode="dense", k=pool)]
    sparse = [(h.id, h.score) for h in store.search(name, query, mode="sparse", k=pool)]
    hits = store.search(name, query, fusion=fusion, k=6, candidates=pool, weights=weights)
    reference = fuse(fusion, [dense, sparse], k=60, weights=weights)
    expected = reference[:6]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], rtol=1e-4)
    for hit, (_, score) in zip(hits, expected, strict=True):  # ties may come in any order
        assert hit.id in {key for key, s in reference if abs(s - score) <= 1e-4 * score}


def test_filters(store, name):
    store.create_collection(name)
    store.upsert(name, DOCS)
    assert {h.id for h in store.search(name, "anything at all", filter={"lang": "en"}, k=10)} \
        == {"cat", "dog"}
    assert {h.id for h in store.search(name, "anything", filter={"year": [2021, 2023]}, k=10)} \
        == {"cat", "db", "rain"}
    # a field no document has matches nothing (as in Qdrant and SQL), not an error
    assert store.search(name, "q", filter={"author": "x"}) == []
    with pytest.raises(InvalidOptionError):
        store.search(name, "q", filter={"lang'; DROP TABLE x; --": "en"})
    hits = store.search(name, "q", filter={"lang": "en'; DROP TABLE x; --"})
    assert hits == [] and store.count(name) == 4


def test_multivector_rerank(store, name, minilm):
    from hybridembed.scores import maxsim

    store.create_collection(name)
    store.upsert(name, DOCS)
    hits = store.search(name, "a cat on a mat", rerank="multivector", k=3)
    assert hits[0].id == "cat" and "multivector" in hits[0].retrievers
    q = minilm.embed(["a cat on a mat"], kind="query", multivector=True, dense=False)
    d = minilm.embed([DOCS[0]["text"]], multivector=True, dense=False)
    assert hits[0].score == pytest.approx(maxsim(q.multivector[0], d.multivector[0]), rel=1e-4)


def test_bad_search_options(store, name):
    store.create_collection(name, multivector=False)
    for options, valid in (({"mode": "fuzzy"}, "dense, sparse, hybrid"),
                           ({"fusion": "max"}, "rrf, dbsf, weighted"),
                           ({"rerank": "llm"}, "multivector, cross-encoder"),
                           ({"k": 0}, "1 to 1000")):
        with pytest.raises(InvalidOptionError, match=valid):
            store.search(name, "q", **options)
    # a conflict with how the collection was built (HTTP 409), not a bad option
    with pytest.raises(SchemaMismatchError, match="no multi-vectors"):
        store.search(name, "q", rerank="multivector")


def test_another_model_is_refused(backend, minilm, tiny_m3, name):
    VectorStore(backend, tiny_m3).create_collection(name)
    other = VectorStore(backend, minilm)
    with pytest.raises(SchemaMismatchError, match="dense_dim"):
        other.upsert(name, DOCS)
    with pytest.raises(SchemaMismatchError):
        other.search(name, "q")
    assert backend.count(name) == 0


def test_learned_sparse_collection(backend, tiny_m3, name):
    store = VectorStore(backend, tiny_m3)
    assert store.create_collection(name).sparse_kind == "learned"
    store.upsert(name, [{"id": "a", "text": "search the hybrid vector index"},
                        {"id": "b", "text": "cat dog house tree"}])
    hits = store.search(name, "hybrid vector", mode="sparse", k=2)
    assert hits and hits[0].id == "a"
    assert {h.id for h in store.search(name, "cat", rerank="multivector", k=2)} == {"a", "b"}


def test_hybrid_recall_beats_each_retriever_alone(store, name):
    docs, queries = labelled_corpus()
    store.create_collection(name, multivector=False)
    store.upsert(name, docs)
    recall = {}
    for mode in ("dense", "sparse", "hybrid"):
        hits = {q["id"]: [h.id for h in store.search(name, q["text"], mode=mode, k=10)]
                for q in queries}
        recall[mode] = recall_at(hits, queries, 10)
    assert recall["dense"] < 1 and recall["sparse"] < 1, recall  # each alone misses some
    assert recall["hybrid"] >= max(recall["dense"], recall["sparse"]), recall


def test_cross_encoder_rerank(backend, minilm, name, tmp_path_factory):
    from hybridembed.rerank import CrossEncoderReranker
    from tests.models import build_tiny_cross_encoder

    folder = build_tiny_cross_encoder(tmp_path_factory.mktemp("ce"))
    reranker = CrossEncoderReranker(str(folder), device="cpu")
    store = VectorStore(backend, minilm, reranker=reranker)
    store.create_collection(name, multivector=False)
    store.upsert(name, DOCS)
    hits = store.search(name, "a cat on a mat", rerank="cross-encoder", k=3)
    texts = [d["text"] for d in DOCS]
    pool = [h.text for h in store.search(name, "a cat on a mat", k=12)]  # what it reranked
    expected = reranker.rerank("a cat on a mat", pool, top_k=3)
    assert [h.text for h in hits] == [pool[i] for i, _ in expected]
    assert [h.retrievers["cross-encoder"]["rank"] for h in hits] == [1, 2, 3]
    assert all(h.text in texts for h in hits)


def test_optimize_after_a_bulk_load_keeps_every_answer(store, name):
    store.create_collection(name)
    store.upsert(name, DOCS)
    before = [h.id for h in store.search(name, "a cat on a mat", k=4)]
    store.optimize(name)  # Qdrant Edge builds its indexes; other stores: nothing to do
    assert [h.id for h in store.search(name, "a cat on a mat", k=4)] == before
    assert store.count(name) == 4


def test_a_large_upsert_is_one_bulk_load(store, name, monkeypatch):
    """An upsert that at least doubles a collection runs inside the adapter's bulk() where
    it has one (indexes built once at the end); the documents are searchable after it."""
    from hybridembed.stores import collection

    monkeypatch.setattr(collection, "BULK_MIN_DOCS", 3)
    calls = []
    bulk = getattr(store.backend, "bulk", None)
    if bulk is not None:
        def counting(coll):
            calls.append(coll)
            return bulk(coll)
        monkeypatch.setattr(store.backend, "bulk", counting)
    store.create_collection(name)
    store.upsert(name, DOCS)  # 4 docs into an empty collection: bulk
    store.upsert(name, DOCS[:3])  # 3 docs into 4: not bulk
    assert calls == ([name] if bulk is not None else [])
    assert store.count(name) == 4
    for mode in ("dense", "sparse", "hybrid"):
        assert store.search(name, "the postman and the barking dogs", mode=mode, k=1)[0].id \
            == "dog"


FAMILY_DOCS = [{"id": "splade", "text": "sparse retrieval weighs every vocabulary term"},
               {"id": "colbert", "text": "late interaction keeps one vector per token"},
               {"id": "cat", "text": "the cat sat on the mat"}]


@pytest.mark.parametrize("family", ["splade", "inference-free-splade", "colbert", "dense"])
def test_each_model_family_stores_and_searches(backend, family_dir, name, family):
    """Every family of issue 15 in every store: the collection takes the family's outputs
    (learned sparse with IDF off for SPLADE, the ColBERT projection's per-token vectors);
    dense and sparse searches rank as the family's own query and document vectors do
    (cosine; learned sparse dot product, queries through the static table for
    inference-free SPLADE; BM25 finds the document holding the query's words); and the
    multi-vector rerank scores equal MaxSim of the family's own vectors. (The small
    fixtures are randomly initialised except the real SPLADE, so the expected order is
    computed, not assumed.)"""
    import numpy as np

    from hybridembed import Embedder
    from hybridembed.pgcommon import SPARSE_INDEX_MAX_NNZ
    from hybridembed.scores import maxsim
    from hybridembed.sparse import prune

    emb = Embedder(str(family_dir(family)), device="cpu", cache_size=0)
    store = VectorStore(backend, emb)
    schema = store.create_collection(name)
    learned = "splade" in family
    assert schema.sparse_kind == ("learned" if learned else "bm25")
    assert schema.multivector_dim == emb.spec.multivector_dim > 0
    store.upsert(name, FAMILY_DOCS)
    texts = [d["text"] for d in FAMILY_DOCS]
    docs = emb.embed(texts, dense=True, sparse=True, multivector=True)
    for doc in FAMILY_DOCS:
        q = emb.embed([doc["text"]], kind="query", dense=True, sparse=True, multivector=True)
        best_dense = FAMILY_DOCS[int(np.argmax(docs.dense @ q.dense[0]))]["id"]
        assert store.search(name, doc["text"], mode="dense", k=3)[0].id == best_dense
        hits = store.search(name, doc["text"], mode="sparse", k=3)
        if learned:
            # pgvector's sparse index holds at most 1000 entries per document (README): a
            # randomly initialised SPLADE head weighs thousands, so it keeps the heaviest
            stored = [prune(v, top_k=SPARSE_INDEX_MAX_NNZ) if store.kind == "pgvector" else v
                      for v in docs.sparse]
            query = q.sparse[0].to_dict()
            dots = [sum(w * query.get(i, 0.0) for i, w in v.to_dict().items()) for v in stored]
            if max(dots) > 0:
                assert hits[0].id == FAMILY_DOCS[int(np.argmax(dots))]["id"], family
            else:  # no shared vocabulary entry: nothing matches, as in any sparse index
                assert hits == []
        else:
            assert hits[0].id == doc["id"], family
        assert {h.id for h in store.search(name, doc["text"], mode="hybrid", k=3)} \
            == {d["id"] for d in FAMILY_DOCS}
        reranked = store.search(name, doc["text"], rerank="multivector", k=3)
        by_id = {d["id"]: v for d, v in zip(FAMILY_DOCS, docs.multivector, strict=True)}
        for hit in reranked:
            assert hit.score == pytest.approx(maxsim(q.multivector[0], by_id[hit.id]), rel=1e-4)
