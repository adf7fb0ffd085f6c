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
tokenized in segments of :data:`SEGMENT_CHARS` characters and chunks are yielded as they
are cut, so a single-line file of megabytes never becomes one huge token list.
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
SEGMENT_CHARS = 65_536  # characters tokenized at once


def chunk_text(text: str, spans: Sequence[tuple[int, int]], size: int,
               overlap: int) -> list[str]:
    """Windows of ``size`` tokens that overlap by ``overlap`` tokens, cut at token
    boundaries of the original text (``spans`` are the tokens' character offsets)."""
    return list(_windows(text, iter(spans), size, overlap))


def iter_chunks(text: str, tokenizer, size: int, overlap: int) -> Iterator[str]:
    """:func:`chunk_text` of ``text`` with its spans from ``tokenizer`` (a
    ``TextTokenizer``), tokenizing :data:`SEGMENT_CHARS` characters at a time."""
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
    """Token spans of ``text``, tokenized in segments cut at whitespace."""
    start = 0
    while start < len(text):
        end = min(start + SEGMENT_CHARS, len(text))
        if end < len(text):
            space = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            end = space + 1 if space > start else end
        for a, b in tokenizer.spans(text[start:end]):
            yield start + a, start + b
        start = end


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
    def skip(message: str) -> None:
        if on_skip is None:
            raise InvalidInputError(message)
        on_skip(message)

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
                if not text.strip():
                    continue
                yield from _documents(doc_id, text, payload, jsonl, where, tokenizer,
                                      chunk_tokens, overlap, skip)
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
