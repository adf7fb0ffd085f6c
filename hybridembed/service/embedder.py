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

from ..engine import Encoder, Outputs, RawRow, TextTokenizer
from ..engine.bm25 import Bm25Sparse
from ..engine.heads import StaticSparse, finish_dense
from ..engine.windows import pool_windows
from ..engine.windows import windows as window_spans
from ..errors import InputTooLongError, InvalidOptionError, NonFiniteOutputError
from ..registry import DEFAULT_MODEL, ModelSpec, resolve
from ..runtimes import load_runtime
from ..sparse import SparseVector, prune
from ..textcheck import check_texts, nonfinite_rows
from ..types import (
    TRUNCATION_SIDES,
    Embedding,
    EmbedOptions,
    EmbedRequest,
    EmbedResult,
    LateChunks,
    Usage,
)
from .cache import EmbeddingCache, text_key
from .request import build_request, prompt_of

# Padded tokens per forward pass when the caller sets none, by device type: on CPUs small
# batches stay in cache (docs/BENCHMARKS.md, "CPU batch budget", has the measurements).
DEFAULT_BATCH_TOKENS = {"cpu": 1_024, "cuda": 131_072, "mps": 32_768}
# Texts in the first tokenisation chunk; chunks then double up to a sixteenth of the batch
# budget, so with the pipeline on a large call tokenises the next chunk while one is
# encoded, and packing by length still sees several batches' worth of texts.
TOKENIZE_CHUNK_TEXTS = 1_024


