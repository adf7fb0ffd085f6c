"""Reranking as a service: one interface over every kind of reranker, the one place where a
rerank call's query, documents and options are checked (:class:`RerankRequest`), and a
``run_many`` that scores several requests in one pass for the dynamic batcher.

Two services share the interface:

- :class:`CrossEncoderRerankService` wraps the library's
  :class:`~hybridembed.rerank.CrossEncoderReranker` (sequence-classification checkpoints,
  BERT and XLM-RoBERTa families; raw logits; out-of-memory halving and fallback);
- :class:`EmbeddingRerankService` reranks with an :class:`Embedder` whose model has a
  ColBERT head: ColBERT ``maxsim``, or BGE-M3's ``combined`` dense + sparse + multivector
  score when the model also has a learned sparse head — so one BGE-M3 can rerank without a
  second model. Scores equal :mod:`hybridembed.scores` on the model's own embeddings.

Every service answers ``request(query, documents, ...)`` → :class:`RerankRequest`,
``count_tokens(request)`` (admission and packing; refuses an over-long query or pair when
truncation is off, before any work), ``run(request)`` → :class:`RerankResult` and
``rerank(query, documents, top_k)`` → ``[(index, score), ...]`` best first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InputTooLongError, InvalidInputError, InvalidOptionError, UnsupportedModelError
from ..rerank import CrossEncoderReranker, _ranked
from ..scores import BGE_M3_WEIGHTS, combined, cosine, lexical, maxsim
from ..textcheck import check_text, check_texts
from ..types import RerankOptions, RerankRequest, RerankResult, Usage


def build_rerank_request(query, documents, *, method: str, truncate: bool = True,
                         weights: Sequence[float] | None = None) -> RerankRequest:
    """Check the query, every document and the options, and return the request value.

    Raises :class:`InvalidInputError` (``field`` ``query`` or ``documents``, naming the
    document's index) or :class:`InvalidOptionError` naming the option."""
    try:
        check_text(query, what="query")
    except InvalidInputError as exc:
        raise InvalidInputError(str(exc), None, "query") from None
    if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
        raise InvalidInputError("documents must be a list of strings, got "
                                f"{type(documents).__name__}", None, "documents")
    try:
        docs = check_texts(list(documents), what="document")
    except InvalidInputError as exc:
        raise InvalidInputError(str(exc), exc.index, "documents") from None
    if not isinstance(truncate, bool):
        raise InvalidOptionError(f"truncate must be true or false, got {truncate!r}", "truncate")
    if method != "combined":
        if weights is not None:
            raise InvalidOptionError(f"weights apply to the combined method only; this model "
                                     f"reranks by {method}", "weights")
        checked = None
    else:
        raw = BGE_M3_WEIGHTS if weights is None else weights
        if (isinstance(raw, str | bytes) or not isinstance(raw, Sequence) or len(raw) != 3
                or any(isinstance(w, bool) or not isinstance(w, int | float)
                       or not math.isfinite(w) or w < 0 for w in raw) or sum(raw) == 0):
            raise InvalidOptionError("weights must be three finite numbers >= 0, not all 0 "
                                     f"(dense, sparse, multivector), got {weights!r}", "weights")
        checked = tuple(float(w) for w in raw)
    return RerankRequest(query, tuple(docs),
                         RerankOptions(method=method, truncate=truncate, weights=checked))


class _RerankService:
    """What every reranker service shares: request building, per-request fallback of a
    merged batch, and ranking. Subclasses set :attr:`method`, :attr:`model`,
    :attr:`max_length`, :attr:`max_batch_tokens` and implement ``_lengths`` and
    ``_score_many``."""

    method: str
    model: str
    max_length: int
    max_batch_tokens: int

    def request(self, query: str, documents: Sequence[str], *, truncate: bool = True,
                weights: Sequence[float] | None = None) -> RerankRequest:
        """Check the inputs once and return the :class:`RerankRequest` that :meth:`run`
        answers (see :func:`build_rerank_request`)."""
        return build_rerank_request(query, documents, method=self.method, truncate=truncate,
                                    weights=weights)

    def count_tokens(self, request: RerankRequest) -> int:
        """Tokens the request will occupy (each pair at most :attr:`max_length`), for
        admission and batch packing. With truncation off, an over-long query (``field``
        ``query``) or query + document pair (``documents``) raises
        :class:`InputTooLongError` here, before any forward pass."""
        query_tokens, pairs = self._lengths(request)
        if not request.options.truncate:
            if query_tokens > self.max_length:
                raise InputTooLongError({0: query_tokens}, self.max_length, field="query")
            too_long = {i: n for i, n in enumerate(pairs) if n > self.max_length}
            if too_long:
                raise InputTooLongError(too_long, self.max_length, field="documents")
        return sum(min(n, self.max_length) for n in pairs)

    def run(self, request: RerankRequest) -> RerankResult:
        """Score one request made by :meth:`request`."""
        if not request.options.truncate:
            self.count_tokens(request)  # refuse over-long inputs, naming the field
        return self._score_many([request])[0]

    def run_many(self, requests: Sequence[RerankRequest]) -> list[RerankResult | Exception]:
        """Score several requests (equal options) in one pass; each gets its result or its
        own error: if the merged pass fails, each request is run alone, so one client's bad
        input never fails the others merged with it."""
        if len(requests) > 1:
            try:
                return list(self._score_many(list(requests)))
            except Exception:  # noqa: BLE001 - retried one by one below, errors kept
                pass
        out: list[RerankResult | Exception] = []
        for request in requests:
            try:
                out.append(self.run(request))
            except Exception as exc:  # noqa: BLE001 - handed to that request's caller
                out.append(exc)
        return out

    def rerank(self, query: str, documents: Sequence[str], top_k: int | None = None, *,
               truncate: bool = True, weights: Sequence[float] | None = None
               ) -> list[tuple[int, float]]:
        """``[(index into documents, score), ...]`` best first (ties keep input order), at
        most ``top_k`` of them."""
        _ranked([], top_k)  # reject a bad top_k before any work
        result = self.run(self.request(query, documents, truncate=truncate, weights=weights))
        return _ranked(result.scores, top_k)

    def _lengths(self, request: RerankRequest) -> tuple[int, list[int]]:
        raise NotImplementedError

    def _score_many(self, requests: list[RerankRequest]) -> list[RerankResult]:
        raise NotImplementedError


class CrossEncoderRerankService(_RerankService):
    """Reranking with a cross-encoder: raw logits of each (query, document) pair read
    together. Pairs of every merged request run in one pass packed by length."""

    method = "cross-encoder"

    def __init__(self, reranker: CrossEncoderReranker):
        self.reranker = reranker

    @property
    def model(self) -> str:
        return self.reranker.name

    @property
    def max_length(self) -> int:
        return self.reranker.max_length

    @property
    def max_batch_tokens(self) -> int:
        return self.reranker.max_batch_tokens or self.reranker.batch_size * self.max_length

    @property
    def device(self) -> str:
        return self.reranker.device

    @property
    def dtype(self) -> str:
        return self.reranker.dtype

    def _lengths(self, request: RerankRequest) -> tuple[int, list[int]]:
        tok = self.reranker.tokenizer
        query_tokens = len(tok(request.query, truncation=False, verbose=False)["input_ids"])
        docs = list(request.documents)
        return query_tokens, self.reranker.pair_lengths([request.query] * len(docs), docs)

    def _score_many(self, requests: list[RerankRequest]) -> list[RerankResult]:
        queries = [r.query for r in requests for _ in r.documents]
        docs = [d for r in requests for d in r.documents]
        scores, lengths = self.reranker.score_pairs(queries, docs,
                                                    truncate=requests[0].options.truncate)
        out, start = [], 0
        for r in requests:
            stop = start + len(r)
            out.append(RerankResult(self.model, "cross-encoder", scores[start:stop].copy(),
                                    Usage(lengths[start:stop])))
            start = stop
        return out


class EmbeddingRerankService(_RerankService):
    """Reranking with an embedding model that has a ColBERT head: ``maxsim`` between the
    query's and each document's token vectors, or (``combined``, the default when the model
    also has a learned sparse head, as BGE-M3) BGE-M3's weighted dense + sparse +
    multivector score. Queries are embedded in query mode, documents in document mode;
    the embedder's cache serves documents seen before.

    Raises :class:`UnsupportedModelError` for a model without a ColBERT head (its token
    vectors were never trained for late interaction) and for ``combined`` without a
    learned sparse head."""

    def __init__(self, embedder, method: str | None = None):
        spec = embedder.spec
        if spec.colbert_head is None:
            raise UnsupportedModelError(
                f"{embedder.model!r} is an embedding model without a ColBERT head; it cannot "
                "rerank (serve a cross-encoder such as bge-reranker-base, or a multi-vector "
                "model such as bge-m3)")
        if method is None:
            method = "combined" if spec.has_learned_sparse else "maxsim"
        if method not in ("maxsim", "combined"):
            raise InvalidOptionError(f"an embedding model reranks by maxsim or combined, got "
                                     f"{method!r}", "method")
        if method == "combined" and not spec.has_learned_sparse:
            raise UnsupportedModelError(f"{embedder.model!r} has no learned sparse head; it "
                                        "reranks by maxsim only")
        self.embedder = embedder
        self.method = method

    @property
    def model(self) -> str:
        return self.embedder.model

    @property
    def max_length(self) -> int:
        return self.embedder.max_length

    @property
    def max_batch_tokens(self) -> int:
        return self.embedder.max_batch_tokens

    @property
    def device(self) -> str:
        return self.embedder.device

    @property
    def dtype(self) -> str:
        return self.embedder.dtype

    def _lengths(self, request: RerankRequest) -> tuple[int, list[int]]:
        ids = self.embedder.tokenize([request.query, *request.documents], truncate=False)
        query_tokens = len(ids[0])
        # A document is read on its own: a pair is too long only if the document is.
        return query_tokens, [len(d) for d in ids[1:]]

    def _embed(self, texts: list[str], kind: str, truncate: bool):
        combined_method = self.method == "combined"
        return self.embedder.run(self.embedder.request(
            texts, dense=combined_method, sparse=combined_method, multivector=True, kind=kind,
            truncate=truncate))

    def _score_many(self, requests: list[RerankRequest]) -> list[RerankResult]:
        truncate = requests[0].options.truncate
        queries = list(dict.fromkeys(r.query for r in requests))
        docs = list(dict.fromkeys(d for r in requests for d in r.documents))
        q = self._embed(queries, "query", truncate)
        d = self._embed(docs, "document", truncate) if docs else None
        q_row = {t: i for i, t in enumerate(queries)}
        d_row = {t: i for i, t in enumerate(docs)}
        out = []
        for r in requests:
            qi = q_row[r.query]
            scores, tokens = [], []
            for doc in r.documents:
                di = d_row[doc]
                mv = maxsim(q.multivector[qi], d.multivector[di])
                if self.method == "combined":
                    mv = combined(cosine(q.dense[qi], d.dense[di]),
                                  lexical(q.sparse[qi], d.sparse[di]), mv,
                                  weights=r.options.weights)
                scores.append(mv)
                tokens.append(q.usage.tokens[qi] + d.usage.tokens[di])
            out.append(RerankResult(self.model, self.method, np.asarray(scores, np.float32),
                                    Usage(tokens)))
        return out


def rerank_service(model, method: str | None = None) -> _RerankService:
    """The service for a loaded model: a :class:`CrossEncoderReranker` or an
    :class:`Embedder` (see :class:`EmbeddingRerankService` for which can rerank)."""
    if isinstance(model, _RerankService):
        return model
    if isinstance(model, CrossEncoderReranker):
        if method not in (None, "cross-encoder"):
            raise InvalidOptionError(f"a cross-encoder reranks by its own logits, not "
                                     f"{method!r}", "method")
        return CrossEncoderRerankService(model)
    return EmbeddingRerankService(model, method)


def relevance_scores(result: RerankResult, raw: bool = False) -> np.ndarray:
    """The scores a rerank protocol returns: a cross-encoder's logits through a sigmoid
    (0..1) unless ``raw``; ``maxsim``/``combined`` similarities as computed."""
    if raw or result.method != "cross-encoder":
        return result.scores
    return (1.0 / (1.0 + np.exp(-result.scores.astype(np.float64)))).astype(np.float32)
