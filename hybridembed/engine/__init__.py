"""The encoding engine: tokenize, pack by token budget, run a runtime, turn padded
outputs into per-text dense, sparse and multi-vector results."""

from .encoder import Encoder, Outputs, RawRow
from .packing import pack_by_token_budget
from .tokenizer import TextTokenizer

__all__ = ["Encoder", "Outputs", "RawRow", "TextTokenizer", "pack_by_token_budget"]
