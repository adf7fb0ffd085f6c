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


@dataclass(frozen=True)
class EmbedOptions:
    """Everything besides the texts that decides an embedding answer — the one definition
    of the embed options. Built and validated only by :meth:`Embedder.request`; the result
    cache keys on it whole, and the batcher merges requests whose options are equal, so a
    new field can never be left out of either.

    ``kind`` picks query or document mode (BM25 weighting, the default prompt);
    ``prompt_name`` picks another of the model's prompts (``None``: the one named by
    ``kind``, if any); ``truncate`` false refuses over-long texts; ``truncation_side``
    ``"left"`` keeps a text's end; ``dimensions`` cuts dense vectors (Matryoshka).
    """

    dense: bool = True
    sparse: bool = False
    multivector: bool = False
    kind: Kind = "document"
    prompt_name: str | None = None
    truncate: bool = True
    truncation_side: TruncationSide = "right"
    dimensions: int | None = None
    normalize: bool = True


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
    """Token counts of a call: per text (after truncation, special tokens included)."""

    tokens: list[int] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return int(sum(self.tokens))


@dataclass(frozen=True)
class Embedding:
    """Every requested representation of one text."""

    dense: np.ndarray | None
    sparse: SparseVector | None
    multivector: np.ndarray | None
    tokens: int


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
            tokens=self.usage.tokens[i],
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))
