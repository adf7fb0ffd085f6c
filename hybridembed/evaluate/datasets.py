"""Evaluation data sets in one shape: ``(docs, queries, qrels)`` with ``docs`` a list of
``{"id", "text"}``, ``queries`` a list of ``{"id", "text"}`` (the generated set adds
``"kind"``) and ``qrels`` ``{query id: {doc id: grade}}``.

* :func:`load_beir` reads a folder in the BEIR layout (``corpus.jsonl``,
  ``queries.jsonl``, ``qrels/<split>.tsv``), such as an unzipped BEIR download. Nothing is
  downloaded here, and BEIR data sets keep their own licences.
* :func:`generated` wraps :func:`hybridembed.bench.labelled.labelled_corpus`: a small
  corpus written for this project (Apache-2.0, like the code), see
  :mod:`hybridembed.evaluate`.
* :func:`stdlib_docstrings` builds a larger natural-language set at run time from the
  docstrings of the running Python's standard library (nothing is shipped or
  downloaded; the text is the Python Software Foundation's, under its licence).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..errors import InvalidInputError

Dataset = tuple[list[dict], list[dict], dict[str, dict[str, int]]]

LAYOUT = "a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv"


def _need(path: Path) -> Path:
    if not path.is_file():
        raise InvalidInputError(f"{path}: file not found ({LAYOUT})")
    return path


def _id(value, path: Path, lineno: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise InvalidInputError(f"{path}:{lineno}: '_id' must be a non-empty string, got "
                                f"{value!r}")
    return str(value)


def _jsonl(path: Path, what: str, with_title: bool) -> list[dict]:
    rows: list[dict] = []
    seen: dict[str, int] = {}
    with _need(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InvalidInputError(f"{path}:{lineno}: each line must be a JSON object "
                                        f"with '_id' and 'text', got {type(obj).__name__}")
            if "_id" not in obj:
                raise InvalidInputError(f"{path}:{lineno}: {what} has no '_id'")
            key = _id(obj["_id"], path, lineno)
            text = obj.get("text", "")
            title = obj.get("title", "") if with_title else ""
            for field, value in (("text", text), ("title", title)):
                if value is not None and not isinstance(value, str):
                    raise InvalidInputError(f"{path}:{lineno}: {what} {key!r}: '{field}' must "
                                            f"be a string, got {type(value).__name__}")
            text, title = (text or "").strip(), (title or "").strip()
            if not with_title and not text:
                raise InvalidInputError(f"{path}:{lineno}: {what} {key!r} has no 'text'")
            if key in seen:
                raise InvalidInputError(f"{path}:{lineno}: {what} id {key!r} already appeared "
                                        f"on line {seen[key]}")
            seen[key] = lineno
            rows.append({"id": key, "text": f"{title} {text}".strip() if title else text})
    if not rows:
        raise InvalidInputError(f"{path}: no {what}s in the file")
    return rows


def _qrels(path: Path, query_ids: set[str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with _need(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 3:
                parts = line.split()
            if len(parts) != 3:
                raise InvalidInputError(f"{path}:{lineno}: expected 3 tab-separated fields "
                                        f"(query-id, corpus-id, score), got {len(parts)}")
            qid, doc, score = (p.strip() for p in parts)
            try:
                grade = int(score)
            except ValueError:
                try:
                    grade = float(score)
                except ValueError:
                    grade = None
                if lineno == 1 and grade is None:
                    continue  # the header: query-id corpus-id score
                if grade is None or grade != int(grade):
                    raise InvalidInputError(f"{path}:{lineno}: score must be a whole number, "
                                            f"got {score!r}") from None
                grade = int(grade)
            if qid not in query_ids:
                raise InvalidInputError(f"{path}:{lineno}: query {qid!r} is not in "
                                        "queries.jsonl")
            qrels.setdefault(qid, {})[doc] = grade
    if not qrels:
        raise InvalidInputError(f"{path}: no judgements in the file")
    return qrels


def load_beir(folder: str | os.PathLike, split: str = "test") -> Dataset:
    """Read a BEIR folder. A document's text is ``title + " " + text`` when it has a
    title. Only the queries judged in ``qrels/<split>.tsv`` are returned (as BEIR does);
    judged documents missing from the corpus are kept in ``qrels`` (they count against
    recall, as in pytrec_eval). Raises :class:`InvalidInputError` naming the file and
    line of the first problem."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: not a folder ({LAYOUT})")
    docs = _jsonl(root / "corpus.jsonl", "document", with_title=True)
    queries = _jsonl(root / "queries.jsonl", "query", with_title=False)
    qrels = _qrels(root / "qrels" / f"{split}.tsv", {q["id"] for q in queries})
    return docs, [q for q in queries if q["id"] in qrels], qrels


