"""The :class:`VectorStore` contract and the values it speaks in.

A store keeps, per document, one record holding its id, text, payload and every vector
the embedder produced for it (dense, sparse, multi-vector), so they never drift apart.
A collection remembers the :class:`CollectionSchema` that produced it and refuses an
embedder whose schema differs. Stores need only ``types``/``sparse`` and duck-typed
embedders (anything with ``embed``), never the service layer.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..errors import HybridEmbedError, InvalidInputError, InvalidOptionError, NonFiniteOutputError
from ..textcheck import check_text, nonfinite_rows

MODES: tuple[str, ...] = ("dense", "sparse", "hybrid")
FUSIONS: tuple[str, ...] = ("rrf", "dbsf", "weighted")
RERANKS: tuple[str | None, ...] = (None, "multivector", "cross-encoder")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
ID_NAMESPACE = uuid.UUID("6f0e3b0a-8d9e-4f43-9a55-2f1c5b0d4e11")


class StoreError(HybridEmbedError):
    """Base class of store errors."""


class CollectionNotFoundError(StoreError, LookupError):
    pass


class CollectionExistsError(StoreError):
    pass


class SchemaMismatchError(StoreError, ValueError):
    """The embedder (model, dims, sparse kind) differs from the one that built the
    collection, or a request needs what the collection was built without (multi-vectors):
    a conflict with the collection's state (HTTP 409)."""


class StoreLockedError(StoreError):
    """Another process holds the collection's storage."""


@dataclass(frozen=True)
class CollectionSchema:
    """What produced a collection's vectors; two embedders fit when these are equal."""

    model: str
    dense_dim: int
    sparse_kind: str  # "learned" | "bm25"
    multivector_dim: int = 0  # 0: no multi-vectors stored
    vocab_size: int = 0

    @classmethod
    def of(cls, embedder, multivector: bool = True) -> CollectionSchema:
        spec = embedder.spec
        return cls(model=spec.hf_id or spec.name, dense_dim=spec.dim,
                   sparse_kind=spec.sparse_kind,
                   multivector_dim=spec.multivector_dim if multivector else 0,
                   vocab_size=spec.vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CollectionSchema:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def check(self, other: CollectionSchema, collection: str) -> None:
        if self != other:
            diffs = ", ".join(f"{k}: collection has {v!r}, embedder gives {getattr(other, k)!r}"
                              for k, v in self.to_dict().items() if getattr(other, k) != v)
            raise SchemaMismatchError(f"collection {collection!r} was built by another model or "
                                      f"options ({diffs}); re-embed it (hybridembed migrate) or "
                                      "use the model it was built with")


@dataclass(frozen=True)
class Document:
    text: str
    id: str | int | None = None  # None: derived from the text (same text, same id)
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.id) if self.id is not None else content_id(self.text)


@dataclass
class Hit:
    id: str
    score: float
    text: str
    payload: dict[str, Any]
    # retriever -> {"rank": 1-based rank, "score": its score}; why the hit is here
    retrievers: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Embedderish(Protocol):
    spec: Any

    def embed(self, texts, **options): ...


def content_id(text: str) -> str:
    """The id a document gets when it has none: stable across runs."""
    return str(uuid.uuid5(ID_NAMESPACE, text))


def point_uuid(key: str) -> str:
    """Qdrant ids must be integers or UUIDs: every document key maps to one UUID."""
    return str(uuid.uuid5(ID_NAMESPACE, "id:" + key))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidOptionError(
            f"invalid collection name {name!r}: use 1-48 characters, lowercase letters, digits "
            "and '_', starting with a letter", "collection")
    return name


def check_search(mode: str, fusion: str, rerank: str | None, k: int) -> None:
    if mode not in MODES:
        raise InvalidOptionError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}", "mode")
    if fusion not in FUSIONS:
        raise InvalidOptionError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}",
                                 "fusion")
    if rerank not in RERANKS:
        raise InvalidOptionError(f"unknown rerank {rerank!r}; valid: none, multivector, "
                                 "cross-encoder", "rerank")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
        raise InvalidOptionError(f"k must be a whole number from 1 to 1000, got {k!r}", "k")


def check_filter(flt: Mapping[str, Any] | None, known: Sequence[str], collection: str) -> dict:
    """Filters are ``{field: value}`` (equality) or ``{field: [v1, v2]}`` (any of). A field
    no document has is valid and matches nothing (:func:`unmatched_fields` names them)."""
    if not flt:
        return {}
    if not isinstance(flt, Mapping):
        raise InvalidOptionError("filter must be an object of {field: value}", "filter")
    for key, value in flt.items():
        if not isinstance(key, str) or not _FIELD.match(key):
            raise InvalidOptionError(f"invalid filter field {key!r}", "filter")
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int | bool) for v in values):
            raise InvalidOptionError(f"filter {key!r} must be a string, number or boolean, or a "
                                     "non-empty list of them", "filter")
    return dict(flt)


def unmatched_fields(flt: Mapping[str, Any], known: Sequence[str]) -> list[str]:
    """Filter fields no document of the collection has: such a filter matches nothing."""
    return sorted(set(flt) - set(known))


