"""Embedding one claimed batch of a table's rows, with a verdict per row: the vectors
to write, or why the row was skipped or failed. No database here: the caller claims the
rows and writes the verdicts.

A row's text arrives as the bytes PostgreSQL holds (UTF-8; raw bytes in a ``SQL_ASCII``
database), so a row that is not valid text fails alone instead of failing the fetch of
its whole batch. Per-row failures never stop the batch: text that is not valid Unicode,
a text the embedder refuses (:class:`~hybridembed.errors.InvalidInputError`), a
non-finite output (:class:`~hybridembed.errors.NonFiniteOutputError`, or NaN/inf found
here), a text too large for device memory. Errors that are not about one text (a broken
model, a bug) propagate: the batch's transaction rolls back and nothing is half-written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import (
    InputTooLongError,
    InvalidInputError,
    NonFiniteOutputError,
    OutOfMemoryError,
)
from ..pgcommon import map_bm25, sparse_space
from ..textcheck import check_text, nonfinite_rows

REASON_MAX_CHARS = 300


@dataclass
class Verdicts:
    """What to write for each claimed row, by primary key: ``vectors`` (dense float32
    ``(dim,)`` and the ``pgvector.SparseVector`` or None), ``skipped`` and ``failed``
    (reason text)."""

    vectors: dict[Any, tuple[np.ndarray, Any]] = field(default_factory=dict)
    skipped: dict[Any, str] = field(default_factory=dict)
    failed: dict[Any, str] = field(default_factory=dict)


def _reason(kind: str, message: str = "") -> str:
    text = f"{kind}: {message}" if message else kind
    # ASCII only: the reason is written through any client encoding, SQL_ASCII included
    return text.encode("ascii", "backslashreplace").decode("ascii")[:REASON_MAX_CHARS]


def decode_text(raw: bytes | str | None) -> str | None:
    """A row's text from the bytes PostgreSQL sent (``None`` stays ``None``). Raises
    :class:`InvalidInputError` for bytes that are not UTF-8 or text that is not valid
    Unicode (unpaired surrogates)."""
    if raw is None:
        return None
    if isinstance(raw, memoryview | bytearray):
        raw = bytes(raw)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"the text is not valid UTF-8 (byte {exc.start}: "
                                    f"{raw[exc.start:exc.start + 1]!r})") from None
    return check_text(raw)


def embed_rows(embedder, claimed: list[tuple[Any, Any]], *, sparse: bool,
               truncate: bool) -> Verdicts:
    """Embed ``claimed`` ``(key, text bytes or None)`` rows with ``embedder`` (dense,
    and sparse when ``sparse``). Texts over the model's limit are cut when ``truncate``,
    else skipped as ``too-long``. Returns a :class:`Verdicts` covering every key once."""
    out = Verdicts()
    pending: list[tuple[Any, str]] = []
    for key, raw in claimed:
        try:
            text = decode_text(raw)
        except InvalidInputError as exc:
            out.failed[key] = _reason("invalid-text", str(exc))
            continue
        if text is None or not text.strip():
            out.skipped[key] = "empty-text"
        else:
            pending.append((key, text))
    spec = embedder.spec
    space = sparse_space(spec.has_learned_sparse, spec.vocab_size)
    while pending:  # each turn settles at least one row, so this ends
        texts = [t for _, t in pending]
        try:
            result = embedder.embed(texts, dense=True, sparse=sparse, truncate=truncate)
            ok = list(range(len(texts)))
        except (InputTooLongError, NonFiniteOutputError) as exc:
            bad = exc.too_long if isinstance(exc, InputTooLongError) else exc.indices
            for i in bad:
                if isinstance(exc, InputTooLongError):
                    out.skipped[pending[i][0]] = "too-long"
                else:
                    out.failed[pending[i][0]] = _reason("non-finite-output", "the model "
                                                        "produced NaN or infinity")
            if exc.partial is None:  # embed the rest again
                pending = [row for i, row in enumerate(pending) if i not in set(bad)]
                continue
            result, ok = exc.partial, exc.partial_indices
        except (InvalidInputError, OutOfMemoryError) as exc:
            i = exc.index if exc.index is not None and 0 <= exc.index < len(pending) else None
            if i is None:  # the error does not say which text: settle the rows one by one
                if len(pending) == 1:
                    out.failed[pending[0][0]] = _reason(type(exc).__name__, str(exc))
                    break
                for row in pending:
                    single = embed_rows(embedder, [(row[0], row[1])], sparse=sparse,
                                        truncate=truncate)
                    out.vectors.update(single.vectors)
                    out.skipped.update(single.skipped)
                    out.failed.update(single.failed)
                break
            kind = "invalid-text" if isinstance(exc, InvalidInputError) else "out-of-memory"
            out.failed[pending[i][0]] = _reason(kind, str(exc))
            pending = pending[:i] + pending[i + 1:]
            continue
        _collect(out, pending, result, ok, sparse, spec.has_learned_sparse, space)
        break
    return out


def _collect(out: Verdicts, pending, result, ok: list[int], sparse: bool, learned: bool,
             space: int) -> None:
    """Move the embedded rows of ``result`` (row r is ``pending[ok[r]]``) into ``out``;
    a row with a non-finite value fails instead (checked here whatever the embedder
    checked, since nothing non-finite may be stored)."""
    bad = set(nonfinite_rows(result.dense, result.sparse if sparse else None))
    for row, i in enumerate(ok):
        key = pending[i][0]
        if row in bad:
            out.failed[key] = _reason("non-finite-output", "the model produced NaN or infinity")
            continue
        vector = None
        if sparse:
            vector = result.sparse[row]
            if not learned:
                vector = map_bm25(vector)
            vector = vector.to_pgvector(space)
        out.vectors[key] = (np.asarray(result.dense[row], np.float32), vector)
