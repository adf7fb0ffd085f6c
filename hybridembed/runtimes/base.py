"""The contract between the engine and a compute runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class RuntimeOutOfMemory(Exception):
    """Raised by a runtime when a batch does not fit; the engine splits and retries."""


@dataclass(frozen=True)
class RuntimeOutput:
    """Padded outputs of one forward pass over a ``(batch, length)`` token matrix.

    dense: ``(batch, hidden)`` pooled, not normalised.
    token_weights: ``(batch, length)`` learned sparse weight of every position
    (``relu(W_s h_t + b)``), special tokens not yet removed; any value where padded.
    token_vectors: ``(batch, length - 1, dim)`` per-token vectors of every position after
    the first (CLS), L2-normalised, zero where padded; or, with ``token_mask``, ``(batch,
    width, dim)`` vectors of which row ``r`` keeps those where ``token_mask[r]`` is true.
    vocab_weights: ``(batch, vocab)`` SPLADE weight of every vocabulary id (zero: absent).
    token_states: ``(batch, length, hidden)`` float32 last hidden states of every position,
    not normalised (any value where padded) — what pooling averages; asked for by late
    chunking, which pools spans of them (only from runtimes with ``token_states = True``).
    positions: how many positions the encoder's layers computed, when the runtime ran the
    batch without its padding (its real tokens, :mod:`.sequence_packing`); ``None``: all
    ``batch * length`` of them.
    """

    dense: np.ndarray | None = None
    token_weights: np.ndarray | None = None
    token_vectors: np.ndarray | None = None
    token_mask: np.ndarray | None = None
    vocab_weights: np.ndarray | None = None
    token_states: np.ndarray | None = None
    positions: int | None = None


def keep_heaviest(weights: np.ndarray, k: int) -> np.ndarray:
    """``(batch, vocab)`` weights with all but each row's ``k`` largest set to zero
    (sentence-transformers' ``max_active_dims``)."""
    if weights.shape[-1] <= k:
        return weights
    top = np.argpartition(-weights, k - 1, axis=-1)[:, :k]
    out = np.zeros_like(weights)
    np.put_along_axis(out, top, np.take_along_axis(weights, top, axis=-1), axis=-1)
    return out


class Runtime(Protocol):
    """``forward`` runs one padded batch. A runtime may also offer ``parallel_forwards``
    (how many batches the engine should run at once, one thread each; 1 when absent), and
    then its ``forward`` takes ``threads``: the compute threads for that one call. A
    runtime with ``token_states = True`` also takes ``states`` (fill
    :attr:`RuntimeOutput.token_states`). A runtime with ``packs_ragged = True`` runs a
    mixed-length batch without its padding (see :mod:`.sequence_packing`), so the engine
    budgets its batches by real tokens."""

    device: str
    dtype: str

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, dense: bool,
                sparse: bool, multivector: bool) -> RuntimeOutput: ...

    # A runtime for models whose queries run differently (ColBERT query expansion) also
    # takes ``query=True`` for a batch of queries; the engine passes it only then.
