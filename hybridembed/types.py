"""Values that cross layers: what an embedding call returns. No logic beyond access."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .sparse import SparseVector

Kind = Literal["document", "query"]
KINDS: tuple[str, ...] = ("document", "query")
TruncationSide = Literal["right", "left"]
TRUNCATION_SIDES: tuple[str, ...] = ("right", "left")
Overflow = Literal["error", "truncate", "chunk"]
OVERFLOWS: tuple[str, ...] = ("error", "truncate", "chunk")
ChunkPooling = Literal["mean", "max"]
CHUNK_POOLINGS: tuple[str, ...] = ("mean", "max")


@dataclass(frozen=True)
class EmbedOptions:
    """Everything besides the texts that decides an embedding answer — the one definition
    of the embed options. Built and validated only by :meth:`Embedder.request`; the result
    cache keys on it whole, and the batcher merges requests whose options are equal, so a
    new field can never be left out of either.

    ``kind`` picks query or document mode (BM25 weighting, the default prompt);
    ``prompt_name`` picks another of the model's prompts (``None``: the one named by
    ``kind``, if any); ``dimensions`` cuts dense vectors (Matryoshka);
    ``max_active_dims`` keeps only that many heaviest entries of each sparse vector
    (after the model's own ``max_active_dims``, if it has one).

    ``overflow`` says what happens to a text over the model's token limit: ``"error"``
    refuses it, ``"truncate"`` cuts it on ``truncation_side`` (``"left"`` keeps its end),
    ``"chunk"`` splits it into windows of the limit sharing ``chunk_overlap`` tokens,
    embeds each and pools them into one result (``chunk_pooling`` ``"mean"``, weighted
    by each window's tokens, or ``"max"`` for dense; learned sparse merged by max;
    multi-vector concatenated, each token once). :class:`Usage` reports what was done.
    """

    dense: bool = True
    sparse: bool = False
    multivector: bool = False
    kind: Kind = "document"
    prompt_name: str | None = None
    overflow: Overflow = "truncate"
    truncation_side: TruncationSide = "right"
    chunk_pooling: ChunkPooling = "mean"
    chunk_overlap: int = 0
    dimensions: int | None = None
    normalize: bool = True
    max_active_dims: int | None = None

    @property
    def truncate(self) -> bool:
        """Whether an over-long text is embedded at all (cut or chunked) rather than
        refused: the meaning of the older ``truncate`` flag."""
        return self.overflow != "error"


@dataclass(frozen=True)
class EmbedRequest:
    """A validated embedding request: the texts and their :class:`EmbedOptions`. Make one
    with :meth:`Embedder.request`, which checks every text and option once; whoever holds
    one (batcher, server) does not check again. An item of ``texts`` is a string, or a
    tuple of the model's token ids (special tokens not included) embedded exactly as sent.
    """

    texts: tuple[str | tuple[int, ...], ...]
    options: EmbedOptions

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Usage:
    """Token counts of a call, one entry per text, special tokens included.

    ``tokens``: tokens that went through the model for the text (after truncation; for a
    chunked text the sum of its windows, shared and repeated special tokens included).
    ``input_tokens``: the text's own length before anything was cut (defaults to
    ``tokens``). ``chunks``: windows the text was split into (1 unless chunked).
    ``dropped_tokens`` (derived) is what truncation cut off; nothing is cut without it
    saying so.
    """

    tokens: list[int] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)

    def __post_init__(self):
        tokens = list(self.tokens) if isinstance(self.tokens, list | tuple) else []
        if not self.input_tokens:
            object.__setattr__(self, "input_tokens", tokens)
        if not self.chunks:
            object.__setattr__(self, "chunks", [1] * len(tokens))

    @property
    def total_tokens(self) -> int:
        return int(sum(self.tokens))

    @property
    def dropped_tokens(self) -> list[int]:
        """Per text, the tokens truncation cut off (0 when nothing was cut)."""
        return [max(0, n - t) if c == 1 else 0
                for t, n, c in zip(self.tokens, self.input_tokens, self.chunks, strict=True)]

    @staticmethod
    def concat(usages) -> Usage:
        """One usage of consecutive parts' usages, rows in order."""
        usages = list(usages)
        return Usage([t for u in usages for t in u.tokens],
                     [t for u in usages for t in u.input_tokens],
                     [c for u in usages for c in u.chunks])

    def take(self, rows) -> Usage:
        """The usage of ``rows`` (indexes into this one; ``None``: an empty row)."""
        rows = list(rows)
        tokens, full, chunks = ([0 if r is None else values[r] for r in rows]
                                for values in (self.tokens, self.input_tokens, self.chunks))
        return Usage(tokens, full, chunks)

    def row(self, i: int) -> dict[str, int]:
        """Text ``i``'s accounting as the wire shows it."""
        return {"tokens": self.tokens[i], "input_tokens": self.input_tokens[i],
                "dropped_tokens": self.dropped_tokens[i], "chunks": self.chunks[i]}


