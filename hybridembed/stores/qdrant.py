"""Qdrant server through qdrant-client: the same record layout and query plan as the
embedded adapter — named vectors ``dense``/``sparse``/``multivector``, per-retriever
searches in one batch, fused and tie-broken by :mod:`.qdrant_common`, and a MaxSim rerank
on ``multivector``. The collection's schema lives in Qdrant's collection ``metadata``.

``url`` is a server URL (``http://host:6333``), or ``:memory:`` / a folder for
qdrant-client's local mode, which the tests use: the code path is identical.
"""

from __future__ import annotations

from typing import Any

from qdrant_client import QdrantClient, models

from .base import (
    Candidate,
    CollectionExistsError,
    CollectionNotFoundError,
    QuerySpec,
    Record,
    check_name,
    check_records,
    point_uuid,
)
from .qdrant_common import Step, query


def qdrant_filter(flt: dict[str, Any]) -> models.Filter | None:
    if not flt:
        return None
    return models.Filter(must=[
        models.FieldCondition(key=f"payload.{key}", match=models.MatchAny(any=value)
                              if isinstance(value, list) else models.MatchValue(value=value))
        for key, value in flt.items()])


class QdrantBackend:
    kind = "qdrant"

    def __init__(self, url: str, api_key: str | None = None):
        self.url = url
        if url.startswith(("http://", "https://")):
            self.client = QdrantClient(url=url, api_key=api_key)
        elif url == ":memory:":
            self.client = QdrantClient(location=":memory:")
        else:
            self.client = QdrantClient(path=url)

    def _exists(self, name: str) -> bool:
        """A real collection of that name (``collection_exists`` also says yes for an
        alias in local mode)."""
        return check_name(name) in self.list()

    def _need(self, name: str) -> str:
        """The real collection behind ``name`` (a collection or an alias)."""
        if self._exists(name):
            return name
        real = self.aliases().get(name)
        if real is None:
            raise CollectionNotFoundError(f"collection {name!r} does not exist at {self.url} "
                                          f"(qdrant store); existing there: "
                                          f"{', '.join(self.list()) or 'none'}")
        return real

    def aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def set_alias(self, alias: str, collection: str) -> None:
        if self._exists(check_name(alias)):
            raise CollectionExistsError(f"{alias!r} is a collection; an alias needs a free name")
        self._need(collection)
        ops = []
        if alias in self.aliases():
            ops.append(models.DeleteAliasOperation(
                delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
            collection_name=collection, alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def documents(self, name: str, batch: int = 256):
        name = self._need(name)
        offset = None
        while True:
            records, offset = self.client.scroll(name, limit=batch, offset=offset,
                                                 with_payload=True, with_vectors=False)
            for r in records:
                p = r.payload or {}
                yield p.get("key", str(r.id)), p.get("text", ""), p.get("payload", {})
            if offset is None:
                return

    def create(self, name: str, meta: dict[str, Any]) -> None:
        if self._exists(name):
            raise CollectionExistsError(f"collection {name!r} already exists")
        schema = meta["schema"]
        vectors = {"dense": models.VectorParams(size=schema["dense_dim"],
                                                distance=models.Distance.COSINE)}
        if schema.get("multivector_dim"):
            vectors["multivector"] = models.VectorParams(
                size=schema["multivector_dim"], distance=models.Distance.DOT,
                multivector_config=models.MultiVectorConfig(
                    comparator=models.MultiVectorComparator.MAX_SIM),
                hnsw_config=models.HnswConfigDiff(m=0))
        modifier = models.Modifier.IDF if schema["sparse_kind"] == "bm25" else None
        self.client.create_collection(
            name, vectors_config=vectors,
            sparse_vectors_config={"sparse": models.SparseVectorParams(modifier=modifier)},
            metadata=meta)

    def list(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def drop(self, name: str) -> None:
        if not self._exists(name):
            self._need(name)
            raise CollectionExistsError(f"{name!r} is an alias; drop the collection by its own "
                                        "name")
        self.client.delete_collection(name)

    def meta(self, name: str) -> dict[str, Any]:
        name = self._need(name)
        return dict(self.client.get_collection(name).config.metadata or {})

    def update_meta(self, name: str, meta: dict[str, Any]) -> None:
        name = self._need(name)
        self.client.update_collection(name, metadata=meta)

    def write(self, name: str, records: list[Record]) -> None:
        check_records(records)
        name = self._need(name)
        points = []
        for r in records:
            vector: dict[str, Any] = {"dense": r.dense.tolist(), "sparse": models.SparseVector(
                indices=r.sparse.indices.tolist(), values=r.sparse.values.tolist())}
            if r.multivector is not None:
                vector["multivector"] = r.multivector.tolist()
            points.append(models.PointStruct(id=point_uuid(r.key), vector=vector, payload={
                "key": r.key, "text": r.text, "payload": r.payload}))
        self.client.upsert(name, points=points, wait=True)

    def delete(self, name: str, keys: list[str]) -> int:
        name = self._need(name)
        ids = [point_uuid(k) for k in keys]
        present = len(self.client.retrieve(name, ids, with_payload=False, with_vectors=False))
        self.client.delete(name, points_selector=models.PointIdsList(points=ids), wait=True)
        return present

    def count(self, name: str) -> int:
        name = self._need(name)
        return self.client.count(name, exact=True).count

    def query(self, name: str, spec: QuerySpec) -> list[Candidate]:
        return query(_ClientSteps(self.client, self._need(name)), spec)

    def close(self) -> None:
        self.client.close()


class _ClientSteps:
    """:class:`~.qdrant_common.Step` as qdrant-client models, run as one batch."""

    def __init__(self, client: QdrantClient, name: str):
        self.client, self.name = client, name

    def run(self, steps: list[Step], spec: QuerySpec) -> list[list[Any]]:
        requests = [models.QueryRequest(**self._args(s, spec), with_payload=["key"])
                    for s in steps]
        return [r.points for r in self.client.query_batch_points(self.name, requests)]

    def fetch(self, point_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not point_ids:
            return {}
        records = self.client.retrieve(self.name, point_ids, with_payload=True,
                                       with_vectors=False)
        return {str(r.id): r.payload or {} for r in records}

    def _args(self, step: Step, spec: QuerySpec) -> dict[str, Any]:
        vector = (models.SparseVector(indices=spec.sparse.indices.tolist(),
                                      values=spec.sparse.values.tolist())
                  if step.using == "sparse" else
                  (spec.dense if step.using == "dense" else spec.multivector).tolist())
        flt = (models.Filter(must=[models.HasIdCondition(has_id=step.ids)])
               if step.ids is not None else qdrant_filter(step.filter))
        return {"query": vector, "using": step.using, "filter": flt, "limit": step.limit}
