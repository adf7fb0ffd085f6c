"""Token windows over texts longer than the model's limit (NumPy only): where windows
start and stop, which window gives each token the most context, and how the windows of
one text pool back into one result (the ``chunk`` overflow policy).

A window holds at most ``size`` body tokens; neighbours share ``overlap`` tokens, and
every window is wrapped in the model's special tokens (and the prompt, when there is
one) as a whole text would be."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidOptionError
from ..sparse import SparseVector, merge
from .encoder import RawRow


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of windows of at most ``size`` tokens covering ``n`` tokens, each
    starting ``size - overlap`` after the previous one; the last one stops at ``n`` (and
    may be shorter). One window when ``n <= size``. Raises :class:`InvalidOptionError`
    when ``overlap`` leaves no room to advance."""
    if size < 1 or not 0 <= overlap < size:
        raise InvalidOptionError(f"a window of {size} tokens cannot overlap its neighbour by "
                                 f"{overlap} tokens; use an overlap under {max(size, 1)}",
                                 "overlap")
    if n <= size:
        return [(0, n)]
    step = size - overlap
    out = []
    for start in range(0, n, step):
        out.append((start, min(n, start + size)))
        if start + size >= n:
            break
    return out


def owners(n: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """``(n,)`` int: for each token, the index of the window of ``spans`` in which it has
    the most context — the most tokens on its nearer side, ``min(t - start, stop - 1 -
    t)`` — the earlier window on a tie. Each window owns one contiguous run of tokens."""
    owner = np.zeros(n, dtype=np.int64)
    best = np.full(n, -1, dtype=np.int64)
    for k, (a, b) in enumerate(spans):
        t = np.arange(a, b)
        context = np.minimum(t - a, b - 1 - t)
        better = context > best[a:b]
        owner[a:b][better] = k
        best[a:b][better] = context[better]
    return owner


def pool_windows(rows: list[RawRow], lengths: list[int], pooling: str, lead: int,
                 body: list[int], overlap: int) -> RawRow:
    """One text's result from the rows of its windows (the ``chunk`` overflow policy).

    ``lengths[k]``: tokens of window ``k`` (special tokens included) — the weights of the
    ``"mean"`` dense pooling (``"max"``: element-wise max); dense stays un-normalised.
    Learned sparse vectors merge by max. Multi-vectors are concatenated with every token
    once: ``lead`` vectors before the body (prefix specials after CLS, the prompt) from
    the first window only, then each window's ``body[k]`` tokens less the ``overlap``
    shared with the previous window, then the last window's closing special tokens.
    """
    out = RawRow(finite=all(r.finite for r in rows))
    if rows[0].dense is not None:
        stack = np.stack([r.dense for r in rows]).astype(np.float32, copy=False)
        if pooling == "max":
            out.dense = stack.max(axis=0)
        else:
            weights = np.asarray(lengths, dtype=np.float32)[:, None]
            out.dense = (stack * weights).sum(axis=0) / weights.sum()
    if rows[0].sparse is not None:
        out.sparse = merge([r.sparse for r in rows], "max") if len(rows) > 1 else rows[0].sparse
    if rows[0].multivector is not None:
        parts = []
        last = len(rows) - 1
        for k, r in enumerate(rows):
            start = 0 if k == 0 else lead + overlap
            stop = None if k == last else lead + body[k]
            parts.append(r.multivector[start:stop])
        out.multivector = np.ascontiguousarray(np.concatenate(parts))
    return out


def sparse_from_positions(ids: np.ndarray, weights: np.ndarray, special_ids: np.ndarray
                          ) -> SparseVector:
    """Learned sparse vector of a run of positions: per vocabulary id the max weight over
    its occurrences, special tokens and zero weights dropped (as for a whole text)."""
    keep = (weights > 0) & ~np.isin(ids, special_ids)
    return SparseVector.from_pairs(ids[keep].astype(np.int64), weights[keep].astype(np.float32),
                                   reduce="max")