@dataclass(frozen=True)
class Embedding:
    """Every requested representation of one text."""

    dense: np.ndarray | None
    sparse: SparseVector | None
    multivector: np.ndarray | None
    tokens: int
    input_tokens: int | None = None  # before any cut (None: same as tokens)
    chunks: int = 1


@dataclass(frozen=True)
class EmbedResult:
    """The result of one ``embed`` call, rows in the caller's order.

    ``dense`` is an ``(n, dim)`` float32 matrix, ``sparse`` a list of
    :class:`SparseVector`, ``multivector`` a list of ``(tokens, dim)`` float32 matrices;
    each is ``None`` when it was not requested.
    """

    model: str
    dense: np.ndarray | None
    sparse: list[SparseVector] | None
    multivector: list[np.ndarray] | None
    usage: Usage

    def __len__(self) -> int:
        return len(self.usage.tokens)

    def __getitem__(self, i: int) -> Embedding:
        return Embedding(
            dense=None if self.dense is None else self.dense[i],
            sparse=None if self.sparse is None else self.sparse[i],
            multivector=None if self.multivector is None else self.multivector[i],
            tokens=self.usage.tokens[i], input_tokens=self.usage.input_tokens[i],
            chunks=self.usage.chunks[i],
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# -- reranking ------------------------------------------------------------------------------

RerankMethod = Literal["cross-encoder", "maxsim", "combined"]
RERANK_METHODS: tuple[str, ...] = ("cross-encoder", "maxsim", "combined")


@dataclass(frozen=True)
class RerankOptions:
    """Everything besides the query and documents that decides a rerank answer — the one
    definition of the rerank options, built and validated only by a reranker service's
    ``request`` (:mod:`hybridembed.service.rerank`); the batcher merges requests whose
    options are equal.

    ``truncate`` false refuses a query (or query + document pair) over the model's limit
    instead of cutting it; ``method`` is how the model scores (``cross-encoder`` logits,
    ColBERT ``maxsim``, BGE-M3 ``combined``); ``weights`` are the (dense, sparse,
    multivector) weights of ``combined`` (``None`` for the other methods).
    """

    method: RerankMethod = "cross-encoder"
    truncate: bool = True
    weights: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class RerankRequest:
    """A validated rerank request: one query, the documents to score against it, and its
    :class:`RerankOptions`. Whoever holds one (batcher, server) does not check again."""

    query: str
    documents: tuple[str, ...]
    options: RerankOptions

    def __len__(self) -> int:
        return len(self.documents)


@dataclass(frozen=True)
class RerankResult:
    """The scores of one rerank request, in the order of its documents.

    ``scores`` is a float32 vector: raw logits for a cross-encoder, similarities for
    ``maxsim``/``combined``. ``usage.tokens`` holds, per document, the tokens the model
    read for it (query and document together for a cross-encoder, after truncation).
    """

    model: str
    method: RerankMethod
    scores: np.ndarray
    usage: Usage

    def __len__(self) -> int:
        return len(self.scores)
@dataclass(frozen=True)
class Chunk:
    """One chunk of a late-chunked document: its text, its characters ``[start, end)``
    in the document and its tokens ``[token_start, token_end)`` among the document's
    tokens (special tokens not counted)."""

    text: str
    start: int
    end: int
    token_start: int
    token_end: int

    @property
    def tokens(self) -> int:
        return self.token_end - self.token_start


@dataclass(frozen=True)
class LateChunks:
    """The result of :meth:`Embedder.embed_chunks`: row ``i`` of :attr:`result` embeds
    :attr:`chunks` ``[i]``, each vector pooled from token states computed with the whole
    document (or its macro-window) in view. ``result.usage.tokens`` counts each chunk's
    own tokens; :attr:`tokens` what went through the model (every window, with its
    special tokens, prompt and overlap); :attr:`windows` how many windows that was."""

    chunks: list[Chunk]
    result: EmbedResult
    document_tokens: int
    windows: int
    tokens: int

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        return iter(zip(self.chunks, self.result, strict=True))
