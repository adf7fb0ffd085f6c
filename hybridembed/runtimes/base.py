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
    (``relu(W_s h_t + b)``), special tokens not yet removed.
    token_vectors: ``(batch, length - 1, dim)`` per-token vectors of every position after
    the first (CLS), L2-normalised, zero where padded.
    token_states: ``(batch, length, hidden)`` float32 last hidden states of every position,
    not normalised — what pooling averages; asked for by late chunking, which pools spans
    of them (only from runtimes with ``token_states = True``).
    """

    dense: np.ndarray | None = None
    token_weights: np.ndarray | None = None
    token_vectors: np.ndarray | None = None
    token_states: np.ndarray | None = None


class Runtime(Protocol):
    """``forward`` runs one padded batch. A runtime may also offer ``parallel_forwards``
    (how many batches the engine should run at once, one thread each; 1 when absent), and
    then its ``forward`` takes ``threads``: the compute threads for that one call. A
    runtime with ``token_states = True`` also takes ``states`` (fill
    :attr:`RuntimeOutput.token_states`)."""

    device: str
    dtype: str

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, dense: bool,
                sparse: bool, multivector: bool) -> RuntimeOutput: ...
