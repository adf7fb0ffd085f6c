"""The :class:`Embedder`: validate a call, serve what the cache holds, encode the rest in
token-budget batches, and assemble dense, sparse and multi-vector results in the
caller's order. Safe to call from several threads."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import Encoder, Outputs, TextTokenizer
from ..engine.bm25 import Bm25Sparse
from ..engine.heads import StaticSparse, finish_dense
from ..errors import InputTooLongError, InvalidInputError, InvalidOptionError
from ..registry import DEFAULT_MODEL, ModelSpec, resolve
from ..runtimes import load_runtime
from ..sparse import SparseVector
from ..types import KINDS, Embedding, EmbedResult, Usage
from .cache import EmbeddingCache, text_key

# Padded tokens per forward pass when the caller sets none, by device type. On CPUs
# small batches stay in cache: three `hybridembed bench` runs (600 and 1000 short texts)
# on the 2-core test machine (2026-11-24) put 1024 ahead of 2048 on average (torch 1.17x
# vs 1.13x sentence-transformers, ONNX 1.32x vs 1.23x; single runs swing ±10% either
# way) and level on long texts; 16384 was 1.4x slower than 2048 (docs/BENCHMARKS.md).
DEFAULT_BATCH_TOKENS = {"cpu": 1_024, "cuda": 131_072, "mps": 32_768}
# Texts in the first tokenisation chunk; chunks then double up to a sixteenth of the batch
# budget (8,192 texts at the CUDA default, about three batches of ~50-token texts). With
# the pipeline on, a call with more texts tokenises the next chunk while one is encoded.
# (A quarter of the budget in every chunk, as first written, put 20,000 texts in one
# chunk, so nothing overlapped: measured on an H100, tokenising was a fifth of the call.)
TOKENIZE_CHUNK_TEXTS = 1_024


@dataclass(frozen=True)
class _Entry:
    """What the cache keeps for one text under one set of options."""

    dense: np.ndarray | None
    sparse: SparseVector | None
    multivector: np.ndarray | None
    tokens: int


class Embedder:
    """Embeds texts in process with one forward pass for every representation.

    >>> emb = Embedder("minilm")
    >>> result = emb.embed(["a text", "another"], sparse=True)
    >>> result.dense.shape, result.sparse[0]
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto",
                 dtype: str | None = None, runtime: str = "torch",
                 max_batch_tokens: int | None = None, max_batch_size: int | None = None,
                 cache_size: int = 10_000, threads: int | None = None,
                 bm25: dict[str, Any] | None = None, warmup: bool = True,
                 runtime_options: dict[str, Any] | None = None, pipeline: bool | None = None):
        self.spec: ModelSpec = resolve(model)
        self.tokenizer = TextTokenizer(self.spec.path, self.spec.max_length)
        self._runtime = load_runtime(runtime, self.spec, device=device, dtype=dtype,
                                     threads=threads, **(runtime_options or {}))
        self.runtime_name = runtime
        if max_batch_tokens is None:
            max_batch_tokens = DEFAULT_BATCH_TOKENS.get(self.device.split(":")[0], 16_384)
        if max_batch_tokens < 1:
            raise InvalidOptionError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}",
                                     "max_batch_tokens")
        if pipeline is not None and not isinstance(pipeline, bool):
            raise InvalidOptionError(f"pipeline must be True, False or None (on for "
                                     f"accelerators), got {pipeline!r}", "pipeline")
        # Overlap tokenising and finishing with the forward pass where the forward pass
        # leaves the CPU free (an accelerator); on a CPU it already uses every core.
        self.pipeline = not self.device.startswith("cpu") if pipeline is None else pipeline
        self._encoder = Encoder(self._runtime, self.tokenizer.pad_id, self.tokenizer.special_ids,
                                max_batch_tokens, max_batch_size, overlap=self.pipeline)
        self._bm25 = None if self.spec.has_learned_sparse else Bm25Sparse(**(bm25 or {}))
        self._static_sparse = (StaticSparse(self.spec.static_sparse, self.tokenizer.special_ids,
                                            self.spec.max_active_dims)
                               if self.spec.static_sparse else None)  # inference-free queries
        self._cache = EmbeddingCache(cache_size)
        self._lock = threading.Lock()
        self._model_key = (str(self.spec.path), runtime, self.dtype,
                           tuple(sorted((self._bm25.options if self._bm25 else {}).items())))
        self._calls = 0
        if warmup:
            self._warm_up()

    # -- description ----------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def device(self) -> str:
        return self._runtime.device

    @property
    def dtype(self) -> str:
        return self._runtime.dtype

    @property
    def max_length(self) -> int:
        return self.spec.max_length

    @property
    def max_batch_tokens(self) -> int:
        return self._encoder.max_batch_tokens

    def stats(self) -> dict[str, Any]:
        enc = self._encoder.stats
        return {
            "model": self.model, "device": self.device, "dtype": self.dtype,
            "calls": self._calls, "cache": self._cache.stats(),
            "encoder": {"batches": enc.batches, "texts": enc.texts, "tokens": enc.tokens,
                        "padded_tokens": enc.padded_tokens, "oom_splits": enc.oom_splits,
                        "forward_seconds": round(enc.forward_seconds, 6)},
        }

    # -- embedding ------------------------------------------------------------------------
    def embed(self, texts: Sequence[str] | str, *, dense: bool = True, sparse: bool = False,
              multivector: bool = False, kind: str = "document", truncate: bool = True,
              dimensions: int | None = None, normalize: bool = True) -> EmbedResult:
        """Embed ``texts``; each output is optional. ``kind`` picks query or document mode
        (prompts, BM25 weighting). With ``truncate=False`` a text over the model's limit
        raises :class:`InputTooLongError` carrying the other texts' results."""
        texts = _check_texts(texts)
        self.check_options(dense, sparse, multivector, kind, dimensions)
        self._calls += 1
        options = (self._model_key, dense, sparse, multivector, kind, dimensions, normalize)
        unique = list(dict.fromkeys(texts))
        entries: dict[str, _Entry] = {}
        missing: list[str] = []
        for text in unique:
            hit = self._cache.get((options, text_key(text)))
            if hit is None:
                missing.append(text)
            else:
                entries[text] = hit
        too_long: dict[str, int] = {}
        if missing:
            first_index = {}
            for i, t in enumerate(texts):
                first_index.setdefault(t, i)
            computed, too_long = self._compute(missing, [first_index[t] for t in missing], dense,
                                               sparse, multivector, kind, truncate, dimensions,
                                               normalize)
            for text, entry in computed.items():
                self._cache.put((options, text_key(text)), entry)
            entries.update(computed)
        if too_long:
            ok = [i for i, t in enumerate(texts) if t not in too_long]
            partial = self._assemble([texts[i] for i in ok], entries, dense, sparse, multivector,
                                     dimensions)
            raise InputTooLongError({i: too_long[t] for i, t in enumerate(texts) if t in too_long},
                                    self.max_length, partial, ok)
        return self._assemble(texts, entries, dense, sparse, multivector, dimensions)

    def embed_query(self, text: str, **options) -> Embedding:
        """One query text, embedded in query mode; returns its :class:`Embedding`."""
        return self.embed([text], kind="query", **options)[0]

    def tokenize(self, texts: Sequence[str] | str, truncate: bool = True) -> list[list[int]]:
        texts = _check_texts(texts)
        return (self.tokenizer.encode_truncated if truncate else self.tokenizer.encode)(texts)

    def sparse_tokens(self, vector: SparseVector, text: str | None = None) -> dict[str, float]:
        """``{token: weight}`` of a sparse vector, heaviest first. BM25 indices are hashes,
        so their names are recovered from ``text``."""
        if self._bm25 is None:
            return vector.to_tokens(self.tokenizer.id_to_token)
        names = self._bm25.token_names(text or "")
        return vector.to_tokens(lambda i: names.get(i, f"#{i}"))

    # -- internals ------------------------------------------------------------------------
    def check_options(self, dense, sparse, multivector, kind, dimensions) -> None:
        """Raise :class:`InvalidOptionError` for options ``embed`` would refuse."""
        for name, value in (("dense", dense), ("sparse", sparse), ("multivector", multivector)):
            if not isinstance(value, bool):
                raise InvalidOptionError(f"{name} must be True or False, got {value!r}", name)
        if not (dense or sparse or multivector):
            raise InvalidOptionError("ask for at least one output: dense, sparse or multivector",
                                     "outputs")
        if kind not in KINDS:
            raise InvalidOptionError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}", "kind")
        if dimensions is not None and (isinstance(dimensions, bool)
                                       or not isinstance(dimensions, int)
                                       or not 1 <= dimensions <= self.dim):
            raise InvalidOptionError(f"dimensions must be a whole number from 1 to {self.dim} "
                                     f"(this model's size), got {dimensions!r}", "dimensions")

    def _compute(self, texts: list[str], origin: list[int], dense, sparse, multivector, kind,
                 truncate, dimensions, normalize) -> tuple[dict[str, _Entry], dict[str, int]]:
        prompt = self.spec.prompts.get(kind, "")
        prompted = [prompt + t for t in texts] if prompt else texts
        static = self._static_sparse if kind == "query" else None
        want = Outputs(dense=dense, sparse=sparse and self._bm25 is None and static is None,
                       multivector=multivector, query=kind == "query")
        ids: list[list[int]] = []
        keep: list[int] = []
        rows = []
        too_long: dict[str, int] = {}
        with contextlib.closing(self._tokenized_chunks(prompted)) as chunks:
            for start, chunk_ids in chunks:
                ids += chunk_ids
                chunk_keep, cut = [], []
                for j in range(start, start + len(chunk_ids)):
                    if len(ids[j]) <= self.max_length or truncate:
                        chunk_keep.append(j)
                        if len(ids[j]) > self.max_length:
                            cut.append(j)
                    else:
                        too_long[texts[j]] = len(ids[j])
                # Cut exactly as the Hugging Face tokenizer truncates (not a slice of the ids).
                for j, short in zip(cut, self.tokenizer.encode_truncated(
                        [prompted[j] for j in cut]), strict=True):
                    ids[j] = short
                with self._lock:
                    rows += self._encoder.encode([ids[j] for j in chunk_keep], want,
                                                 [origin[j] for j in chunk_keep])
                keep += chunk_keep
        lexical = (self._bm25.embed([texts[j] for j in keep], kind)
                   if sparse and self._bm25 is not None else
                   static.embed([ids[j] for j in keep]) if sparse and static else None)
        dense_rows = (finish_dense(np.stack([r.dense for r in rows]), normalize, dimensions)
                      if dense and rows else None)
        out = {}
        for r, j in enumerate(keep):
            out[texts[j]] = _Entry(
                dense=None if dense_rows is None else dense_rows[r],
                sparse=(lexical[r] if lexical is not None else rows[r].sparse) if sparse else None,
                multivector=rows[r].multivector, tokens=len(ids[j]))
        return out, too_long

    def _tokenized_chunks(self, texts: list[str]) -> Iterator[tuple[int, list[list[int]]]]:
        """``(start, token ids)``: with :attr:`pipeline`, consecutive chunks of ``texts``,
        the next tokenised on a helper thread (the fast tokenizer releases the GIL) while
        the caller encodes one, so a large call keeps the model busy. Chunks start small,
        so the model starts early, and double up to a size that holds several batches, so
        packing by length still sees a wide choice. Without, one chunk of everything."""
        bounds = _chunk_bounds(len(texts), TOKENIZE_CHUNK_TEXTS,
                               max(TOKENIZE_CHUNK_TEXTS, self.max_batch_tokens // 16))
        if not self.pipeline or len(bounds) <= 1:
            yield 0, self.tokenizer.encode(texts)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="hybridembed-tokenize") as pool:
            upcoming = pool.submit(self.tokenizer.encode, texts[slice(*bounds[0])])
            for k, (start, _) in enumerate(bounds):
                chunk = upcoming.result()
                if k + 1 < len(bounds):
                    upcoming = pool.submit(self.tokenizer.encode, texts[slice(*bounds[k + 1])])
                yield start, chunk

    def _assemble(self, texts: list[str], entries: dict[str, _Entry], dense, sparse,
                  multivector, dimensions) -> EmbedResult:
        rows = [entries[t] for t in texts]
        width = dimensions or self.dim
        return EmbedResult(
            model=self.model,
            dense=(np.stack([e.dense for e in rows]) if rows else np.empty((0, width), np.float32))
            if dense else None,
            sparse=[e.sparse for e in rows] if sparse else None,
            multivector=[e.multivector for e in rows] if multivector else None,
            usage=Usage([e.tokens for e in rows]),
        )

    def _warm_up(self) -> None:
        want = Outputs(dense=True, sparse=self._bm25 is None, multivector=True)
        with self._lock:
            self._encoder.encode(self.tokenizer.encode(["warm up"]), want)
            self._encoder.stats.__init__()


def _chunk_bounds(n: int, first: int, most: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive chunks covering ``n`` items: ``first`` items, then
    twice as many each time, up to ``most``."""
    bounds, start, size = [], 0, min(first, most)
    while start < n:
        bounds.append((start, min(n, start + size)))
        start += size
        size = min(2 * size, most)
    return bounds


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, list | tuple):
        raise InvalidInputError(f"texts must be a string or a list of strings, got "
                                f"{type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            what = "None" if t is None else type(t).__name__
            raise InvalidInputError(f"text #{i} is {what}; every item must be a string", i)
    return list(texts)
