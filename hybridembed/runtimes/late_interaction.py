"""ColBERT / PyLate token handling around the forward pass, in NumPy: query expansion
(pad a query with the expansion token up to a fixed length; the encoder may or may not
attend to those positions, but their vectors count) and the document skiplist (tokens whose
vectors are dropped). Mirrors sentence-transformers' ``Transformer.preprocess`` query
expansion and ``MultiVectorMask``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenPlan:
    """One batch as the encoder sees it: ``input_ids`` and ``attention_mask``
    ``(batch, width)`` int64, and ``keep`` ``(batch, width)`` bool: the positions whose
    vectors belong to the text."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    keep: np.ndarray


class LateInteractionTokens:
    """Built once per model from its :class:`~hybridembed.registry.LateInteraction`
    settings and tokenizer folder."""

    def __init__(self, settings, tokenizer_path):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_path))
        self.settings = settings
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        token = settings.expansion_token
        expansion = (tok.convert_tokens_to_ids(token) if token is not None
                     else tok.mask_token_id if tok.mask_token_id is not None else tok.eos_token_id)
        self.expansion_id = None if expansion is None else int(expansion)
        skip = []
        for word in settings.skiplist:
            token_id = tok.convert_tokens_to_ids(word)
            if token_id is not None and (token_id != tok.unk_token_id or word == tok.unk_token):
                skip.append(int(token_id))  # words that are no single token are left out
        self.skip_ids = np.array(sorted(set(skip)), dtype=np.int64)

    def plan(self, input_ids: np.ndarray, attention_mask: np.ndarray, query: bool) -> TokenPlan:
        """The batch to run for ``query`` or document texts (right-padded ids and mask in)."""
        s = self.settings
        if query and s.expansion_length:
            input_ids, attention_mask, expansion = self._expand(input_ids, attention_mask)
        else:
            expansion = np.zeros(input_ids.shape, bool)
        keep = attention_mask.astype(bool) | expansion
        if ("query" if query else "document") in s.skiplist_kinds and self.skip_ids.size:
            keep &= ~np.isin(input_ids, self.skip_ids)
        if query and s.expansion_attend:
            attention_mask = attention_mask | expansion.astype(attention_mask.dtype)
        return TokenPlan(input_ids, attention_mask, keep)

    def _expand(self, input_ids, attention_mask):
        """Widen to the expansion length; with the ``fixed`` strategy cut longer queries to
        it keeping their last (closing special) token, as the tokenizer's truncation does."""
        length = self.settings.expansion_length
        lengths = attention_mask.sum(axis=1)
        width = length if self.settings.expansion_strategy == "fixed" \
            else max(length, input_ids.shape[1])
        ids = np.full((len(input_ids), width), self.pad_id, np.int64)
        mask = np.zeros((len(input_ids), width), attention_mask.dtype)
        for r, n in enumerate(lengths):
            row = input_ids[r, :n]
            if n > width:
                row = np.r_[row[:width - 1], row[n - 1:n]]
            ids[r, :len(row)] = row
            mask[r, :len(row)] = 1
        expansion = (mask == 0) & (np.arange(width) < length)
        if self.expansion_id is not None:
            ids[expansion] = self.expansion_id
        return ids, mask, expansion
