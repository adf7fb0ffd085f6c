"""Late chunking (Günther et al. 2024, arXiv:2409.04701): run a whole document through
the encoder, then pool each chunk's span of token states, so every chunk's vectors carry
the context of the document around it — dense, learned sparse and multi-vector from the
same pass.

* Chunks are given as character spans, as "every N tokens with M overlap", or as a list
  of texts that concatenate to the document (:func:`plan_chunks`).
* A document longer than the model's limit goes through macro-windows of the limit that
  overlap (``window_overlap`` tokens, a quarter of a window by default); each token's
  state is taken from the window in which it has the most context on its nearer side
  (:func:`hybridembed.engine.windows.owners`).
* Per chunk: dense = the model's pooling over the chunk's states (``mean``; a ``cls``
  model's CLS token belongs to no chunk, so its chunks are mean-pooled too, as in the
  paper; ``lasttoken``: the chunk's last state), then normalised / cut as ``embed`` does;
  learned sparse = per vocabulary id the max weight over the span (SPLADE: the MLM head
  and SPLADE pooling over the span's states; inference-free SPLADE queries: the static
  weights of the chunk's tokens); multi-vector = the span's token vectors. Models without
  a sparse head get BM25 of the chunk's own text. A pipeline's Dense modules apply to
  each chunk's pooled states, as to a whole text's. ColBERT checkpoints are refused
  (their marker tokens shift positions).
* Memory is bounded by the windows in flight and the longest chunk, not the document:
  windows go through the model a group at a time, chunks are pooled as soon as every
  token of theirs is final, and states before the earliest unfinished chunk are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..engine import Outputs
from ..engine.heads import finish_dense, vocab_sparse
from ..engine.windows import owners, sparse_from_positions, windows
from ..errors import (
    InvalidInputError,
    InvalidOptionError,
    NonFiniteOutputError,
    UnsupportedOutputError,
)
from ..sparse import prune
from ..textcheck import nonfinite_rows
from ..types import Chunk, EmbedResult, LateChunks, Usage
from .request import prompt_of

# Tokens of windows handed to the encoder at once: enough batches for its side-by-side
# forwards on a CPU, little memory (32 MiniLM windows of states: 12 MB).
GROUP_TOKENS = 65_536
GROUP_WINDOWS = 32


def _whole(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        valid = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidOptionError(f"{name} must be a whole number {valid}, got {value!r}", name)
    return value


def plan_chunks(document: str, offsets: np.ndarray, *, spans=None, every: int | None = None,
                overlap: int = 0, chunks: Sequence[str] | None = None) -> list[Chunk]:
    """The chunks of ``document`` (``offsets``: ``(n, 2)`` character ``[start, stop)`` of
    its ``n`` tokens), from exactly one of: ``spans`` (character ``(start, end)`` pairs;
    a chunk holds every token that overlaps its span), ``every`` (tokens per chunk, with
    ``overlap`` tokens shared by neighbours) or ``chunks`` (texts whose concatenation is
    the document). Raises :class:`InvalidOptionError` naming the bad chunk."""
    given = [name for name, v in (("spans", spans), ("every", every), ("chunks", chunks))
             if v is not None]
    if len(given) != 1:
        raise InvalidOptionError("give exactly one of spans (character spans), every (tokens "
                                 f"per chunk) or chunks (texts); got {given or 'none'}", "spans")
    n = len(offsets)
    if n == 0:
        raise InvalidInputError("the document holds no tokens; nothing to chunk")
    if every is not None:
        _whole("every", every, 1)
        _whole("overlap", overlap, 0, every - 1)
        return [Chunk(document[offsets[a, 0]:offsets[b - 1, 1]], int(offsets[a, 0]),
                      int(offsets[b - 1, 1]), a, b) for a, b in windows(n, every, overlap)]
    if chunks is not None:
        if isinstance(chunks, str) or not all(isinstance(c, str) for c in chunks):
            raise InvalidOptionError("chunks must be a list of strings", "chunks")
        if "".join(chunks) != document:
            joined = "".join(chunks)
            at = next((i for i, (x, y) in enumerate(zip(joined, document, strict=False))
                       if x != y), min(len(joined), len(document)))
            raise InvalidOptionError(f"chunks must concatenate to the document; they differ "
                                     f"from character {at}", "chunks")
        bounds = np.cumsum([0, *map(len, chunks)])
        spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
        name = "chunks"
    else:
        name = "spans"
        if isinstance(spans, str | bytes) or not hasattr(spans, "__iter__"):
            raise InvalidOptionError("spans must be a list of (start, end) pairs", "spans")
        spans = list(spans)
    starts, ends = offsets[:, 0], offsets[:, 1]
    out = []
    for i, span in enumerate(spans):
        if (not isinstance(span, Sequence) or len(span) != 2
                or any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in span)
                or not 0 <= span[0] < span[1] <= len(document)):
            if name == "chunks":
                raise InvalidOptionError(f"chunks[{i}] is empty", "chunks")
            raise InvalidOptionError(f"spans[{i}] = {span!r} is not a (start, end) pair with "
                                     f"0 <= start < end <= {len(document)} (the document's "
                                     "length in characters)", "spans")
        a, b = int(span[0]), int(span[1])
        first = int(np.searchsorted(ends, a, side="right"))  # first token ending after a
        stop = int(np.searchsorted(starts, b, side="left"))  # tokens starting before b
        if stop <= first:
            raise InvalidOptionError(f"{name}[{i}] (characters {a}-{b}) holds no token",
                                     name)
        out.append(Chunk(document[a:b], a, b, first, stop))
    return out


def embed_chunks(embedder, document: str, **options) -> LateChunks:
    """See :meth:`hybridembed.Embedder.embed_chunks`: every chunk at once, in the order
    they were given."""
    found = list(_pooled_parts(embedder, document, **options))  # never empty: chunks hold tokens
    plan = found[0][1]
    parts = [(indices, part) for indices, _, part in found]
    rows: dict[int, tuple[int, EmbedResult]] = {}
    for indices, part in parts:
        rows.update({i: (r, part.result) for r, i in enumerate(indices)})
    pick = [rows[i] for i in range(len(plan))]
    last = parts[-1][1]
    o = last.result
    result = EmbedResult(
        model=o.model,
        dense=None if o.dense is None else np.stack([res.dense[r] for r, res in pick]),
        sparse=None if o.sparse is None else [res.sparse[r] for r, res in pick],
        multivector=None if o.multivector is None else [res.multivector[r] for r, res in pick],
        usage=Usage([c.tokens for c in plan]))
    return LateChunks(plan, result, last.document_tokens, last.windows,
                      sum(p.tokens for _, p in parts))


def iter_chunks(embedder, document: str, **options) -> Iterator[LateChunks]:
    """See :meth:`hybridembed.Embedder.iter_chunks`: the chunks in groups, each as soon as
    all of its tokens are final (ordered by where they end)."""
    for _, _, part in _pooled_parts(embedder, document, **options):
        yield part


def _pooled_parts(embedder, document: str, *, spans=None, every: int | None = None,
                  overlap: int = 0, chunks: Sequence[str] | None = None, dense: bool = True,
                  sparse: bool = False, multivector: bool = False, kind: str = "document",
                  prompt_name: str | None = None, dimensions: int | None = None,
                  normalize: bool = True, window_overlap: int | None = None,
                  max_active_dims: int | None = None
                  ) -> Iterator[tuple[list[int], list[Chunk], LateChunks]]:
    """``(plan indices, plan, part)`` per group of windows that finished some chunks;
    every option is checked before the model runs."""
    o = embedder.request([document], dense=dense, sparse=sparse, multivector=multivector,
                         kind=kind, prompt_name=prompt_name, dimensions=dimensions,
                         normalize=normalize, max_active_dims=max_active_dims).options
    if not getattr(embedder._runtime, "token_states", False):
        raise UnsupportedOutputError(f"late chunking pools token states, which the "
                                     f"{embedder.runtime_name} runtime does not give; use "
                                     "runtime='torch'")
    if embedder.spec.late_interaction is not None:
        # Marker tokens, query expansion and the skiplist move a ColBERT checkpoint's
        # positions away from the document's tokens, so a chunk's span of states is not
        # its tokens' states.
        raise UnsupportedOutputError(
            f"late chunking is not available for {embedder.model!r} (a ColBERT checkpoint: "
            "its marker tokens and skiplist shift positions); embed the chunk texts, or "
            "use overflow='chunk' for over-long texts")
    tok = embedder.tokenizer
    ids, offsets = tok.content(document)
    plan = plan_chunks(document, offsets, spans=spans, every=every, overlap=overlap,
                       chunks=chunks)
    prompt = prompt_of(embedder.spec, o)
    head = [*tok.special_prefix, *(tok.encode_bare([prompt])[0] if prompt else [])]
    tail = list(tok.special_suffix)
    size = embedder.max_length - len(head) - len(tail)
    if window_overlap is None:
        window_overlap = size // 4
    _whole("window_overlap", window_overlap, 0, size // 2)
    spans_ = windows(len(ids), size, window_overlap)
    pooler = _Pooler(embedder, o, plan, ids, head_len=len(head))
    own = owners(len(ids), spans_)
    # BGE-M3's sparse head weighs each position (pooled per span below); a SPLADE head
    # pools over positions itself, so it runs per chunk span on the states instead.
    want = Outputs(dense=False, sparse=o.sparse and embedder._bm25 is None
                   and embedder.spec.splade is None, multivector=o.multivector, states=True)
    group = max(1, min(GROUP_WINDOWS, GROUP_TOKENS // embedder.max_length))
    for g in range(0, len(spans_), group):
        part = spans_[g:g + group]
        inputs = [[*head, *ids[a:b].tolist(), *tail] for a, b in part]
        with embedder._lock:
            rows = embedder._encoder.encode(inputs, want)
        for k, (a, b), row in zip(range(g, g + len(part)), part, rows, strict=True):
            mine = np.flatnonzero(own[a:b] == k)
            if mine.size:
                pooler.add(a + int(mine[0]), a + int(mine[-1]) + 1, a, row)
        done = pooler.emit()
        if done:
            yield done, plan, LateChunks([plan[i] for i in done], pooler.result(done),
                                         len(ids), len(spans_), sum(map(len, inputs)))


class _Pooler:
    """Keeps the final token states of a document in order, from the earliest chunk not
    yet pooled up to the last token final so far, and pools each chunk once all of its
    tokens are final."""

    def __init__(self, embedder, options, plan: list[Chunk], ids: np.ndarray, head_len: int):
        self.embedder, self.o, self.plan, self.ids, self.head_len = (
            embedder, options, plan, ids, head_len)
        self.order = sorted(range(len(plan)), key=lambda i: plan[i].token_end)
        starts = [plan[i].token_start for i in self.order]
        # earliest start among the chunks from position j of ``order`` on
        self.min_start = np.minimum.accumulate(starts[::-1])[::-1].tolist() + [len(ids)]
        self.next = 0
        self.buf_start = 0
        self.final = 0  # tokens [0, final) have their state
        self.parts: dict[str, list[np.ndarray]] = {"states": [], "weights": [], "vectors": []}
        self.bad: list[tuple[int, int]] = []
        self.dense: list[np.ndarray | None] = [None] * len(plan)
        self.sparse: list = [None] * len(plan)
        self.vectors: list[np.ndarray | None] = [None] * len(plan)
        # SPLADE sparse from each span's states (inference-free queries use static weights)
        self.span_splade = bool(options.sparse and embedder.spec.splade is not None and not (
            options.kind == "query" and embedder._static_sparse is not None))

    def add(self, lo: int, hi: int, window_start: int, row) -> None:
        """Tokens ``[lo, hi)`` of the document, final, from the row of the window that
        starts at token ``window_start``."""
        p0 = self.head_len + lo - window_start
        p1 = p0 + hi - lo
        self.parts["states"].append(row.states[p0:p1])
        if row.weights is not None:
            self.parts["weights"].append(row.weights[p0:p1])
        if row.multivector is not None:  # its rows are the positions after CLS
            self.parts["vectors"].append(row.multivector[p0 - 1:p1 - 1])
        if not row.finite:
            self.bad.append((lo, hi))
        self.final = hi

    def emit(self) -> list[int]:
        """Pool every chunk whose tokens are all final (their indices are returned), then
        drop the states no chunk left needs."""
        done = []
        joined = {k: np.concatenate(v) if v else None for k, v in self.parts.items()}
        o, pooling = self.o, self.embedder.spec.pooling
        while self.next < len(self.order) and self.plan[self.order[self.next]].token_end \
                <= self.final:
            i = self.order[self.next]
            c = self.plan[i]
            a, b = c.token_start - self.buf_start, c.token_end - self.buf_start
            if o.dense:
                states = joined["states"]
                self.dense[i] = (states[b - 1] if pooling == "lasttoken"
                                 else states[a:b].mean(axis=0, dtype=np.float64)
                                 .astype(np.float32))
            if self.span_splade:
                with self.embedder._lock:
                    weights = self.embedder._runtime.span_sparse(joined["states"][a:b])
                self.sparse[i] = vocab_sparse(weights[None])[0]
            elif joined["weights"] is not None:
                self.sparse[i] = sparse_from_positions(
                    self.ids[c.token_start:c.token_end], joined["weights"][a:b],
                    self.embedder.tokenizer.special_ids)
            if joined["vectors"] is not None:
                self.vectors[i] = np.ascontiguousarray(joined["vectors"][a:b])
            done.append(i)
            self.next += 1
        keep_from = min(self.min_start[self.next], self.final)
        cut = keep_from - self.buf_start
        self.parts = {k: [] if v is None else [v[cut:]] for k, v in joined.items()}
        self.buf_start = keep_from
        return done

    def result(self, indices: list[int]) -> EmbedResult:
        """The result of the pooled chunks ``indices`` (rows in that order); their vectors
        are handed over, not kept."""
        o = self.o
        plan = [self.plan[i] for i in indices]
        bad = {r for r, c in enumerate(plan)
               if any(lo < c.token_end and c.token_start < hi for lo, hi in self.bad)}
        dense = None
        if o.dense:
            pooled = np.stack([self.dense[i] for i in indices])
            head = getattr(self.embedder._runtime, "pooled_head", None)
            if head is not None:  # the pipeline's Dense modules, as for a whole text
                with self.embedder._lock:
                    pooled = head(pooled)
            dense = finish_dense(pooled, o.normalize, o.dimensions)
            bad |= set(nonfinite_rows(dense))
        if bad:  # never return a non-finite vector
            raise NonFiniteOutputError(sorted(indices[r] for r in bad))
        sparse = None
        if o.sparse:
            bm25 = self.embedder._bm25
            static = self.embedder._static_sparse if o.kind == "query" else None
            sparse = (bm25.embed([c.text for c in plan], o.kind) if bm25
                      else static.embed([self.ids[c.token_start:c.token_end].tolist()
                                         for c in plan]) if static
                      else [self.sparse[i] for i in indices])
            if o.max_active_dims:
                sparse = [prune(v, top_k=o.max_active_dims) for v in sparse]
        vectors = [self.vectors[i] for i in indices] if o.multivector else None
        for i in indices:
            self.dense[i] = self.sparse[i] = self.vectors[i] = None
        return EmbedResult(model=self.embedder.model, dense=dense, sparse=sparse,
                           multivector=vectors, usage=Usage([c.tokens for c in plan]))