def check_documents(docs: Sequence[Document]) -> list[Document]:
    out = []
    for i, doc in enumerate(docs):
        if isinstance(doc, Mapping):
            extra = set(doc) - {"id", "text", "payload"}
            if extra:
                raise InvalidOptionError(f"document #{i} has unknown fields {sorted(extra)}; "
                                         "valid: id, text, payload", "documents")
            doc = Document(text=doc.get("text"), id=doc.get("id"),
                           payload=doc.get("payload") or {})
        if not isinstance(doc, Document) or not isinstance(doc.text, str):
            raise InvalidOptionError(f"document #{i} needs a string 'text'", "documents")
        check_text(doc.text, i, "document", allow_nul=False)
        if isinstance(doc.id, str):
            _check_string(doc.id, i, "id")
        if doc.id is not None and (isinstance(doc.id, bool)
                                   or not isinstance(doc.id, str | int) or doc.id == ""):
            raise InvalidOptionError(f"document #{i} id must be a non-empty string or an integer",
                                     "documents")
        if not isinstance(doc.payload, Mapping):
            raise InvalidOptionError(f"document #{i} payload must be an object", "documents")
        for key, value in doc.payload.items():
            if not isinstance(key, str) or not _FIELD.match(key):
                raise InvalidOptionError(f"document #{i} payload field {key!r} is not a valid "
                                         "name (letters, digits, '_')", "documents")
            _check_json(value, i, f"payload field {key!r}")
        out.append(doc)
    # One id twice in a request (given twice, or derived from equal texts): the later
    # document wins, exactly as two upserts in a row would leave it.
    last = {d.key: i for i, d in enumerate(out)}
    return [d for i, d in enumerate(out) if last[d.key] == i]


def _check_string(text: str, i: int, where: str) -> None:
    """A string a store keeps (id, payload value): the same hygiene as a document's text."""
    try:
        check_text(text, None, where, allow_nul=False)
    except InvalidInputError as exc:
        raise InvalidInputError(f"document #{i} {exc}", i) from None


def _check_json(value: Any, i: int, where: str) -> None:
    """A payload value every store can keep: JSON (objects with string keys, lists,
    strings, finite numbers, booleans, null), strings as :func:`_check_string`."""
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidOptionError(f"document #{i} {where} is {value}; payload numbers must be "
                                     "finite (JSON has no NaN or infinity)", "documents")
    elif isinstance(value, str):
        _check_string(value, i, where)
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            _check_json(item, i, f"{where}[{n}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidOptionError(f"document #{i} {where} has the key {key!r}; JSON "
                                         "object keys are strings", "documents")
            _check_string(key, i, f"{where} key")
            _check_json(item, i, f"{where}[{key!r}]")
    else:
        raise InvalidOptionError(f"document #{i} {where} is a {type(value).__name__}; payload "
                                 "values must be JSON: string, number, boolean, null, list or "
                                 "object", "documents")


def check_records(records: Sequence[Record]) -> None:
    """What every adapter checks before it writes records computed elsewhere (a re-embed,
    a benchmark): texts as :func:`check_documents` checks them, and every vector finite.
    Raises :class:`InvalidInputError` or :class:`NonFiniteOutputError` naming the record's
    position; nothing has been written then."""
    for i, rec in enumerate(records):
        check_text(rec.text, i, "document", allow_nul=False)
    bad = nonfinite_rows([r.dense for r in records], [r.sparse for r in records],
                         [r.multivector for r in records])
    if bad:
        raise NonFiniteOutputError(bad)


@dataclass
class Record:
    """One document as an adapter writes it: every vector in one record."""

    key: str
    text: str
    payload: dict[str, Any]
    dense: Any  # np.ndarray (dim,) float32, L2-normalised
    sparse: Any  # SparseVector (document weights; BM25 IDF is the store's job)
    multivector: Any = None  # np.ndarray (tokens, dim) float32, or None


@dataclass
class QuerySpec:
    """One search as an adapter runs it. ``weights`` are (dense, sparse) for fusion."""

    dense: Any  # np.ndarray (dim,)
    sparse: Any  # SparseVector (query weights)
    multivector: Any  # np.ndarray (tokens, dim) or None: rerank by MaxSim when given
    mode: str = "hybrid"
    fusion: str = "rrf"
    k: int = 10
    candidates: int = 50  # per retriever, before fusion / rerank
    filter: dict[str, Any] = field(default_factory=dict)
    weights: tuple[float, float] = (1.0, 1.0)
    rrf_k: int = 60


@dataclass
class Candidate:
    key: str
    score: float
    text: str
    payload: dict[str, Any]
    retrievers: dict[str, dict[str, float]] = field(default_factory=dict)


class StoreBackend(Protocol):
    """What an adapter (qdrant_edge, qdrant, pgvector) implements; everything shared —
    embedding, schema checks, validation, cross-encoder rerank — lives in
    :class:`~hybridembed.stores.collection.VectorStore`."""

    kind: str

    def create(self, name: str, meta: dict[str, Any]) -> None:
        """Create collection ``name``; ``meta["schema"]`` is a CollectionSchema dict.
        Raise CollectionExistsError if it exists."""

    def list(self) -> list[str]: ...
    def drop(self, name: str) -> None: ...  # CollectionNotFoundError if absent
    def meta(self, name: str) -> dict[str, Any]: ...  # CollectionNotFoundError if absent
    def update_meta(self, name: str, meta: dict[str, Any]) -> None: ...
    def write(self, name: str, records: list[Record]) -> None:
        """Upsert records; durable when this returns (flush / commit)."""

    def delete(self, name: str, keys: list[str]) -> int: ...
    def count(self, name: str) -> int: ...
    def query(self, name: str, spec: QuerySpec) -> list[Candidate]:
        """Top ``spec.k`` candidates, fused in the database where it can, MaxSim-reranked
        when ``spec.multivector`` is given, each with its per-retriever rank and score."""

    def close(self) -> None: ...
