"""Fast-tokenizer wrapper: token ids with special tokens, the true length of every text,
and truncation to the model's limit done exactly as the Hugging Face tokenizer does it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class TextTokenizer:
    def __init__(self, path: Path, max_length: int):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path))
        self.max_length = int(max_length)
        pad = self._tok.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        # BGE-M3 drops exactly these from learned sparse vectors.
        special = {self._tok.cls_token_id, self._tok.eos_token_id, self._tok.sep_token_id,
                   self._tok.pad_token_id, self._tok.unk_token_id, self._tok.bos_token_id}
        self.special_ids = np.array(sorted(i for i in special if i is not None), dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Full token ids (special tokens included), never truncated."""
        if not texts:
            return []
        return self._tok(list(texts), add_special_tokens=True, truncation=False, verbose=False,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def encode_truncated(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self._tok(list(texts), add_special_tokens=True, truncation=True,
                         max_length=self.max_length, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]

    def id_to_token(self, token_id: int) -> str:
        return self._tok.convert_ids_to_tokens(int(token_id))
