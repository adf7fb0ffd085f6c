"""Blue-green re-embedding of a Qdrant collection (embedded Edge or server): build a new
collection with the new model's vectors from the old collection's stored texts and
payloads, verify the counts, then point an alias at it in one step (Qdrant's alias API on
a server; an atomically replaced pointer file for Edge). The old collection stays until
you drop it, so switching back is setting the alias again."""

from __future__ import annotations

from collections.abc import Callable

from ..stores.base import Document, StoreError
from ..stores.collection import VectorStore


class BlueGreenError(StoreError):
    pass


def next_name(backend, alias: str) -> str:
    taken = set(backend.list())
    k = 2
    while f"{alias}_v{k}" in taken:
        k += 1
    return f"{alias}_v{k}"


def reembed(backend, new_embedder, source: str, alias: str, target: str | None = None,
            batch: int = 256, multivector: bool | None = None,
            progress: Callable[[int], None] | None = None) -> dict:
    """Copy ``source`` (a collection or an alias) into ``target`` with ``new_embedder``,
    verify, and point ``alias`` at ``target``."""
    if not hasattr(backend, "set_alias"):
        raise BlueGreenError(f"the {backend.kind} store has no aliases; use `hybridembed "
                             "migrate` column swaps on PostgreSQL")
    old_meta = backend.meta(source)
    source_real = backend.aliases().get(source, source)
    target = target or next_name(backend, alias)
    store = VectorStore(backend, new_embedder, batch_size=batch)
    if multivector is None:
        multivector = bool(old_meta["schema"].get("multivector_dim"))
    store.create_collection(target, multivector=multivector)
    chunk: list[Document] = []
    copied = 0
    for key, text, payload in backend.documents(source, batch):
        chunk.append(Document(text=text, id=key, payload=payload))
        if len(chunk) == batch:
            copied += store.upsert(target, chunk)
            chunk = []
            if progress:
                progress(copied)
    if chunk:
        copied += store.upsert(target, chunk)
        if progress:
            progress(copied)
    before, after = backend.count(source), backend.count(target)
    if before != after:
        raise BlueGreenError(f"verification failed: {source} has {before} documents, {target} "
                             f"{after}; the alias was NOT switched ({target} is kept for a look)")
    backend.set_alias(alias, target)
    return {"alias": alias, "from": source_real, "to": target, "documents": after}
