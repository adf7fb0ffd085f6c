"""Fast-tokenizer wrapper: token ids with special tokens, the true length of every text,
and truncation to the model's limit done exactly as the Hugging Face tokenizer does it.

Safe to share between threads: transformers switches truncation on or off on the one
Rust tokenizer at every call, and a call from another thread meanwhile fails ("Already
borrowed") or runs with the wrong truncation; every call is therefore made under a lock
(the Embedder tokenises its next chunk on a helper thread, the server counts tokens while
a batch is embedded).

Counting remembers: the ids :meth:`TextTokenizer.lengths` computed for a text are kept
(up to :data:`COUNTED_TOKENS` tokens, oldest forgotten first) and taken by the next
:meth:`TextTokenizer.encode` of the same text, so the server, which counts a request's
tokens on admission and embeds the same texts moments later, tokenises each text once."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SEGMENT_CHARS = 65_536  # characters tokenised at once in a long text
# Tokens of counted texts kept for encode() (~1 MB per 32k tokens as Python lists): the
# server's queue holds a few thousand short texts at most between admission and batch.
COUNTED_TOKENS = 262_144


def segments(text: str, size: int = SEGMENT_CHARS, cut: str = "drop"
             ) -> list[tuple[int, int]]:
    """``[start, end)`` pieces of ``text`` of at most ``size`` characters, cut at a space
    or newline where there is one, so that tokenising the pieces gives the tokens of the
    whole: ``cut="drop"`` leaves that one whitespace character out of both pieces
    (WordPiece, which splits on it), ``"drop-space"`` does so at spaces only
    (SentencePiece's Metaspace, which turns the next piece's first word into ``▁word`` as
    the space did, but keeps a newline as a character), ``"before"`` starts the next
    piece with it (byte-level BPE, whose tokens carry their leading space)."""
    out, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end == len(text):
            out.append((start, end))
            break
        space = text.rfind(" ", start, end)
        if cut != "drop-space":
            space = max(space, text.rfind("\n", start, end))
        if space <= start:  # no whitespace to cut at: a piece may split a word
            out.append((start, end))
            start = end
        elif cut == "before":
            out.append((start, space))
            start = space
        else:
            out.append((start, space))
            start = space + 1
    return out


def _segment_cut(tok) -> str | None:
    """How :func:`segments` may cut text for this tokenizer (``None``: not at all),
    from its pre-tokenizer: WordPiece-style whitespace splitting and Metaspace with a
    prefix on every input drop it (``"drop"``, ``"drop-space"``), byte-level BPE cuts
    ``"before"``."""
    import json

    try:
        pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    except Exception:
        return None
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    if any(k == "ByteLevel" for k in kinds):
        return "before"
    if all(k in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation", "Digits")
           for k in kinds) and kinds:
        return "drop"
    if kinds == ["Metaspace"] and pre.get("prepend_scheme", "always") in ("always", "first") \
            and pre.get("add_prefix_space", True):
        return "drop-space"
    return None


class TextTokenizer:
    def __init__(self, path: Path, max_length: int):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path))
        self._lock = threading.Lock()
        self.max_length = int(max_length)
        pad = self._tok.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        # BGE-M3 drops exactly these from learned sparse vectors.
        special = {self._tok.cls_token_id, self._tok.eos_token_id, self._tok.sep_token_id,
                   self._tok.pad_token_id, self._tok.unk_token_id, self._tok.bos_token_id}
        self.special_ids = np.array(sorted(i for i in special if i is not None), dtype=np.int64)
        self._counted: dict[str, list[int]] = {}  # text -> ids, oldest first
        self._counted_tokens = 0
        self._counted_lock = threading.Lock()
        # The special tokens the model's template puts around a text (BERT: [CLS] / [SEP];
        # XLM-R: <s> / </s>), found by encoding one word with and without them; windows
        # of a long text are wrapped in the same.
        probe = "hello"
        full, bare = self.encode([probe])[0], self.encode_bare([probe])[0]
        lead = next((i for i in range(len(full) - len(bare) + 1)
                     if full[i:i + len(bare)] == bare), 0)
        self.special_prefix: list[int] = full[:lead]
        self.special_suffix: list[int] = full[lead + len(bare):]
        self._counter = None  # a private copy of the Rust tokenizer for lengths()
        self._cut = _segment_cut(self._tok) if self._tok.is_fast else None

    def _call(self, *args, **kwargs):
        with self._lock:
            return self._tok(*args, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Full token ids (special tokens included), never truncated. A fast tokenizer's
        Rust backend is called directly: what transformers adds around it is Python work
        per text (measured in docs/BENCHMARKS.md), holding the GIL while the model's thread
        wants it to launch the next batch."""
        if not texts:
            return []
        backend = getattr(self._tok, "_tokenizer", None) if self._tok.is_fast else None
        if backend is None:
            return self._call(list(texts), add_special_tokens=True, truncation=False,
                              verbose=False, return_attention_mask=False,
                              return_token_type_ids=False)["input_ids"]
        ids = self._take_counted(texts)
        missing = [i for i, found in enumerate(ids) if found is None]
        if missing:
            with self._lock:
                backend.no_truncation()
                backend.no_padding()
                encoded = backend.encode_batch([texts[i] for i in missing],
                                               add_special_tokens=True)
            for i, e in zip(missing, encoded, strict=True):
                ids[i] = e.ids
        return ids

    def _take_counted(self, texts: Sequence[str]) -> list[list[int] | None]:
        """The remembered ids of each of ``texts`` (``None`` where not counted), taken:
        a text counted once is encoded from memory once."""
        if not self._counted:
            return [None] * len(texts)
        with self._counted_lock:
            ids = [self._counted.pop(t, None) for t in texts]
            self._counted_tokens -= sum(len(i) for i in ids if i is not None)
        return ids

    def _remember(self, texts: Sequence[str], encodings) -> None:
        with self._counted_lock:
            for text, e in zip(texts, encodings, strict=True):
                if len(e) > COUNTED_TOKENS // 4:
                    continue  # a long document is not kept whole
                old = self._counted.pop(text, None)
                self._counted_tokens += len(e) - (len(old) if old is not None else 0)
                self._counted[text] = e.ids
            while self._counted_tokens > COUNTED_TOKENS:
                oldest = next(iter(self._counted))
                self._counted_tokens -= len(self._counted.pop(oldest))

    def encode_bare(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids without special tokens, never truncated."""
        if not texts:
            return []
        return self._call(list(texts), add_special_tokens=False, truncation=False,
                          verbose=False, return_attention_mask=False,
                          return_token_type_ids=False)["input_ids"]

    def wrap(self, ids: Sequence[int]) -> list[int]:
        """``ids`` between the model's special tokens, as a whole text would be."""
        return [*self.special_prefix, *ids, *self.special_suffix]

    def content(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, offsets)`` of every token of ``text`` without special tokens, never
        truncated: ``(n,)`` int64 ids and ``(n, 2)`` int64 character ``[start, stop)``.
        A long text is tokenised :data:`SEGMENT_CHARS` characters at a time, cut at
        whitespace (:func:`segments`) where the tokenizer's pre-tokenizer makes that exact,
        so its per-token objects never exist for a whole multi-megabyte document at once."""
        ids, offsets = [], []
        pieces = (segments(text, SEGMENT_CHARS, self._cut) if self._cut
                  else [(0, len(text))])
        for start, end in pieces:
            enc = self._call(text[start:end], add_special_tokens=False, truncation=False,
                             verbose=False, return_offsets_mapping=True,
                             return_attention_mask=False, return_token_type_ids=False)
            ids.append(np.asarray(enc["input_ids"], dtype=np.int64))
            offsets.append(np.asarray(enc["offset_mapping"], dtype=np.int64)
                           .reshape(len(ids[-1]), 2) + start)
            if self._cut == "drop-space" and start and len(offsets[-1]) \
                    and offsets[-1][0, 0] == start:
                # the piece's first "▁word" (or a bare "▁") stands for the dropped space,
                # whose character it spans in the whole text
                offsets[-1][0, 0] = start - 1
                if self._tok.convert_ids_to_tokens(int(ids[-1][0])) == "\u2581":
                    offsets[-1][0, 1] = start
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
        return np.concatenate(ids), np.concatenate(offsets)

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text (special tokens included, never truncated), from a
        private copy of the Rust tokenizer whose settings never change: no lock, so the
        server counting a request's tokens on its event loop never waits for a batch
        being tokenised on another thread. The ids are remembered for :meth:`encode`
        (see the module's text)."""
        if not texts:
            return []
        if self._counter is None:
            backend = getattr(self._tok, "_tokenizer", None) if self._tok.is_fast else None
            if backend is None:
                return [len(ids) for ids in self.encode(texts)]
            from tokenizers import Tokenizer

            counter = Tokenizer.from_str(backend.to_str())
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter
        if len(texts) == 1:
            encodings = [self._counter.encode(texts[0], add_special_tokens=True)]
        else:
            encodings = self._counter.encode_batch(list(texts), add_special_tokens=True)
        self._remember(texts, encodings)
        return [len(e) for e in encodings]

    def encode_truncated(self, texts: Sequence[str], side: str = "right") -> list[list[int]]:
        """Token ids cut to :attr:`max_length` (special tokens kept) on ``side``:
        ``"right"`` keeps the start of the text, ``"left"`` its end. The side is the
        caller's, never the ``truncation_side`` of the folder's tokenizer config."""
        if not texts:
            return []
        with self._lock:
            saved = self._tok.truncation_side
            self._tok.truncation_side = side
            try:
                return self._tok(list(texts), add_special_tokens=True, truncation=True,
                                 max_length=self.max_length, return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]
            finally:
                self._tok.truncation_side = saved

    @functools.cached_property
    def _template(self) -> tuple[list[int], list[int]]:
        """The special tokens the model puts before and after one text's content, read
        from how it encodes a one-word text (so any post-processor template works)."""
        enc = self._call("a", add_special_tokens=True, return_special_tokens_mask=True)
        ids, special = enc["input_ids"], enc["special_tokens_mask"]
        content = [i for i, s in enumerate(special) if not s]
        first, last = (content[0], content[-1]) if content else (len(ids), len(ids) - 1)
        return list(ids[:first]), list(ids[last + 1:])

    def with_special(self, ids: Sequence[int]) -> list[int]:
        """Content token ids wrapped in the model's special tokens (``[CLS] ids [SEP]``)."""
        before, after = self._template
        return [*before, *ids, *after]

    def truncate_ids(self, ids: Sequence[int], side: str = "right") -> list[int]:
        """Content token ids cut so that, with special tokens, they fit :attr:`max_length`
        (``"left"`` keeps the end), then wrapped in the special tokens."""
        before, after = self._template
        room = self.max_length - len(before) - len(after)
        ids = list(ids)
        kept = ids[:room] if side == "right" else ids[max(0, len(ids) - room):]
        return self.with_special(kept)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids (special tokens skipped unless told); ids outside the
        vocabulary raise ``ValueError``."""
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary "
                             f"(0..{self.vocab_size - 1})")
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def offsets(self, text: str) -> list[tuple[int, str, bool, int | None, int | None]]:
        """(id, text, special, start, stop) per token; offsets count characters."""
        enc = self._call(text, truncation=True, max_length=self.max_length,
                         return_offsets_mapping=True, return_special_tokens_mask=True)
        out = []
        for tid, (a, b), special in zip(enc["input_ids"], enc["offset_mapping"],
                                        enc["special_tokens_mask"], strict=True):
            if special:
                out.append((tid, self._tok.convert_ids_to_tokens(tid), True, None, None))
            else:
                out.append((tid, text[a:b], False, a, b))
        return out

    def id_to_token(self, token_id: int) -> str:
        return self._tok.convert_ids_to_tokens(int(token_id))
