"""Vector stores: dense + sparse (+ multi-vector) in one record, hybrid search with fusion
in the database, and reranking. :func:`open_store` picks the adapter."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import default_data_dir
from ..errors import InvalidOptionError
from .base import (
    CollectionExistsError,
    CollectionNotFoundError,
    CollectionSchema,
    Document,
    Hit,
    SchemaMismatchError,
    StoreError,
    StoreLockedError,
)
from .collection import VectorStore

STORES: tuple[str, ...] = ("edge", "qdrant", "pgvector")


def open_backend(kind: str = "edge", *, url: str | None = None,
                 data_dir: str | os.PathLike | None = None):
    """The adapter for ``kind``: ``edge`` (embedded Qdrant Edge under ``data_dir``, by
    default :func:`~hybridembed.config.default_data_dir`),
    ``qdrant`` (a Qdrant server at ``url``, or ``:memory:`` / a path for qdrant-client's
    local mode), ``pgvector`` (PostgreSQL at the DSN ``url``)."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if kind == "edge":
        from .qdrant_edge import QdrantEdgeBackend

        return QdrantEdgeBackend(Path(data_dir))
    if kind == "qdrant":
        from .qdrant import QdrantBackend

        return QdrantBackend(url or str(Path(data_dir) / "qdrant-local"))
    if kind == "pgvector":
        if not url:
            raise InvalidOptionError("the pgvector store needs a DSN: --url postgresql://...",
                                     "url")
        from .pgvector import PgVectorBackend

        return PgVectorBackend(url)
    raise InvalidOptionError(f"unknown store {kind!r}; valid: {', '.join(STORES)}", "store")


def open_store(embedder, kind: str = "edge", **options) -> VectorStore:
    reranker_model = options.pop("reranker_model", "bge-reranker-base")
    return VectorStore(open_backend(kind, **options), embedder, reranker_model=reranker_model)


__all__ = ["STORES", "CollectionExistsError", "CollectionNotFoundError", "CollectionSchema",
           "Document", "Hit", "VectorStore", "SchemaMismatchError", "StoreError",
           "StoreLockedError", "open_backend", "open_store"]
