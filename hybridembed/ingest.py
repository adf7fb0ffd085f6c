"""Ingestion: read .txt / .md files and JSONL, cut long texts into token-aware chunks
with overlap, and give every chunk a stable id so re-running ``index`` on the same
content updates in place instead of duplicating.

Ids: a file's chunks are ``<absolute path>#<n>``; a JSONL record's are its ``id`` (or
``<absolute path>:<line>`` without one; ``<id>#<n>`` when it is cut into several chunks).
Paths are resolved (absolute, symlinks followed), so ``docs``, ``./docs``, ``/home/me/docs``
and the same folder seen from another working directory give the same ids. Payload:
``source`` (the resolved path), ``chunk`` and, for JSONL, every field other than ``id``
and ``text`` (or the record's ``payload`` object).

A file that cannot be read (permissions, not in the given encoding, a NUL byte, ...) or a
JSONL line that is not a valid record is reported through ``on_skip`` and skipped; the
rest is read. Memory is bounded by one file's text and one chunk window: files are
tokenized in segments (``TextTokenizer.content``) and chunks are yielded as they are
cut, so a single-line file of megabytes never becomes one huge token list.

:func:`late_chunked` cuts the same chunks (same ids, texts and payloads) but embeds them by
late chunking: each record goes through the model whole, in windows of the model's limit,
and each chunk's vectors are pooled from token states that saw the text around it.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import InvalidInputError, InvalidOptionError
from .stores.base import Document, check_documents
from .textcheck import check_text, decode

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def chunk_text(text: str, spans: Sequence[tuple[int, int]], size: int,
               overlap: int) -> list[str]:
    """Windows of ``size`` tokens that overlap by ``overlap`` tokens, cut at token
    boundaries of the original text (``spans`` are the tokens' character offsets)."""
    return list(_windows(text, iter(spans), size, overlap))


def iter_chunks(text: str, tokenizer, size: int, overlap: int) -> Iterator[str]:
    """:func:`chunk_text` of ``text`` with its spans from ``tokenizer`` (a
    ``TextTokenizer``), which tokenizes a long text in segments."""
    return _windows(text, _spans(text, tokenizer), size, overlap)


def _windows(text: str, spans: Iterator[tuple[int, int]], size: int,
             overlap: int) -> Iterator[str]:
    if size < 1 or not 0 <= overlap < size:
        raise InvalidOptionError(f"chunk size must be >= 1 and 0 <= overlap < size (got size "
                                 f"{size}, overlap {overlap})", "chunk")
    step, window, cut = size - overlap, [], False
    for span in spans:
        window.append(span)
        if len(window) > size:  # a token beyond this window: the window is complete
            chunk = text[window[0][0]:window[size - 1][1]].strip()
            if chunk:
                yield chunk
            window, cut = window[step:], True
    if not cut:  # the whole text fits in one chunk
        yield text
    elif window and (chunk := text[window[0][0]:window[-1][1]].strip()):
        yield chunk


def _spans(text: str, tokenizer) -> Iterator[tuple[int, int]]:
    """Token spans of ``text`` (tokenised in segments by ``TextTokenizer.content``)."""
    offsets = tokenizer.content(text)[1]  # (n, 2) int64: 16 bytes a token
    for a, b in offsets:
        yield int(a), int(b)


def source_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files ``paths`` name (folders: their .txt/.md/.rst/.jsonl files, recursively),
    resolved, each once, in a stable order. Raises :class:`InvalidInputError` for a path
    that does not exist, before anything is read."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise InvalidInputError(f"no such file or folder: {', '.join(missing)}")
    seen: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw).resolve()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
        else:
            found = [path]
        seen.update(dict.fromkeys(found))
    return list(seen)


