"""Ingestion: read .txt / .md files and JSONL, cut long texts into token-aware chunks
with overlap, and give every chunk a stable id so re-running ``index`` on the same
content updates in place instead of duplicating.

Ids: a file's chunks are ``<path>#<n>``; a JSONL record's are its ``id`` (or ``<id>#<n>``
when it is cut into several chunks). Payload: ``source``, ``chunk`` and, for JSONL, every
field other than ``id`` and ``text`` (or the record's ``payload`` object).

:func:`late_chunked` cuts the same chunks (same ids, texts and payloads) but embeds them by
late chunking: each record goes through the model whole, in windows of the model's limit,
and each chunk's vectors are pooled from token states that saw the text around it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import InvalidInputError, InvalidOptionError
from .stores.base import Document

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def chunk_text(text: str, spans: Sequence[tuple[int, int]], size: int,
               overlap: int) -> list[str]:
    """Windows of ``size`` tokens that overlap by ``overlap`` tokens, cut at token
    boundaries of the original text (``spans`` are the tokens' character offsets)."""
    if size < 1 or not 0 <= overlap < size:
        raise InvalidOptionError(f"chunk size must be >= 1 and 0 <= overlap < size (got size "
                                 f"{size}, overlap {overlap})", "chunk")
    if len(spans) <= size:
        return [text]
    chunks = []
    step = size - overlap
    for start in range(0, len(spans), step):
        window = spans[start:start + size]
        chunks.append(text[window[0][0]:window[-1][1]].strip())
        if start + size >= len(spans):
            break
    return [c for c in chunks if c]


def _files(paths: Sequence[str | Path]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                              + JSONL_SUFFIXES)
        elif path.is_file():
            yield path
        else:
            raise InvalidInputError(f"{path} does not exist")


def _records(path: Path) -> Iterator[tuple[str, str, dict]]:
    """(id, text, payload) per source record."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{path}:{n}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise InvalidInputError(f"{path}:{n}: each line needs a string 'text'")
                doc_id = str(row.get("id", f"{path}:{n}"))
                payload = row.get("payload")
                if not isinstance(payload, dict):
                    payload = {k: v for k, v in row.items() if k not in ("id", "text")}
                yield doc_id, row["text"], {"source": str(path), **payload}
    elif suffix in TEXT_SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{path} is not UTF-8 text") from None
        yield str(path), text, {"source": str(path)}
    else:
        raise InvalidInputError(f"{path}: unsupported file type {suffix!r}; valid: "
                                + ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES))


def read_documents(paths: Sequence[str | Path], tokenizer, chunk_tokens: int = 256,
                   overlap: int = 32) -> Iterator[Document]:
    """Documents ready to upsert, chunked with ``tokenizer`` (a ``TextTokenizer``)."""
    for path in _files(paths):
        for doc_id, text, payload in _records(path):
            if not text.strip():
                continue
            chunks = chunk_text(text, tokenizer.spans(text), chunk_tokens, overlap)
            for n, chunk in enumerate(chunks):
                yield Document(text=chunk, id=_chunk_key(path, doc_id, n, len(chunks)),
                               payload={**payload, "chunk": n})


def _chunk_key(path: Path, doc_id: str, n: int, count: int) -> str:
    return doc_id if count == 1 and path.suffix.lower() in JSONL_SUFFIXES else f"{doc_id}#{n}"


def late_chunked(paths: Sequence[str | Path], embedder, chunk_tokens: int = 256,
                 overlap: int = 32, multivector: bool = True
                 ) -> Iterator[tuple[list[Document], object]]:
    """``(documents, result)`` parts ready for ``VectorStore.upsert_embedded``: the chunks
    :func:`read_documents` would cut (``chunk_tokens`` tokens, ``overlap`` shared), with
    dense, sparse (and ``multivector``) vectors from ``embedder.iter_chunks``, a part at a
    time so memory follows the model's window, not the document."""
    from .engine.windows import windows

    chunk_text("", [], chunk_tokens, overlap)  # the same checks of size and overlap
    for path in _files(paths):
        for doc_id, text, payload in _records(path):
            if not text.strip():
                continue
            count = None
            for part in embedder.iter_chunks(text, every=chunk_tokens, overlap=overlap,
                                             sparse=True, multivector=multivector):
                if count is None:
                    count = len(windows(part.document_tokens, chunk_tokens, overlap))
                step = chunk_tokens - overlap
                docs = [Document(text=c.text, id=_chunk_key(path, doc_id, c.token_start // step,
                                                            count),
                                 payload={**payload, "chunk": c.token_start // step})
                        for c in part.chunks]
                yield docs, part.result
