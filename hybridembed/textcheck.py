"""Text hygiene, the same on every way in (Python API, every HTTP route, CLI, stores,
migration): a text must be a ``str`` that encodes to UTF-8. Unpaired surrogates (legal in
JSON as ``"\\ud800"``, and in Python strings) cannot, and reached the tokenizer as a bare
``TypeError``; they are refused here with the input's index. NUL bytes are valid text for
the encoder, but PostgreSQL ``text`` cannot hold them, so every store refuses them the
same way (``allow_nul=False``) before anything is written."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidInputError


def check_text(text, index: int | None = None, what: str = "text",
               allow_nul: bool = True) -> str:
    """Return ``text`` if it is a ``str`` that encodes to UTF-8 (and holds no NUL when
    ``allow_nul`` is false). Raises :class:`InvalidInputError` naming ``what #index`` and
    the character offset of the first bad character otherwise."""
    name = what if index is None else f"{what} #{index}"
    if not isinstance(text, str):
        kind = "None" if text is None else type(text).__name__
        raise InvalidInputError(f"{name} is {kind}; every {what} must be a string", index)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name} holds an unpaired surrogate {text[exc.start]!r} at character "
            f"{exc.start}; texts must be valid Unicode (UTF-8 encodable)", index) from None
    if not allow_nul and "\x00" in text:
        raise InvalidInputError(
            f"{name} holds a NUL character (\\u0000) at character {text.index(chr(0))}; "
            "stores cannot keep NUL bytes faithfully (PostgreSQL text refuses them), so "
            "remove them before storing", index)
    return text


def check_texts(texts, what: str = "text", allow_nul: bool = True) -> list[str]:
    """``texts`` as a list after :func:`check_text` on each item; a lone ``str`` is a list
    of one. Raises :class:`InvalidInputError` for anything but a str or a list/tuple of
    str."""
    if isinstance(texts, str):
        return [check_text(texts, 0, what, allow_nul)]
    if not isinstance(texts, list | tuple):
        raise InvalidInputError(f"{what}s must be a string or a list of strings, got "
                                f"{type(texts).__name__}")
    return [check_text(t, i, what, allow_nul) for i, t in enumerate(texts)]


def nonfinite_rows(*outputs: np.ndarray | Sequence[np.ndarray] | Sequence[object] | None
                   ) -> list[int]:
    """Row indices (sorted) where any given output holds NaN or ±inf. Each output is a
    ``(n, dim)`` matrix, a list of per-row arrays (multi-vector), or a list of objects
    with a ``values`` array (sparse vectors); ``None`` is skipped."""
    bad: set[int] = set()
    for out in outputs:
        if out is None:
            continue
        if isinstance(out, np.ndarray) and out.ndim == 2:
            if out.size and not np.isfinite(out).all():
                bad.update(np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist())
            continue
        for i, row in enumerate(out):
            values = getattr(row, "values", row)
            if values is not None and not np.isfinite(np.asarray(values)).all():
                bad.add(i)
    return sorted(bad)


def decode(data: bytes, source: str, encoding: str = "utf-8") -> str:
    """``data`` read from ``source`` (a file name, ``<stdin>``) as text in ``encoding``.
    Raises :class:`InvalidInputError` naming the source, the byte offset of the first
    byte that does not decode, and the ``--encoding`` way out."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{source}: not valid {encoding} at byte {exc.start} "
            f"(0x{data[exc.start]:02x}); pass --encoding NAME if it is another encoding "
            "(e.g. latin-1, cp1252, utf-16)") from None
    except LookupError:
        raise InvalidInputError(f"unknown encoding {encoding!r}; use a Python codec name "
                                "such as utf-8, latin-1, cp1252, utf-16") from None