def generated() -> Dataset:
    """The project's generated labelled corpus (every answer has grade 1). Queries keep
    their ``kind``: ``semantic`` (paraphrase, no shared word) or ``lexical`` (a rare code)."""
    from ..bench.labelled import labelled_corpus

    docs, queries = labelled_corpus()
    return ([{"id": d["id"], "text": d["text"]} for d in docs],
            [{"id": q["id"], "text": q["text"], "kind": q["kind"]} for q in queries],
            {q["id"]: {doc: 1 for doc in q["relevant"]} for q in queries})


# Standard-library modules whose public functions, classes and methods make the
# ``stdlib`` set: many near neighbours (a dozen ways to read, copy or compare things), so
# small changes in an embedder move ranks. Fixed, sorted, so a Python version gives one set.
# Only what a module defines itself counts (asyncio, struct, ... re-export everything from
# private modules and would add nothing).
STDLIB_MODULES = (
    "argparse", "array", "base64", "codecs", "collections", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email.message", "enum", "fnmatch", "fractions",
    "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "http.client", "inspect", "io",
    "ipaddress", "itertools", "json", "logging", "math", "operator", "os", "os.path",
    "pathlib", "pickle", "platform", "queue", "random", "re", "secrets", "shutil", "socket",
    "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "time", "traceback", "typing", "urllib.parse", "uuid", "warnings", "weakref",
    "zipfile",
)
_SPACE = re.compile(r"\s+")


def _split_docstring(doc: str) -> tuple[str, str]:
    """(summary, body) of a docstring: the first paragraph and the rest, one line each."""
    doc = inspect.cleandoc(doc)
    summary, _, body = doc.partition("\n\n")
    return _SPACE.sub(" ", summary).strip(), _SPACE.sub(" ", body).strip()


def _documented(module) -> list[tuple[str, object]]:
    """Public functions, classes and their methods defined in ``module`` (not ones another
    package patched in later: transformers adds ``logging.Logger.info_once``)."""
    def own(obj) -> bool:
        return getattr(obj, "__module__", module.__name__) == module.__name__

    found = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not own(obj):
            continue
        if inspect.isclass(obj):
            found.append((name, obj))
            found += [(f"{name}.{m}", f) for m, f in sorted(vars(obj).items())
                      if not m.startswith("_") and callable(f) and own(f)]
        elif callable(obj):
            found.append((name, obj))
    return found


def stdlib_modules() -> Iterator[tuple[str, object]]:
    """``(name, module)`` of each of :data:`STDLIB_MODULES` this Python has (a build
    without sqlite3 or ssl, say, lacks some), with warnings silenced while the caller
    walks them (deprecated modules and attributes warn on import and access)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in STDLIB_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            yield module_name, module


def explained(module, seen: set[str]) -> Iterator[tuple[str, str, str]]:
    """``(name, summary, explanation)`` of each documented object of ``module`` (see
    :func:`_documented`) whose explanation has at least 12 words and is not in ``seen``
    (which it joins: inherited docstrings count once)."""
    for name, obj in _documented(module):
        doc = getattr(obj, "__doc__", None)
        if not isinstance(doc, str):
            continue
        summary, body = _split_docstring(doc)
        if len(body.split()) < 12 or body in seen:
            continue
        seen.add(body)
        yield name, summary, body


def stdlib_docstrings() -> Dataset:
    """A labelled set from the standard library's own docstrings: each documented function,
    class or method whose docstring has a one-paragraph summary (4-40 words) and a longer
    explanation (>= 12 words) gives a query, the summary, and its relevant document, the
    explanation (the object's name is not added to it). The explanations of every
    other documented object are the rest of the corpus. Duplicated texts (inherited
    docstrings) are kept once. Deterministic for a Python version."""
    docs: list[dict] = []
    queries: list[dict] = []
    seen_bodies: set[str] = set()
    seen_summaries: set[str] = set()
    for module_name, module in stdlib_modules():
        for name, summary, body in explained(module, seen_bodies):
            key = f"{module_name}.{name}"
            docs.append({"id": key, "text": body[:1500]})
            if 4 <= len(summary.split()) <= 40 and summary not in seen_summaries:
                seen_summaries.add(summary)
                queries.append({"id": f"q:{key}", "text": summary})
    return docs, queries, {q["id"]: {q["id"][2:]: 1} for q in queries}


def stdlib_version() -> str:
    return f"Python {sys.version.split()[0]} standard library"