def _records(path: Path, encoding: str, on_skip: Callable[[str], None]
             ) -> Iterator[tuple[str, str, dict]]:
    """(id, text, payload) per source record; a bad one is reported and skipped."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    line = decode(raw, f"{path} line {n}", encoding)
                except InvalidInputError as exc:
                    on_skip(str(exc))
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    on_skip(f"{path}:{n}: not JSON ({exc.msg})")
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    on_skip(f"{path}:{n}: each line needs a string 'text'")
                    continue
                doc_id = str(row.get("id", f"{path}:{n}"))
                payload = row.get("payload")
                if not isinstance(payload, dict):
                    payload = {k: v for k, v in row.items() if k not in ("id", "text")}
                yield doc_id, row["text"], {"source": str(path), **payload}
    elif suffix in TEXT_SUFFIXES:
        yield str(path), decode(path.read_bytes(), str(path), encoding), {"source": str(path)}
    else:
        on_skip(f"{path}: unsupported file type {suffix!r}; valid: "
                + ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES))


def read_documents(paths: Sequence[str | Path], tokenizer, chunk_tokens: int = 256,
                   overlap: int = 32, encoding: str = "utf-8",
                   on_skip: Callable[[str], None] | None = None) -> Iterator[Document]:
    """Documents ready to upsert, chunked with ``tokenizer`` (a ``TextTokenizer``), each
    checked as a store checks it. A file or record that cannot be read or stored is
    passed to ``on_skip`` as one line naming it and why, and skipped (without
    ``on_skip``: raised as :class:`InvalidInputError`)."""
    skip = _skipper(on_skip)
    for doc_id, text, payload, jsonl, where in _sources(paths, encoding, skip):
        yield from _documents(doc_id, text, payload, jsonl, where, tokenizer,
                              chunk_tokens, overlap, skip)


def late_chunked(paths: Sequence[str | Path], embedder, chunk_tokens: int = 256,
                 overlap: int = 32, multivector: bool = True, encoding: str = "utf-8",
                 on_skip: Callable[[str], None] | None = None
                 ) -> Iterator[tuple[list[Document], object]]:
    """``(documents, result)`` parts ready for ``VectorStore.upsert_embedded``: the chunks
    :func:`read_documents` would cut (``chunk_tokens`` tokens, ``overlap`` shared; same
    ids and payloads), with dense, sparse (and ``multivector``) vectors from
    ``embedder.iter_chunks``, a part at a time so memory follows the model's window, not
    the document. Unreadable files and records are skipped as in :func:`read_documents`."""
    from .engine.windows import windows

    skip = _skipper(on_skip)
    chunk_text("", [], chunk_tokens, overlap)  # the same checks of size and overlap
    step = chunk_tokens - overlap
    for doc_id, text, payload, jsonl, where in _sources(paths, encoding, skip):
        count = None
        for part in embedder.iter_chunks(text, every=chunk_tokens, overlap=overlap,
                                         sparse=True, multivector=multivector):
            if count is None:
                count = len(windows(part.document_tokens, chunk_tokens, overlap))
            docs = [Document(text=c.text, id=doc_id if jsonl and count == 1
                             else f"{doc_id}#{c.token_start // step}",
                             payload={**payload, "chunk": c.token_start // step})
                    for c in part.chunks]
            try:
                check_documents(docs)
            except (InvalidInputError, InvalidOptionError) as exc:
                skip(f"{where}: {exc}")
                break
            yield docs, part.result


def _skipper(on_skip: Callable[[str], None] | None) -> Callable[[str], None]:
    def skip(message: str) -> None:
        if on_skip is None:
            raise InvalidInputError(message)
        on_skip(message)
    return skip


def _sources(paths: Sequence[str | Path], encoding: str, skip: Callable[[str], None]
             ) -> Iterator[tuple[str, str, dict, bool, str]]:
    """``(id, text, payload, jsonl, where)`` per readable, storable, non-blank record of
    the files ``paths`` name; the others are passed to ``skip``."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise InvalidOptionError(f"unknown encoding {encoding!r}; use a Python codec name such "
                                 "as utf-8, latin-1, cp1252, utf-16", "encoding") from None
    for path in source_files(paths):
        jsonl = path.suffix.lower() in JSONL_SUFFIXES
        try:
            for doc_id, text, payload in _records(path, encoding, skip):
                where = f"{path}" if not jsonl else f"{path} record {doc_id!r}"
                try:
                    check_text(text, None, where, allow_nul=False)
                except InvalidInputError as exc:
                    skip(str(exc))
                    continue
                if text.strip():
                    yield doc_id, text, payload, jsonl, where
        except InvalidInputError as exc:  # not in ``encoding``
            skip(str(exc))
        except OSError as exc:
            skip(f"{path}: cannot read it ({exc.strerror or exc})")


def _documents(doc_id: str, text: str, payload: dict, jsonl: bool, where: str, tokenizer,
               chunk_tokens: int, overlap: int, skip: Callable[[str], None]
               ) -> Iterator[Document]:
    chunks = iter_chunks(text, tokenizer, chunk_tokens, overlap)
    first = next(chunks)
    second = next(chunks, None)
    if second is None and jsonl:
        docs = [Document(text=first, id=doc_id, payload={**payload, "chunk": 0})]
    else:
        docs = (Document(text=chunk, id=f"{doc_id}#{n}", payload={**payload, "chunk": n})
                for n, chunk in enumerate(_chain(first, second, chunks)))
    for doc in docs:
        try:
            check_documents([doc])
        except (InvalidInputError, InvalidOptionError) as exc:
            skip(f"{where}: {str(exc).removeprefix('document #0 ')}")
            return
        yield doc


def _chain(first: str, second: str | None, rest: Iterator[str]) -> Iterator[str]:
    yield first
    if second is not None:
        yield second
        yield from rest
