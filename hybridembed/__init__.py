"""hybridembed: in-process, batched embeddings for retrieval — a dense vector, a sparse
lexical vector and per-token (ColBERT) vectors from one forward pass."""

from .errors import (
    HybridEmbedError,
    InputTooLongError,
    InvalidInputError,
    InvalidOptionError,
    ModelNotFoundError,
    NetworkUnavailableError,
    OutOfMemoryError,
    UnsupportedModelError,
    UnsupportedOutputError,
)
from .registry import ModelSpec, resolve
from .service import Embedder
from .sparse import SparseVector, dot, merge, prune
from .types import Chunk, Embedding, EmbedResult, LateChunks, Usage

__version__ = "0.1.0"

__all__ = [
    "Chunk", "EmbedResult", "Embedder", "Embedding", "HybridEmbedError", "InputTooLongError",
    "InvalidInputError", "InvalidOptionError", "LateChunks", "ModelNotFoundError", "ModelSpec",
    "NetworkUnavailableError", "OutOfMemoryError", "SparseVector", "UnsupportedModelError",
    "UnsupportedOutputError", "Usage", "dot", "merge", "prune", "resolve",
]
