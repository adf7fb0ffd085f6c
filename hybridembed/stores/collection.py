""":class:`VectorStore`: the one entry point for indexing and searching, over any adapter.

It embeds (dense + sparse + multi-vector in one forward pass per batch), checks that the
collection was built by the same model and options, validates names, documents (text
hygiene as :mod:`hybridembed.textcheck`: no NUL, no unpaired surrogate) and filters, and
embeds a whole upsert and checks every vector is finite before anything is written, asks
the adapter for fused candidates, and applies a cross-encoder rerank when asked.
Adapters only move vectors.

An upsert of at least :data:`BULK_MIN_DOCS` documents that at least doubles the
collection runs inside the adapter's ``bulk()`` where it has one: pgvector then builds its
HNSW indexes once at the end instead of row by row, Qdrant Edge optimises once at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from ..errors import InvalidOptionError, NonFiniteOutputError
from ..textcheck import nonfinite_rows
from .base import (
    CollectionSchema,
    Document,
    Hit,
    QuerySpec,
    Record,
    SchemaMismatchError,
    StoreBackend,
    check_documents,
    check_filter,
    check_name,
    check_search,
    unmatched_fields,
)

BULK_MIN_DOCS = 1000


class VectorStore:
    def __init__(self, backend: StoreBackend, embedder, reranker=None,
                 reranker_model: str = "bge-reranker-base", batch_size: int = 256):
        self.backend = backend
        self.embedder = embedder
        self._reranker = reranker
        self.reranker_model = reranker_model
        self.batch_size = batch_size
        self._loading: set[str] = set()  # collections inside bulk()

    @property
    def kind(self) -> str:
        return self.backend.kind

    # -- collections ----------------------------------------------------------------------
    def create_collection(self, name: str, multivector: bool = True) -> CollectionSchema:
        schema = CollectionSchema.of(self.embedder, multivector=multivector)
        self.backend.create(check_name(name), {"schema": schema.to_dict(), "fields": []})
        return schema

    def ensure_collection(self, name: str, multivector: bool = True) -> CollectionSchema:
        if check_name(name) in self.backend.list():
            return self.schema(name)
        return self.create_collection(name, multivector)

    def list_collections(self) -> list[str]:
        return self.backend.list()

    def drop_collection(self, name: str) -> None:
        self.backend.drop(check_name(name))

    def schema(self, name: str) -> CollectionSchema:
        return CollectionSchema.from_dict(self.backend.meta(check_name(name))["schema"])

    def count(self, name: str) -> int:
        return self.backend.count(check_name(name))

    def describe(self, name: str) -> dict[str, Any]:
        meta = self.backend.meta(check_name(name))
        return {"name": name, "store": self.kind, "count": self.backend.count(name), **meta}

    def _checked_meta(self, name: str) -> tuple[dict[str, Any], CollectionSchema]:
        meta = self.backend.meta(check_name(name))
        schema = CollectionSchema.from_dict(meta["schema"])
        mine = CollectionSchema.of(self.embedder, multivector=bool(schema.multivector_dim))
        schema.check(mine, name)
        return meta, schema

    # -- documents ------------------------------------------------------------------------
    def upsert(self, name: str, docs: Sequence[Document | Mapping], progress=None) -> int:
        """Embed and write ``docs``, all or nothing; every vector of a document goes in one
        record. Everything is checked and embedded before the first write: a bad document
        (NUL byte, unpaired surrogate, non-JSON payload...) raises
        :class:`~hybridembed.errors.InvalidInputError` /
        :class:`~hybridembed.errors.InvalidOptionError` naming it, a non-finite vector
        raises :class:`~hybridembed.errors.NonFiniteOutputError` naming the documents, and
        the collection is unchanged. The records are then written in one adapter call
        (one transaction on pgvector, one update on Qdrant). ``progress(n)`` is called as
        documents are embedded. Memory holds every vector of ``docs`` at once: callers
        with a large corpus upsert it in batches (``hybridembed index`` does)."""
        meta, schema = self._checked_meta(name)
        docs = check_documents(docs)
        records = []
        for start in range(0, len(docs), self.batch_size):
            chunk = docs[start:start + self.batch_size]
            records.extend(self._records(chunk, start, bool(schema.multivector_dim)))
            if progress:
                progress(len(chunk))
        fields = set(meta.get("fields", []))
        new_fields = {k for d in docs for k in d.payload} - fields
        if new_fields:  # record fields first: a filter on them must never be refused
            meta["fields"] = sorted(fields | new_fields)
            self.backend.update_meta(name, meta)
        big = len(docs) >= BULK_MIN_DOCS and len(docs) >= self.backend.count(name)
        with self.bulk(name) if big else nullcontext():
            self.backend.write(name, records)
        return len(docs)

    @contextmanager
    def bulk(self, name: str) -> Iterator[None]:
        """Upserts inside run as one bulk load where the adapter has one: pgvector drops
        its HNSW indexes and builds them once at the end (readers meanwhile get exact
        scans), Qdrant Edge optimises once at the end. Nested calls are one load."""
        bulk = getattr(self.backend, "bulk", None)
        if bulk is None or name in self._loading:
            yield
            return
        self._loading.add(name)
        try:
            with bulk(check_name(name)):
                yield
        finally:
            self._loading.discard(name)

    def _records(self, docs: list[Document], offset: int, multivector: bool) -> list[Record]:
        """``docs`` embedded, as records; raises NonFiniteOutputError naming documents by
        their position in the upsert (``offset`` + their index here)."""
        texts = [d.text for d in docs]
        try:
            result = self.embedder.embed(texts, dense=True, sparse=True, multivector=multivector)
        except NonFiniteOutputError as exc:
            raise NonFiniteOutputError([offset + i for i in exc.indices]) from None
        bad = nonfinite_rows(result.dense, result.sparse, result.multivector)
        if bad:  # an embedder that does not check its outputs itself
            raise NonFiniteOutputError([offset + i for i in bad])
        return [Record(key=d.key, text=d.text, payload=dict(d.payload), dense=result.dense[i],
                       sparse=result.sparse[i],
                       multivector=result.multivector[i] if result.multivector else None)
                for i, d in enumerate(docs)]

    def optimize(self, name: str) -> bool:
        """Let the store build what indexes it lacks: Qdrant Edge merges and indexes new
        segments, pgvector builds HNSW indexes a killed bulk load left missing; a no-op
        where the database maintains them itself."""
        optimize = getattr(self.backend, "optimize", None)
        return bool(optimize(check_name(name))) if optimize else False

    def delete(self, name: str, ids: Sequence[str | int]) -> int:
        return self.backend.delete(check_name(name), [str(i) for i in ids])

    # -- search ---------------------------------------------------------------------------
    def search(self, name: str, query: str, *, mode: str = "hybrid", fusion: str = "rrf",
               k: int = 10, filter: Mapping[str, Any] | None = None, rerank: str | None = None,
               candidates: int | None = None,
               weights: tuple[float, float] = (1.0, 1.0)) -> list[Hit]:
        """Top ``k`` hits. ``mode``: dense | sparse | hybrid; ``fusion``: rrf | dbsf |
        weighted (weighted RRF with ``weights`` = (dense, sparse)); ``rerank``: None |
        multivector (ColBERT MaxSim, in the store) | cross-encoder."""
        rerank = None if rerank in (None, "", "none") else rerank
        check_search(mode, fusion, rerank, k)
        if not isinstance(query, str) or not query.strip():
            raise InvalidOptionError("query must be a non-empty string", "query")
        meta, schema = self._checked_meta(name)
        if rerank == "multivector" and not schema.multivector_dim:
            raise SchemaMismatchError(f"collection {name!r} stores no multi-vectors; rerank with "
                                      "cross-encoder, or recreate it with multivector=True "
                                      "(hybridembed index --multivector)")
        flt = check_filter(filter, meta.get("fields", []), name)
        if unmatched_fields(flt, meta.get("fields", [])):
            return []  # equality on a field no document has matches nothing
        pool = max(candidates or 4 * k, k)
        q = self.embedder.embed([query], kind="query", dense=True, sparse=True,
                                multivector=rerank == "multivector")
        spec = QuerySpec(dense=q.dense[0], sparse=q.sparse[0],
                         multivector=q.multivector[0] if q.multivector else None, mode=mode,
                         fusion=fusion, k=pool if rerank == "cross-encoder" else k,
                         candidates=pool, filter=flt, weights=tuple(weights))
        found = self.backend.query(name, spec)
        if rerank == "cross-encoder" and found:
            order = self.reranker.rerank(query, [c.text for c in found], top_k=k)
            found = [_with(found[i], "cross-encoder", rank, score)
                     for rank, (i, score) in enumerate(order, 1)]
        return [Hit(id=c.key, score=float(c.score), text=c.text, payload=c.payload,
                    retrievers=c.retrievers) for c in found[:k]]

    @property
    def reranker(self):
        if self._reranker is None:
            from ..rerank import CrossEncoderReranker

            self._reranker = CrossEncoderReranker(self.reranker_model)
        return self._reranker

    def close(self) -> None:
        self.backend.close()


def _with(candidate, retriever: str, rank: int, score: float):
    candidate.retrievers[retriever] = {"rank": rank, "score": float(score)}
    candidate.score = float(score)
    return candidate