@dataclass(frozen=True)
class _Entry:
    """What the cache keeps for one text under one set of options."""

    dense: np.ndarray | None
    sparse: SparseVector | None
    multivector: np.ndarray | None
    tokens: int
    input_tokens: int
    chunks: int = 1


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

    @property
    def cuts_by_cost(self) -> bool:
        """Whether a call's texts are cut into batches of least predicted cost, padding
        weighed against passes (runtimes that pad, on a CPU): texts of similar lengths
        then run cheaper together (the server's batcher groups them so)."""
        return self._encoder.cuts_by_cost

    def batch_cut(self, lengths: Sequence[int]) -> list[list[int]]:
        """The batches a call runs for texts of these token ``lengths`` (special tokens
        included): lists of positions into ``lengths``, each once."""
        return self._encoder.cut(lengths)

    @property
    def parallel_forwards(self) -> int:
        """Forward passes the runtime can run side by side (CPU cores for torch, and for
        ONNX Runtime loaded ``side_by_side`` as the server loads it; 1 for accelerators and
        in-process ONNX Runtime, which spreads one pass over its own threads)."""
        return getattr(self._runtime, "parallel_forwards", 1)

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
    def request(self, texts: Sequence[str] | str, *, dense: bool = True, sparse: bool = False,
                multivector: bool = False, kind: str = "document",
                prompt_name: str | None = None, truncate: bool | None = None,
                truncation_side: str = "right", dimensions: int | None = None,
                normalize: bool = True, overflow: str | None = None,
                chunk_pooling: str = "mean", chunk_overlap: int = 0,
                max_active_dims: int | None = None) -> EmbedRequest:
        """Check ``texts`` and the options once and return the :class:`EmbedRequest` that
        :meth:`run` answers (the server builds one per HTTP request this way). An item of
        ``texts`` may be a list of this model's token ids (no special tokens): it is
        embedded exactly as sent, without prompt. Raises :class:`InvalidInputError` or
        :class:`InvalidOptionError` naming what was wrong."""
        return build_request(self.spec, texts, dense=dense, sparse=sparse,
                             multivector=multivector, kind=kind, prompt_name=prompt_name,
                             truncate=truncate, truncation_side=truncation_side,
                             dimensions=dimensions, normalize=normalize, overflow=overflow,
                             chunk_pooling=chunk_pooling, chunk_overlap=chunk_overlap,
                             max_active_dims=max_active_dims,
                             vocab_size=self.tokenizer.vocab_size)

    def embed(self, texts: Sequence[str] | str, *, dense: bool = True, sparse: bool = False,
              multivector: bool = False, kind: str = "document", prompt_name: str | None = None,
              truncate: bool | None = None, truncation_side: str = "right",
              dimensions: int | None = None, normalize: bool = True,
              overflow: str | None = None, chunk_pooling: str = "mean",
              chunk_overlap: int = 0, max_active_dims: int | None = None) -> EmbedResult:
        """Embed ``texts``; each output is optional. ``kind`` picks query or document mode
        (prompts, BM25 weighting); ``prompt_name`` another of the model's prompts.

        ``overflow`` decides what happens to a text over the model's limit:
        ``"truncate"`` (the default) cuts it on ``truncation_side`` (``"left"`` keeps the
        end); ``"error"`` (or ``truncate=False``) raises :class:`InputTooLongError`;
        ``"chunk"`` embeds windows of the limit sharing ``chunk_overlap`` tokens and pools
        them (``chunk_pooling`` ``"mean"`` or ``"max"``). ``result.usage`` says per text
        what was embedded, dropped and chunked. ``max_active_dims`` keeps each sparse
        vector's heaviest entries only (SPLADE ``top_k`` pruning). A text whose vectors
        come out NaN or infinite raises :class:`NonFiniteOutputError`. Both errors carry
        the other texts' results in ``.partial``. Bad texts or options raise
        :class:`InvalidInputError` / :class:`InvalidOptionError` before any work."""
        return self.run(self.request(
            texts, dense=dense, sparse=sparse, multivector=multivector, kind=kind,
            prompt_name=prompt_name, truncate=truncate, truncation_side=truncation_side,
            dimensions=dimensions, normalize=normalize, overflow=overflow,
            chunk_pooling=chunk_pooling, chunk_overlap=chunk_overlap,
            max_active_dims=max_active_dims))

    def run(self, request: EmbedRequest, *, threads: int | None = None) -> EmbedResult:
        """Answer a request made by :meth:`request`: serve what the cache holds (keyed by
        the whole :class:`EmbedOptions` and the text's hash), encode the rest.

        ``threads`` (CPU runtimes with :attr:`parallel_forwards` > 1): run this call's
        forward passes one after another with that many compute threads, alongside other
        such calls instead of waiting for them (the server's batcher runs one call per
        core this way). ``None``: the runtime's threads, one call at a time."""
        texts, options = list(request.texts), request.options
        self._calls += 1
        key = (self._model_key, options)
        unique = list(dict.fromkeys(texts))
        entries: dict[str, _Entry] = {}
        missing: list[str] = []
        for text in unique:
            hit = self._cache.get((key, _input_key(text)))
            if hit is None:
                missing.append(text)
            else:
                entries[text] = hit
        failed: dict[str, int] = {}
        nonfinite: set[str] = set()
        if missing:
            first_index = {}
            for i, t in enumerate(texts):
                first_index.setdefault(t, i)
            computed, failed, nonfinite = self._compute(
                missing, [first_index[t] for t in missing], options, threads)
            for text, entry in computed.items():
                self._cache.put((key, _input_key(text)), entry)
            entries.update(computed)
        if failed or nonfinite:
            ok = [i for i, t in enumerate(texts) if t in entries]
            partial = self._assemble([texts[i] for i in ok], entries, options)
            if failed:
                raise InputTooLongError({i: failed[t] for i, t in enumerate(texts)
                                         if t in failed}, self.max_length, partial, ok)
            raise NonFiniteOutputError([i for i, t in enumerate(texts) if t in nonfinite],
                                       partial, ok)
        return self._assemble(texts, entries, options)

    def embed_chunks(self, document: str, *, spans=None, every: int | None = None,
                     overlap: int = 0, chunks: Sequence[str] | None = None, dense: bool = True,
                     sparse: bool = False, multivector: bool = False, kind: str = "document",
                     prompt_name: str | None = None, dimensions: int | None = None,
                     normalize: bool = True, window_overlap: int | None = None,
                     max_active_dims: int | None = None) -> LateChunks:
        """Late chunking: one result per chunk of ``document``, each pooled from token
        states computed with the whole document in view (arXiv:2409.04701).

        Give the chunks as exactly one of ``spans`` (character ``(start, end)`` pairs),
        ``every`` (tokens per chunk, neighbours sharing ``overlap``) or ``chunks`` (texts
        that concatenate to ``document``). Per chunk: dense = the model's pooling over its
        token span (mean for CLS models), learned sparse = max per token over the span
        (SPLADE: its head over the span; BM25 of the chunk's text for models without a
        sparse head; ``max_active_dims`` prunes as in :meth:`embed`), multi-vector = the
        span's ``(tokens, dim)`` vectors. A document over the model's limit goes through
        windows of the limit overlapping by ``window_overlap`` tokens (default a quarter
        window); each token's state comes from the window where it has most context.

        Returns :class:`~hybridembed.types.LateChunks` (``.chunks``, ``.result``). Raises
        :class:`InvalidOptionError` (bad chunks or options), :class:`InvalidInputError`
        (the document), :class:`UnsupportedOutputError` (a runtime without token states:
        ONNX) or :class:`NonFiniteOutputError` (the model produced NaN/inf)."""
        from .late_chunking import embed_chunks

        self._calls += 1
        return embed_chunks(self, document, spans=spans, every=every, overlap=overlap,
                            chunks=chunks, dense=dense, sparse=sparse, multivector=multivector,
                            kind=kind, prompt_name=prompt_name, dimensions=dimensions,
                            normalize=normalize, window_overlap=window_overlap,
                            max_active_dims=max_active_dims)

    def iter_chunks(self, document: str, **options) -> Iterator[LateChunks]:
        """:meth:`embed_chunks` in parts, each yielded as soon as all of its chunks' tokens
        are final (parts ordered by where their chunks end), so a caller that writes them
        away holds one part's vectors at a time, whatever the document's length. Options
        and errors as :meth:`embed_chunks`, raised at the first ``next()``."""
        from .late_chunking import iter_chunks

        self._calls += 1
        return iter_chunks(self, document, **options)

    def embed_query(self, text: str, **options) -> Embedding:
        """One query text, embedded in query mode; returns its :class:`Embedding`."""
        return self.embed([text], kind="query", **options)[0]

    def tokenize(self, texts: Sequence[str] | str, truncate: bool = True,
                 truncation_side: str = "right") -> list[list[int]]:
        """Token ids of each text, special tokens included; with ``truncate``, cut to the
        model's limit on ``truncation_side``."""
        texts = check_texts(texts)
        if not truncate:
            return self.tokenizer.encode(texts)
        if truncation_side not in TRUNCATION_SIDES:
            raise InvalidOptionError(f"truncation_side must be one of "
                                     f"{', '.join(TRUNCATION_SIDES)}, got {truncation_side!r}",
                                     "truncation_side")
        return self.tokenizer.encode_truncated(texts, truncation_side)

    def sparse_tokens(self, vector: SparseVector, text: str | None = None) -> dict[str, float]:
        """``{token: weight}`` of a sparse vector, heaviest first. BM25 indices are hashes,
        so their names are recovered from ``text``."""
        if self._bm25 is None:
            return vector.to_tokens(self.tokenizer.id_to_token)
        names = self._bm25.token_names(text or "")
        return vector.to_tokens(lambda i: names.get(i, f"#{i}"))

    def with_prompt(self, texts: Sequence[str | tuple[int, ...]], options: EmbedOptions
                    ) -> list[str | tuple[int, ...]]:
        """``texts`` as the model reads them under ``options``: each string after the
        model's prompt for the request's ``prompt_name`` or ``kind`` (none for most
        models); token-id inputs as they are (they are embedded without prompt). What a
        caller counting tokens for admission should count."""
        prompt = prompt_of(self.spec, options)
        return [prompt + t if isinstance(t, str) else t for t in texts] if prompt else list(texts)

    # -- internals ------------------------------------------------------------------------
    def _compute(self, texts: list[str], origin: list[int], options: EmbedOptions,
                 threads: int | None = None
                 ) -> tuple[dict[str, _Entry], dict[str, int], set[str]]:
        """Encode ``texts`` (unique, not cached). Returns their entries, the over-long ones
        refused (``{text: tokens}``) and those whose outputs were not finite."""
        o = options
        prompt = prompt_of(self.spec, o)
        prompted = self.with_prompt(texts, o)
        static = self._static_sparse if o.kind == "query" else None  # inference-free SPLADE
        want = Outputs(dense=o.dense, sparse=o.sparse and self._bm25 is None and static is None,
                       multivector=o.multivector, query=o.kind == "query")
        ids: list[list[int]] = []
        keep: list[int] = []
        rows = []
        too_long: dict[str, int] = {}
        full: dict[int, int] = {}  # text -> its length before truncation
        windows: dict[int, list[list[int]]] = {}  # text -> its windows (overflow "chunk")
        prompt_tokens = len(self.tokenizer.encode_bare([prompt])[0]) if prompt else 0

        def prompted_tokens(j: int) -> int:  # token-id inputs are embedded without prompt
            return prompt_tokens if isinstance(texts[j], str) else 0
        with contextlib.closing(self._tokenized_chunks(prompted)) as chunks:
            for start, chunk_ids in chunks:
                ids += chunk_ids
                chunk_keep, cut, split = [], [], []
                for j in range(start, start + len(chunk_ids)):
                    full[j] = len(ids[j])
                    if len(ids[j]) <= self.max_length:
                        chunk_keep.append(j)
                    elif o.overflow == "truncate":
                        chunk_keep.append(j)
                        cut.append(j)
                    elif o.overflow == "chunk":
                        windows[j] = self._windows(ids[j], prompted_tokens(j), o.chunk_overlap)
                        split.append(j)
                    else:
                        too_long[texts[j]] = len(ids[j])
                # Cut exactly as the Hugging Face tokenizer truncates (not a slice of the ids),
                # on the side the request names, whatever the folder's tokenizer config says.
                cut_texts = [j for j in cut if isinstance(prompted[j], str)]
                for j, short in zip(cut_texts, self.tokenizer.encode_truncated(
                        [prompted[j] for j in cut_texts], o.truncation_side), strict=True):
                    ids[j] = short
                for j in cut:
                    if not isinstance(prompted[j], str):
                        ids[j] = self.tokenizer.truncate_ids(prompted[j], o.truncation_side)
                parts = [w for j in split for w in windows[j]]
                # With ``threads``, the caller runs calls side by side: no lock.
                lane = {"threads": threads} if threads and self.parallel_forwards > 1 else {}
                with contextlib.nullcontext() if lane else self._lock:
                    got = self._encoder.encode(
                        [ids[j] for j in chunk_keep] + parts, want,
                        [origin[j] for j in chunk_keep]
                        + [origin[j] for j in split for _ in windows[j]], **lane)
                rows += got[:len(chunk_keep)]
                at = len(chunk_keep)
                for j in split:
                    own = got[at:at + len(windows[j])]
                    at += len(own)
                    rows.append(self._pooled(own, windows[j], prompted_tokens(j), o))
                keep += chunk_keep + split
        lexical = (self._bm25.embed([_text_of(texts[j], self.tokenizer) for j in keep], o.kind)
                   if o.sparse and self._bm25 is not None else
                   static.embed([ids[j] for j in keep]) if o.sparse and static else None)
        dense_rows = (finish_dense(np.stack([r.dense for r in rows]), o.normalize, o.dimensions)
                      if o.dense and rows else None)
        # Never cache, return or serve a non-finite vector (fp16 overflow, a broken model).
        bad = {r for r, row in enumerate(rows) if not row.finite} | set(nonfinite_rows(dense_rows))
        out = {}
        nonfinite = set()
        for r, j in enumerate(keep):
            if r in bad:
                nonfinite.add(texts[j])
                continue
            out[texts[j]] = _Entry(
                dense=None if dense_rows is None else dense_rows[r],
                sparse=_pruned(lexical[r] if lexical is not None else rows[r].sparse,
                               o.max_active_dims) if o.sparse else None,
                multivector=rows[r].multivector,
                tokens=sum(map(len, windows[j])) if j in windows else len(ids[j]),
                input_tokens=full[j], chunks=len(windows.get(j, (None,))))
        return out, too_long, nonfinite

    def _windows(self, ids: list[int], prompt_tokens: int, overlap: int) -> list[list[int]]:
        """Token ids of the windows of one over-long text (``ids``: its full tokens, special
        tokens and prompt included): its body split to fit the model's limit, neighbours
        sharing ``overlap`` tokens, each window wrapped in the special tokens and prompt."""
        tok = self.tokenizer
        lead = len(tok.special_prefix) + prompt_tokens
        head, body = ids[:lead], ids[lead:len(ids) - len(tok.special_suffix)]
        size = self.max_length - lead - len(tok.special_suffix)
        return [[*head, *body[a:b], *tok.special_suffix]
                for a, b in window_spans(len(body), size, overlap)]

    def _pooled(self, rows: list[RawRow], parts: list[list[int]], prompt_tokens: int,
                options: EmbedOptions) -> RawRow:
        """One text's row from the rows of its windows (see :func:`pool_windows`)."""
        tok = self.tokenizer
        extra = len(tok.special_prefix) + prompt_tokens + len(tok.special_suffix)
        return pool_windows(rows, [len(p) for p in parts], options.chunk_pooling,
                            lead=len(tok.special_prefix) - 1 + prompt_tokens,
                            body=[len(p) - extra for p in parts], overlap=options.chunk_overlap)

    def _tokenized_chunks(self, texts: list[str]) -> Iterator[tuple[int, list[list[int]]]]:
        """``(start, token ids)``: with :attr:`pipeline`, consecutive chunks of ``texts``,
        the next tokenised on a helper thread (the fast tokenizer releases the GIL) while
        the caller encodes one, so a large call keeps the model busy. Chunks start small,
        so the model starts early, and double up to a size that holds several batches, so
        packing by length still sees a wide choice. Without, one chunk of everything."""
        if any(not isinstance(t, str) for t in texts):  # token ids as sent: no tokenising
            strings = [t for t in texts if isinstance(t, str)]
            encoded = iter(self.tokenizer.encode(strings))
            yield 0, [next(encoded) if isinstance(t, str) else self.tokenizer.with_special(t)
                      for t in texts]
            return
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

    def _assemble(self, texts: list[str], entries: dict[str, _Entry], options: EmbedOptions
                  ) -> EmbedResult:
        rows = [entries[t] for t in texts]
        dense, sparse, multivector = options.dense, options.sparse, options.multivector
        width = options.dimensions or self.dim
        return EmbedResult(
            model=self.model,
            dense=(np.stack([e.dense for e in rows]) if rows else np.empty((0, width), np.float32))
            if dense else None,
            sparse=[e.sparse for e in rows] if sparse else None,
            multivector=[e.multivector for e in rows] if multivector else None,
            usage=Usage([e.tokens for e in rows], [e.input_tokens for e in rows],
                        [e.chunks for e in rows]),
        )

    def _warm_up(self) -> None:
        want = Outputs(dense=True, sparse=self._bm25 is None, multivector=True)
        with self._lock:
            self._encoder.encode(self.tokenizer.encode(["warm up"]), want)
            self._encoder.stats.__init__()


def _input_key(item: str | tuple[int, ...]):
    """The cache's key of one input: a text's hash, or the token-id tuple itself."""
    return text_key(item) if isinstance(item, str) else ("ids", item)


def _text_of(item: str | tuple[int, ...], tokenizer: TextTokenizer) -> str:
    """The text of an input (token ids decoded), for BM25."""
    return item if isinstance(item, str) else tokenizer.decode(item)


def _chunk_bounds(n: int, first: int, most: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive chunks covering ``n`` items: ``first`` items, then
    twice as many each time, up to ``most``."""
    bounds, start, size = [], 0, min(first, most)
    while start < n:
        bounds.append((start, min(n, start + size)))
        start += size
        size = min(2 * size, most)
    return bounds


def _pruned(vector, k: int | None):
    """``vector`` cut to its ``k`` heaviest entries (``None``: as it is)."""
    return vector if k is None or vector is None else prune(vector, top_k=k)
