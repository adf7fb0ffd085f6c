"""Reranking: a cross-encoder that reads each (query, text) pair together, and two
rerankers over scores already computed from embeddings (ColBERT MaxSim and BGE-M3's
weighted combination of dense, sparse and multivector scores).

Every reranker returns ``[(index, score), ...]`` best first, where ``index`` points into
the caller's list of candidates; ties keep the candidates' original order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .errors import (
    InputTooLongError,
    InvalidInputError,
    InvalidOptionError,
    ModelNotFoundError,
    OutOfMemoryError,
    UnsupportedModelError,
)
from .runtimes.openmp import torch_call
from .scores import BGE_M3_WEIGHTS, combined, maxsim
from .textcheck import check_text, check_texts

log = logging.getLogger(__name__)

# Model types whose position ids start after ``padding_idx`` (so fewer usable positions).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm_roberta", "camembert")


def _ranked(scores: Sequence[float] | np.ndarray, top_k: int | None) -> list[tuple[int, float]]:
    """``(index, score)`` best first; equal scores keep their original order."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int | np.integer)
                              or top_k < 0):
        raise InvalidOptionError(f"top_k must be None or an integer >= 0, got {top_k!r}", "top_k")
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-values, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [(int(i), float(values[i])) for i in order]


def _check_texts(query: Any, texts: Any) -> list[str]:
    check_text(query, what="query")
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InvalidInputError("texts must be a list of strings, got "
                                f"{type(texts).__name__}")
    return check_texts(list(texts))


