"""Token-budget packing: pure, no model, no I/O.

Texts are sorted longest first and cut into batches whose *padded* size
(``longest * count``) stays within ``max_tokens`` — or, for a runtime that runs a batch
without its padding (``padded=False``), whose real tokens do. Longest first puts the
largest batch at the front, so a batch that does not fit in memory shows up at once (per
tokenisation chunk, when the Embedder pipelines a large call). A text longer than the
budget gets a batch of its own.

Unpadded (and with no cap on texts per batch), a call over the budget is cut into the
fewest batches the budget allows, of about equal tokens where such a cut fits the budget
(else greedily, longest first): 32 texts of 37 tokens run as 16 + 16 rather than 27 + 5,
and a batch of five texts costs nearly what one of sixteen does on a CPU (the weights
are read either way).
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_by_token_budget(lengths: Sequence[int], max_tokens: int,
                         max_items: int | None = None, padded: bool = True,
                         max_padding: float | None = None, max_padded: int | None = None
                         ) -> list[list[int]]:
    """Return batches of positions into ``lengths``; every position appears exactly once.
    ``padded``: a batch costs ``longest * count`` tokens, else the sum of its lengths.
    ``max_padding`` (padded only): a batch also ends before its padding would pass this
    share of its tokens (texts go in longest first, so a batch's padding only grows).
    ``max_padded`` (unpadded only): nor may its ``longest * count`` pass this (a runtime
    that skips padding still hands its outputs back padded, to the heads)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if not padded and max_items is None:
        sizes = [max(int(lengths[i]), 1) for i in order]
        even = _even_batches(sizes, max_tokens)
        if even is not None and (max_padded is None or all(
                sizes[b[0]] * len(b) <= max_padded for b in even)):
            return [[order[k] for k in batch] for batch in even]
    batches: list[list[int]] = []
    current: list[int] = []
    longest = total = 0
    for i in order:
        length = max(int(lengths[i]), 1)
        too_big = (max(longest, length) * (len(current) + 1) if padded
                   else total + length) > max_tokens or (
            not padded and max_padded is not None
            and max(longest, length) * (len(current) + 1) > max_padded)
        too_many = max_items is not None and len(current) >= max_items
        too_padded = (padded and max_padding is not None and current
                      and total + length < (1 - max_padding) * longest * (len(current) + 1))
        if current and (too_big or too_many or too_padded):
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(i)
        longest = max(longest, length)
        total += length
    if current:
        batches.append(current)
    return batches


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
