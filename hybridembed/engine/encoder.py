"""The encoder: packs token id lists into padded batches by token budget, runs the
runtime, splits a batch in half on out-of-memory, and returns one raw row per text in
the order it was given."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OutOfMemoryError
from ..runtimes.base import Runtime, RuntimeOutOfMemory
from ..sparse import SparseVector
from .heads import learned_sparse
from .packing import pack_by_token_budget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    """Which outputs the forward pass must produce."""

    dense: bool = True
    sparse: bool = False  # learned sparse weights (only for models with the head)
    multivector: bool = False

    @property
    def any(self) -> bool:
        return self.dense or self.sparse or self.multivector


@dataclass
class RawRow:
    dense: np.ndarray | None = None  # pooled, not normalised
    sparse: SparseVector | None = None
    multivector: np.ndarray | None = None


@dataclass
class EncoderStats:
    batches: int = 0
    texts: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    forward_seconds: float = 0.0


class Encoder:
    def __init__(self, runtime: Runtime, pad_id: int, special_ids: np.ndarray,
                 max_batch_tokens: int, max_batch_size: int | None = None):
        self.runtime = runtime
        self.pad_id = pad_id
        self.special_ids = special_ids
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = max_batch_size
        self.stats = EncoderStats()

    def encode(self, ids: Sequence[Sequence[int]], want: Outputs,
               origin: Sequence[int] | None = None) -> list[RawRow]:
        """Encode token id lists. ``origin[i]`` is the caller's index of ``ids[i]``, used
        to name the text in an out-of-memory error."""
        rows = [RawRow() for _ in ids]
        if not want.any or not ids:
            return rows
        origin = list(origin) if origin is not None else list(range(len(ids)))
        lengths = [len(x) for x in ids]
        for batch in pack_by_token_budget(lengths, self.max_batch_tokens, self.max_batch_size):
            self._run(batch, ids, want, rows, origin)
        return rows

    def _run(self, batch: list[int], ids, want: Outputs, rows: list[RawRow], origin) -> None:
        longest = max(len(ids[i]) for i in batch)
        input_ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for r, i in enumerate(batch):
            input_ids[r, :len(ids[i])] = ids[i]
            mask[r, :len(ids[i])] = 1
        started = time.perf_counter()
        try:
            out = self.runtime.forward(input_ids, mask, dense=want.dense, sparse=want.sparse,
                                       multivector=want.multivector)
        except RuntimeOutOfMemory:
            if len(batch) == 1:
                i = batch[0]
                raise OutOfMemoryError(origin[i], len(ids[i]), self.runtime.device) from None
            self.stats.oom_splits += 1
            half = len(batch) // 2
            log.warning("out of memory on a batch of %d texts x %d tokens; splitting in half",
                        len(batch), longest)
            self._run(batch[:half], ids, want, rows, origin)
            self._run(batch[half:], ids, want, rows, origin)
            return
        self.stats.forward_seconds += time.perf_counter() - started
        self.stats.batches += 1
        self.stats.texts += len(batch)
        self.stats.tokens += int(mask.sum())
        self.stats.padded_tokens += mask.size
        for r, i in enumerate(batch):
            n = len(ids[i])
            row = rows[i]
            if out.dense is not None:
                row.dense = out.dense[r]
            if out.token_weights is not None:
                row.sparse = learned_sparse(input_ids[r, :n], out.token_weights[r, :n],
                                            self.special_ids)
            if out.token_vectors is not None:
                row.multivector = np.ascontiguousarray(out.token_vectors[r, :max(n - 1, 0)])
