"""BM25 sparse vectors for models without a learned sparse head, computed with Qdrant
Edge's own embedder so indices and weights match what Qdrant computes server-side.
Documents get term-frequency weights, queries unit weights; IDF is applied by the store."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..sparse import SparseVector

_WORD = re.compile(r"\w+", re.UNICODE)


class Bm25Sparse:
    def __init__(self, language: str = "english", k: float = 1.2, b: float = 0.75,
                 avg_len: float = 256.0):
        from qdrant_edge import Bm25, Bm25Config

        self.options = {"language": language, "k": k, "b": b, "avg_len": avg_len}
        self._model = Bm25(Bm25Config(k=k, b=b, avg_len=avg_len, language=language))

    def embed(self, texts: Sequence[str], kind: str) -> list[SparseVector]:
        fn = self._model.embed_query if kind == "query" else self._model.embed_document
        out = []
        for text in texts:
            vec = fn(text)
            out.append(SparseVector.from_pairs(vec.indices, vec.values, reduce="max"))
        return out

    def token_names(self, text: str) -> dict[int, str]:
        """Map the hash indices of ``text``'s BM25 vector back to the words they came from
        (each word embedded alone), for display."""
        names: dict[int, str] = {}
        for word in dict.fromkeys(_WORD.findall(text)):
            for idx in self._model.embed_query(word).indices:
                names.setdefault(int(idx), word.lower())
        return names
