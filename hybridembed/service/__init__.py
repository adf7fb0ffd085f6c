"""The service layer: :class:`Embedder`, the one entry point every edge calls."""

from .cache import EmbeddingCache
from .embedder import Embedder

__all__ = ["Embedder", "EmbeddingCache"]