class CrossEncoderReranker:
    """Scores (query, text) pairs with a sequence-classification checkpoint such as
    ``bge-reranker-base``/``bge-reranker-large`` (an alias, a local folder or a Hugging
    Face id in the local cache).

    :meth:`score` returns the model's **raw logits** (no sigmoid): the single logit when the
    head has one label, else the logit of the last label. Higher means more relevant; apply
    ``1 / (1 + exp(-s))`` yourself for a 0..1 value on single-logit models.

    Pairs are tokenized once (truncated to ``max_length``, or the model's own limit if
    lower), sorted longest first, run in batches of at most ``batch_size`` pairs (and at
    most ``max_batch_tokens`` padded tokens, when given) padded to their own longest pair,
    and the scores are put back in the caller's order. :meth:`score_pairs` scores pairs of
    different queries in one pass (the server merges concurrent requests this way).

    ``prepacked_weights=True`` runs the model's linear layers, on a CPU in fp32, on
    weights laid out once for oneDNN (:mod:`hybridembed.runtimes.prepacked`; off by
    default: not faster on the machines measured).

    Out of memory during a batch halves the batch size (for the rest of the call) and
    retries, down to one pair. If a single pair still does not fit and ``fallback`` names
    another reranker, a warning is logged, the fallback replaces this model (the first one is
    released, for this and later calls) and the whole call is scored again with it, so all
    scores of a call come from one model. Without a fallback
    :class:`~hybridembed.errors.OutOfMemoryError` is raised.
    """

    def __init__(self, model: str, *, device: str = "auto", dtype: str | None = None,
                 batch_size: int = 32, max_length: int = 512, fallback: str | None = None,
                 max_batch_tokens: int | None = None, prepacked_weights: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidOptionError(f"batch_size must be an integer >= 1, got {batch_size!r}",
                                     "batch_size")
        if max_batch_tokens is not None and (isinstance(max_batch_tokens, bool) or not
                                             isinstance(max_batch_tokens, int)
                                             or max_batch_tokens < 1):
            raise InvalidOptionError("max_batch_tokens must be None or an integer >= 1, got "
                                     f"{max_batch_tokens!r}", "max_batch_tokens")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4:
            raise InvalidOptionError(f"max_length must be an integer >= 4, got {max_length!r}",
                                     "max_length")
        from .runtimes.torch_runtime import pick_device, pick_dtype

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.requested_max_length = max_length
        self.fallback = fallback
        self.prepacked_weights = prepacked_weights
        self._load(model)

    # -- loading --------------------------------------------------------------------------

    def _load(self, name: str) -> None:
        import inspect

        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .runtimes.prepacked import prepack_linears
        from .runtimes.torch_runtime import DTYPES

        if not isinstance(name, str) or not name:
            raise ModelNotFoundError(f"model must be a non-empty string, got {name!r}")
        folder, hf_id = registry.locate(name)
        hf_logging.disable_progress_bar()
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # missing weights are reported below, our way
        try:
            kwargs = {"dtype": DTYPES[self.dtype], "output_loading_info": True}
            try:
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    folder, attn_implementation="sdpa", **kwargs)
            except (ValueError, ImportError):  # this architecture has no SDPA attention
                model, info = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as exc:
            raise UnsupportedModelError(f"cannot load {name!r} ({folder}) as a cross-encoder: "
                                        f"{type(exc).__name__}: {exc}") from exc
        finally:
            hf_logging.set_verbosity(level)

        prefix = getattr(model, "base_model_prefix", "") + "."
        missing = list(info.get("missing_keys", ()))
        head = sorted(k for k in missing if not k.startswith(prefix))
        if head:
            raise UnsupportedModelError(
                f"{name!r} ({folder}) is not a cross-encoder: its checkpoint has no "
                f"classification head ({', '.join(head[:3])} missing); rerankers such as "
                "bge-reranker-base are sequence-classification checkpoints")
        if missing:
            log.warning("%s: %d weights missing from the checkpoint and randomly initialised "
                        "(first: %s); scores will be meaningless", name, len(missing),
                        ", ".join(sorted(missing)[:3]))

        config = model.config
        positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        if positions and getattr(config, "model_type", "") in _OFFSET_POSITIONS:
            pad = getattr(config, "pad_token_id", None)
            positions -= int(1 if pad is None else pad) + 1
        limits = [self.requested_max_length]
        if positions > 0:
            limits.append(positions)
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)

        if tokenizer.pad_token_id is None:
            raise UnsupportedModelError(f"{name!r} ({folder}) has a tokenizer without a "
                                        "padding token; cannot batch pairs")
        accepted = set(inspect.signature(model.forward).parameters)
        self._input_names = [k for k in tokenizer.model_input_names if k in accepted]
        if "input_ids" not in self._input_names or "attention_mask" not in self._input_names:
            raise UnsupportedModelError(f"{name!r} ({folder}) does not take input_ids and "
                                        "attention_mask")
        self._torch = torch
        self.name = name
        self.path = Path(folder)
        self.hf_id = hf_id
        self.max_length = min(limits)
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        if self.prepacked_weights:  # fp32 CPU weights laid out once (runtimes/prepacked.py)
            prepack_linears(self.model)
        self.num_labels = int(getattr(config, "num_labels", 1) or 1)

    def _switch_to_fallback(self, index: int, tokens: int) -> None:
        fallback, self.fallback = self.fallback, None
        log.warning("%s ran out of memory; falling back to %s (text #%d, %d tokens, did not "
                    "fit on %s even alone)", self.name, fallback, index, tokens, self.device)
        self.model = None  # release the first model before loading the second
        self._empty_cache()
        self._load(fallback)

    def _empty_cache(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    # -- scoring --------------------------------------------------------------------------

    def _forward(self, rows: list[int], enc: dict[str, list[list[int]]]) -> np.ndarray:
        torch = self._torch
        longest = max(len(enc["input_ids"][i]) for i in rows)
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0,
                      "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0)}
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        inputs = {}
        for key in self._input_names:
            block = np.full((len(rows), longest), pad_values.get(key, 0), dtype=np.int64)
            for r, i in enumerate(rows):
                seq = enc[key][i]
                if left:
                    block[r, longest - len(seq):] = seq
                else:
                    block[r, :len(seq)] = seq
            inputs[key] = torch.from_numpy(block).to(self.device)
        if self.device == "cpu":  # one OpenMP team per process (see runtimes/openmp.py)
            return torch_call(torch.get_num_threads(), self._logits, inputs)
        return self._logits(inputs)

    def _logits(self, inputs: dict) -> np.ndarray:
        with self._torch.inference_mode():
            logits = self.model(**inputs).logits
            column = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1]
            return column.float().cpu().numpy()

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        """Relevance of each text to ``query``: float32 raw logits, in the order of
        ``texts`` (see the class docs)."""
        texts = _check_texts(query, texts)
        return self.score_pairs([query] * len(texts), texts)[0]

    def pair_lengths(self, queries: list[str], texts: list[str]) -> list[int]:
        """Tokens of each ``(queries[i], texts[i])`` pair before truncation, special tokens
        included (the inputs are not checked here)."""
        if not texts:
            return []
        enc = self.tokenizer(list(queries), list(texts), truncation=False, padding=False,
                             verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def score_pairs(self, queries: list[str], texts: list[str], *, truncate: bool = True
                    ) -> tuple[np.ndarray, list[int]]:
        """Raw logits of each ``(queries[i], texts[i])`` pair, float32 in the given order,
        and the tokens each pair took (after truncation). Pairs are packed longest first
        into batches of at most :attr:`batch_size` pairs and, if :attr:`max_batch_tokens`
        is set, at most that many padded tokens. With ``truncate=False`` a pair over
        :attr:`max_length` raises :class:`InputTooLongError` (``field="documents"``)
        before any forward pass. Inputs must be checked strings (see :meth:`score`)."""
        from .runtimes.torch_runtime import _is_oom

        if len(queries) != len(texts):
            raise InvalidInputError(f"{len(queries)} queries for {len(texts)} texts")
        if not texts:
            return np.zeros(0, dtype=np.float32), []
        enc = self.tokenizer(list(queries), list(texts), truncation=truncate,
                             max_length=self.max_length if truncate else None, padding=False,
                             verbose=False)
        enc = {k: enc[k] for k in self._input_names}
        lengths = [len(ids) for ids in enc["input_ids"]]
        if not truncate:
            too_long = {i: n for i, n in enumerate(lengths) if n > self.max_length}
            if too_long:
                raise InputTooLongError(too_long, self.max_length, field="documents")
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first, stable
        scores = np.empty(len(texts), dtype=np.float32)
        size, pos = self.batch_size, 0
        while pos < len(order):
            fit = size
            if self.max_batch_tokens:  # rows are sorted: the first is the longest
                fit = min(size, max(1, self.max_batch_tokens // lengths[order[pos]]))
            rows = order[pos:pos + fit]
            failed = False
            try:
                scores[rows] = self._forward(rows, enc)
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                failed = True
            if not failed:
                pos += len(rows)
                continue
            self._empty_cache()
            if len(rows) > 1:
                size = len(rows) // 2
                log.warning("%s: out of memory on a batch of %d pairs x %d tokens; retrying "
                            "with batches of %d", self.name, len(rows), lengths[rows[0]], size)
                continue
            index, tokens = rows[0], lengths[rows[0]]
            if self.fallback is None:
                raise OutOfMemoryError(index, tokens, self.device)
            self._switch_to_fallback(index, tokens)
            return self.score_pairs(queries, texts, truncate=truncate)
        return scores, lengths

    def rerank(self, query: str, texts: list[str],
               top_k: int | None = None) -> list[tuple[int, float]]:
        """``[(index into texts, score), ...]`` best first (ties keep input order), at
        most ``top_k`` of them."""
        _ranked([], top_k)  # reject a bad top_k before running the model
        return _ranked(self.score(query, texts), top_k)

    def __repr__(self) -> str:
        return (f"CrossEncoderReranker({self.name!r}, device={self.device!r}, "
                f"dtype={self.dtype!r}, batch_size={self.batch_size}, "
                f"max_length={self.max_length})")


def multivector_rerank(query_mv: np.ndarray, doc_mvs: Sequence[np.ndarray],
                       top_k: int | None = None) -> list[tuple[int, float]]:
    """Rank documents by ColBERT MaxSim (:func:`hybridembed.scores.maxsim`) between the
    query's token vectors ``(q, d)`` and each document's ``(n_i, d)``."""
    query = np.asarray(query_mv, dtype=np.float32)
    if query.ndim != 2 and query.size:
        raise InvalidInputError(f"query_mv must be a 2-D array (tokens, dim), got shape "
                                f"{query.shape}")
    scores = []
    for i, doc in enumerate(doc_mvs):
        doc = np.asarray(doc, dtype=np.float32)
        if doc.size and (doc.ndim != 2 or (query.size and doc.shape[1] != query.shape[1])):
            raise InvalidInputError(f"doc_mvs[{i}] has shape {doc.shape}; expected "
                                    f"(tokens, {query.shape[-1] if query.size else 'dim'})",
                                    index=i)
        scores.append(maxsim(query, doc))
    return _ranked(scores, top_k)


def bge_m3_rerank(dense_scores: Sequence[float | None] | None,
                  sparse_scores: Sequence[float | None] | None,
                  multivector_scores: Sequence[float | None] | None,
                  weights: Sequence[float] = BGE_M3_WEIGHTS,
                  top_k: int | None = None) -> list[tuple[int, float]]:
    """Rank candidates by BGE-M3's weighted score ``sum(w_i * s_i) / sum(w_i)`` over the
    scores present (:func:`hybridembed.scores.combined`). Each argument holds one score per
    candidate, in the same order; a whole kind may be ``None`` (not computed), as may a
    single candidate's entry."""
    given = [s for s in (dense_scores, sparse_scores, multivector_scores) if s is not None]
    if not given:
        raise InvalidOptionError("give at least one of dense_scores, sparse_scores, "
                                 "multivector_scores", "scores")
    n = len(given[0])
    if any(len(s) != n for s in given):
        raise InvalidOptionError("dense_scores, sparse_scores and multivector_scores must have "
                                 "one score per candidate each; got lengths "
                                 f"{[len(s) for s in given]}", "scores")
    columns = [s if s is not None else [None] * n
               for s in (dense_scores, sparse_scores, multivector_scores)]
    scores = []
    for i, (d, s, m) in enumerate(zip(*columns, strict=True)):
        try:
            scores.append(combined(d, s, m, weights=weights))
        except ValueError as exc:
            raise InvalidOptionError(f"candidate #{i}: {exc}", "weights") from exc
    return _ranked(scores, top_k)
