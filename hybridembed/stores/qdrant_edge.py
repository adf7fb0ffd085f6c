"""Embedded Qdrant Edge: one shard directory per collection under a data directory.

Named vectors ``dense`` (cosine), ``sparse`` (IDF modifier when the sparse kind is BM25)
and ``multivector`` (MaxSim comparator, no HNSW: it only reranks). A search is one batch
of per-retriever queries, fused and tie-broken by :mod:`.qdrant_common`, then an optional
MaxSim search restricted to the fused ids. An upsert is one update operation, flushed
before it returns; vectors go to Rust as NumPy arrays (Python lists of floats measured
the same peak memory: Edge's own copy dominates, see docs/BENCHMARKS.md). A shard
directory belongs to one process: the second opener gets :class:`StoreLockedError`
instead of two writers corrupting it.

Edge has no background optimiser: new points sit in an appendable segment that every
search scans in full (about 5 ms per 20,000 384-dim points on 2 cores). The adapter
therefore runs ``optimize()`` (segment merge + HNSW build) itself once ``optimize_every``
points have been written since the last time, and at the end of a :meth:`bulk` load.
``optimize()`` holds the GIL (measured: no other Python thread runs meanwhile), so it
cannot run in the background; the write that crosses the threshold waits for it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from .base import (
    Candidate,
    CollectionExistsError,
    CollectionNotFoundError,
    QuerySpec,
    Record,
    StoreLockedError,
    check_name,
    check_records,
    point_uuid,
)
from .qdrant_common import Step, query

META = "hybridembed.json"
OPTIMIZE_EVERY = 20_000  # points written between two automatic optimize() calls


def edge_filter(flt: dict[str, Any]):
    if not flt:
        return None
    conditions = []
    for key, value in flt.items():
        match = qe.MatchAny(any=value) if isinstance(value, list) else qe.MatchValue(value=value)
        conditions.append(qe.FieldCondition(key=f"payload.{key}", match=match))
    return qe.Filter(must=conditions)


class QdrantEdgeBackend:
    kind = "edge"

    def __init__(self, data_dir: str | os.PathLike, optimize_every: int = OPTIMIZE_EVERY):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "collections"  # made by the first create(), not here
        self.optimize_every = optimize_every
        self._shards: dict[str, tuple[Any, Any]] = {}  # name -> (shard, lock file)
        self._unindexed: dict[str, int] = {}  # points written since the last optimize()
        self._bulk: set[str] = set()
        self._lock = threading.RLock()

    # -- collections ----------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.root / self._real(check_name(name))

    # -- aliases (blue-green): a pointer file, swapped atomically --------------------------
    def aliases(self) -> dict[str, str]:
        path = self.root / "aliases.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _real(self, name: str) -> str:
        return self.aliases().get(name, name)

    def set_alias(self, alias: str, collection: str) -> None:
        check_name(alias)
        if (self.root / alias / META).exists():
            raise CollectionExistsError(f"{alias!r} is a collection; an alias needs a free name")
        if not (self.root / check_name(collection) / META).exists():
            raise CollectionNotFoundError(f"collection {collection!r} does not exist in "
                                          f"{self.data_dir.absolute()} (edge store)")
        table = {**self.aliases(), alias: collection}
        tmp = self.root / "aliases.json.tmp"
        tmp.write_text(json.dumps(table))
        os.replace(tmp, self.root / "aliases.json")

    def documents(self, name: str, batch: int = 256):
        """Every stored (key, text, payload), in pages."""
        shard = self._shard(name)
        offset = None
        while True:
            records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=batch,
                                                            with_payload=True))
            for r in records:
                p = r.payload or {}
                yield p.get("key", str(r.id)), p.get("text", ""), p.get("payload", {})
            if offset is None:
                return

    def create(self, name: str, meta: dict[str, Any]) -> None:
        folder = self._dir(name)
        with self._lock:
            if (folder / META).exists():
                raise CollectionExistsError(f"collection {name!r} already exists in "
                                            f"{self.data_dir.absolute()}")
            schema = meta["schema"]
            vectors = {"dense": qe.EdgeVectorParams(size=schema["dense_dim"],
                                                    distance=qe.Distance.Cosine)}
            if schema.get("multivector_dim"):
                vectors["multivector"] = qe.EdgeVectorParams(
                    size=schema["multivector_dim"], distance=qe.Distance.Dot,
                    multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                    hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100,
                                                   full_scan_threshold=10_000))
            modifier = qe.Modifier.Idf if schema["sparse_kind"] == "bm25" else None
            config = qe.EdgeConfig(vectors=vectors, sparse_vectors={
                "sparse": qe.EdgeSparseVectorParams(modifier=modifier)})
            folder.mkdir(parents=True, exist_ok=True)
            lock = self._acquire(name, folder)
            try:
                shard = qe.EdgeShard.create(str(folder / "shard"), config)
            except Exception:
                lock.close()
                raise
            self._shards[name] = (shard, lock)
            self._write_meta(folder, meta)

    def _write_meta(self, folder: Path, meta: dict[str, Any]) -> None:
        tmp = folder / (META + ".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, folder / META)

    def _acquire(self, name: str, folder: Path):
        lock = open(folder / ".lock", "w")  # noqa: SIM115 - held for the shard's lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StoreLockedError(f"collection {name!r} at {folder} is open in another process; "
                                   "Qdrant Edge allows one process per shard (serve it over HTTP "
                                   "to share it)") from None
        return lock

    def _shard(self, name: str):
        name = self._real(name)
        with self._lock:
            if name in self._shards:
                return self._shards[name][0]
            folder = self._dir(name)
            if not (folder / META).exists():
                raise CollectionNotFoundError(
                    f"collection {name!r} does not exist in {self.data_dir.absolute()} "
                    f"(edge store); existing there: {', '.join(self.list()) or 'none'}")
            lock = self._acquire(name, folder)
            try:
                shard = qe.EdgeShard.load(str(folder / "shard"))
            except Exception:
                lock.close()
                raise
            self._shards[name] = (shard, lock)
            return shard

    def list(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob(f"*/{META}"))

    def meta(self, name: str) -> dict[str, Any]:
        self._shard(name)
        return json.loads((self._dir(name) / META).read_text())

    def update_meta(self, name: str, meta: dict[str, Any]) -> None:
        self._shard(name)
        self._write_meta(self._dir(name), meta)

    def drop(self, name: str) -> None:
        if name in self.aliases() and name not in self.list():
            raise CollectionExistsError(f"{name!r} is an alias of {self._real(name)!r}; drop "
                                        "the collection by its own name")
        self._shard(name)
        with self._lock:
            shard, lock = self._shards.pop(name)
            shard.close()
            shutil.rmtree(self._dir(name))
            lock.close()

    def close(self) -> None:
        with self._lock:
            for shard, lock in self._shards.values():
                shard.close()
                lock.close()
            self._shards.clear()

    # -- points ---------------------------------------------------------------------------
    def write(self, name: str, records: list[Record]) -> None:
        check_records(records)
        shard = self._shard(name)
        points = []
        for r in records:
            vector: dict[str, Any] = {"dense": np.asarray(r.dense, np.float32),
                                      "sparse": qe.SparseVector(indices=r.sparse.indices,
                                                                values=r.sparse.values)}
            if r.multivector is not None:
                vector["multivector"] = np.asarray(r.multivector, np.float32)
            points.append(qe.Point(id=point_uuid(r.key), vector=vector,
                                   payload={"key": r.key, "text": r.text, "payload": r.payload}))
        real = self._real(name)
        with self._lock:
            shard.update(qe.UpdateOperation.upsert_points(points))
            shard.flush()
            self._unindexed[real] = self._unindexed.get(real, 0) + len(points)
            due = self._unindexed[real] >= self.optimize_every and real not in self._bulk
        if due:
            self.optimize(real)

    @contextmanager
    def bulk(self, name: str) -> Iterator[None]:
        """A bulk load: no automatic optimize() while the caller writes, one at the end."""
        real = self._real(name)
        self._shard(real)
        with self._lock:
            self._bulk.add(real)
        try:
            yield
        finally:
            with self._lock:
                self._bulk.discard(real)
            self.optimize(real)

    def optimize(self, name: str) -> bool:
        """Merge segments and build their HNSW indexes; without it every dense search of a
        large collection is a full scan. Slow (minutes at 100k documents on 2 cores)."""
        shard = self._shard(name)
        with self._lock:
            changed = shard.optimize()
            shard.flush()
            self._unindexed[self._real(name)] = 0
        return changed

    def delete(self, name: str, keys: list[str]) -> int:
        shard = self._shard(name)
        ids = [point_uuid(k) for k in keys]
        with self._lock:
            present = len(shard.retrieve(ids, with_payload=False, with_vector=False))
            shard.update(qe.UpdateOperation.delete_points(ids))
            shard.flush()
        return present

    def count(self, name: str) -> int:
        return self._shard(name).count(qe.CountRequest(exact=True))

    def query(self, name: str, spec: QuerySpec) -> list[Candidate]:
        return query(_EdgeSteps(self._shard(name)), spec)


class _EdgeSteps:
    """:class:`~.qdrant_common.Step` as qdrant_edge requests; several run as one batch."""

    def __init__(self, shard):
        self.shard = shard

    def run(self, steps: list[Step], spec: QuerySpec) -> list[list[Any]]:
        requests = [qe.QueryRequest(**self._args(s, spec), with_payload=["key"]) for s in steps]
        if len(requests) == 1:
            return [self.shard.query(requests[0])]
        return self.shard.query_batch(qe.QueryBatchRequest(requests))

    def fetch(self, point_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not point_ids:
            return {}
        records = self.shard.retrieve(point_ids, with_payload=True, with_vector=False)
        return {str(r.id): r.payload or {} for r in records}

    def _args(self, step: Step, spec: QuerySpec) -> dict[str, Any]:
        vector = (qe.SparseVector(indices=spec.sparse.indices.tolist(),
                                  values=spec.sparse.values.tolist())
                  if step.using == "sparse" else
                  (spec.dense if step.using == "dense" else spec.multivector).tolist())
        flt = (qe.Filter(must=[qe.HasIdCondition(set(step.ids))]) if step.ids is not None
               else edge_filter(step.filter))
        return {"limit": step.limit, "query": qe.Query.Nearest(vector, using=step.using),
                "filter": flt}
