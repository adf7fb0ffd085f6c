"""Token-budget packing: pure, no model, no I/O.

Texts are sorted longest first and cut into consecutive batches whose *padded* size
(``longest * count``) stays within ``max_tokens`` — or, for a runtime that runs a batch
without its padding (``padded=False``), whose real tokens do. Longest first puts the
longest texts in the first batch, so a batch that does not fit in memory shows up at once
(per tokenisation chunk, when the Embedder pipelines a large call). A text longer than the
budget gets a batch of its own.

Padded, with a ``batch_overhead`` (CPUs), the cut is the one of least predicted cost for
the whole call: each batch costs its padded tokens plus a fixed overhead, the cost of one
more forward pass (on a CPU every pass reads all the layer weights, whatever its size).
Neither much padding nor many small passes survive it: a server's merged batch of every
length is cut into a few runs of similar lengths, texts of one length into batches as full
as the budget allows (the remainder last). The cut is exact under that model (dynamic
programming over the sorted texts, as for optimal 1-D segmentation).

Unpadded (and with no cap on texts per batch), a call over the budget is cut into the
fewest batches the budget allows, of about equal tokens where such a cut fits the budget
(else greedily, longest first): 32 texts of 37 tokens run as 16 + 16 rather than 27 + 5,
and a batch of five texts costs nearly what one of sixteen does on a CPU (the weights
are read either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_by_token_budget(lengths: Sequence[int], max_tokens: int,
                         max_items: int | None = None, padded: bool = True,
                         batch_overhead: float | None = None, max_padded: int | None = None
                         ) -> list[list[int]]:
    """Return batches of positions into ``lengths``; every position appears exactly once.
    ``padded``: a batch costs ``longest * count`` tokens, else the sum of its lengths.
    ``batch_overhead`` (padded only): the fixed cost of one batch, in tokens; the texts are
    then cut where ``sum(batch_overhead + longest * count)`` over the batches is least
    (:func:`cheapest_cut`), else each batch is filled up to the budget.
    ``max_padded`` (unpadded only): nor may its ``longest * count`` pass this (a runtime
    that skips padding still hands its outputs back padded, to the heads). Raises
    ``ValueError`` for ``max_tokens`` or ``max_items`` under 1, or an overhead that is
    negative or not a number."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    if batch_overhead is not None and not batch_overhead >= 0:  # NaN too
        raise ValueError(f"batch_overhead must be >= 0, got {batch_overhead}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    sizes = [max(int(lengths[i]), 1) for i in order]
    if padded and batch_overhead is not None:
        return [order[a:b] for a, b in cheapest_cut(sizes, max_tokens, max_items,
                                                    batch_overhead)]
    if not padded and max_items is None:
        even = _even_batches(sizes, max_tokens)
        if even is not None and (max_padded is None or all(
                sizes[b[0]] * len(b) <= max_padded for b in even)):
            return [[order[k] for k in batch] for batch in even]
    batches: list[list[int]] = []
    current: list[int] = []
    longest = total = 0
    for i, length in zip(order, sizes, strict=True):
        too_big = (max(longest, length) * (len(current) + 1) if padded
                   else total + length) > max_tokens or (
            not padded and max_padded is not None
            and max(longest, length) * (len(current) + 1) > max_padded)
        too_many = max_items is not None and len(current) >= max_items
        if current and (too_big or too_many):
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(i)
        longest = max(longest, length)
        total += length
    if current:
        batches.append(current)
    return batches


def cheapest_cut(sizes: Sequence[int], max_tokens: int, max_items: int | None,
                 overhead: float) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges that cut ``sizes`` (token counts, sorted longest first)
    into consecutive batches of least total cost, a batch ``[a, b)`` costing
    ``overhead + (b - a) * sizes[a]`` tokens, each within ``max_tokens`` padded and
    ``max_items`` texts (a text over the budget alone). Dynamic programming from the end:
    the cheapest cut of the texts from ``a`` on is the cheapest over the first batch's
    end. ``O(n * k)`` for ``k`` texts per batch at most (``max_tokens`` over the shortest
    text), the inner minimum taken with numpy (timings in docs/BENCHMARKS.md, "Batches
    cut by predicted cost"). Among equally cheap cuts, each batch is as large as it can
    be, so a remainder comes last."""
    n = len(sizes)
    if n <= 1:
        return [(0, n)] if n else []
    best = np.zeros(n + 1)  # best[a]: least cost of the texts from a on
    end = [n] * (n + 1)  # where the first batch of that cut ends
    for a in range(n - 1, -1, -1):
        most = max(1, max_tokens // sizes[a])  # texts that fit at this width (one at least)
        if max_items is not None:
            most = min(most, max_items)
        last = min(n, a + most)
        # batches [a, b) for b = a+1 .. last; reversed so argmin's first pick is the largest
        ends = np.arange(last, a, -1)
        cost = best[last:a:-1] + (ends - a) * float(sizes[a])
        k = int(cost.argmin())
        best[a] = cost[k] + overhead
        end[a] = int(ends[k])
    cuts = []
    a = 0
    while a < n:
        cuts.append((a, end[a]))
        a = end[a]
    return cuts


def _even_batches(sizes: list[int], max_tokens: int) -> list[list[int]] | None:
    """Positions into ``sizes`` (sorted) cut into ``ceil(total / max_tokens)`` consecutive
    batches of about equal tokens (each text goes where its midpoint falls), or ``None``
    when one of them would be over ``max_tokens``."""
    total = sum(sizes)
    parts = -(-total // max_tokens)
    if parts <= 1:
        return [list(range(len(sizes)))] if sizes else []
    batches: list[list[int]] = [[] for _ in range(parts)]
    used = [0] * parts
    before = 0
    for k, size in enumerate(sizes):
        j = min(parts - 1, (2 * before + size) * parts // (2 * total))
        batches[j].append(k)
        used[j] += size
        before += size
    if max(used) > max_tokens:
        return None
    return [b for b in batches if b]
