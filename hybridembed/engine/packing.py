"""Token-budget packing: pure, no model, no I/O.

Texts are sorted longest first and cut into batches whose *padded* size
(``longest * count``) stays within ``max_tokens``. Longest first puts the largest batch at
the front, so a batch that does not fit in memory shows up at once (per tokenisation
chunk, when the Embedder pipelines a large call). A text longer than
the budget gets a batch of its own.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_by_token_budget(lengths: Sequence[int], max_tokens: int,
                         max_items: int | None = None) -> list[list[int]]:
    """Return batches of positions into ``lengths``; every position appears exactly once."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = max(int(lengths[i]), 1)
        too_big = max(longest, length) * (len(current) + 1) > max_tokens
        too_many = max_items is not None and len(current) >= max_items
        if current and (too_big or too_many):
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches
