"""The one exception tree of hybridembed.

Every error a caller can see derives from :class:`HybridEmbedError`. Errors about bad
input also derive from the matching built-in (``TypeError``/``ValueError``) so callers
that already catch those keep working. Each edge (CLI, HTTP) maps this tree to its own
wire format in one place.
"""

from __future__ import annotations


class HybridEmbedError(Exception):
    """Base class of every error raised by hybridembed."""


class ModelNotFoundError(HybridEmbedError, LookupError):
    """A model name could not be resolved to files on this machine."""


class UnsupportedModelError(HybridEmbedError, ValueError):
    """The model's files describe something this version cannot run."""


class InvalidInputError(HybridEmbedError, TypeError):
    """An input text is not a string (``None``, a number, a nested list...)."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.index = index
        self.field = field  # the request field holding the input (query, documents...)


class InvalidOptionError(HybridEmbedError, ValueError):
    """An option has a value outside what is valid; the message lists the valid ones."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class InputTooLongError(HybridEmbedError, ValueError):
    """One or more texts exceed the model's token limit and truncation was refused.

    ``too_long`` maps each offending caller index to its token count (for a rerank, the
    token count of the query and document together); ``field`` names the request field
    that holds them (``input``, ``query``, ``documents``). The other texts of
    the call were embedded: ``partial`` holds their result (rows in the order of
    ``partial_indices``) so nothing already accepted is lost.
    """

    def __init__(self, too_long: dict[int, int], limit: int, partial=None, partial_indices=(),
                 field: str = "input"):
        shown = ", ".join(f"#{i} has {n} tokens" for i, n in list(too_long.items())[:10])
        more = f" (and {len(too_long) - 10} more)" if len(too_long) > 10 else ""
        if field == "query":
            what = f"the query has {next(iter(too_long.values()))} tokens, over"
        else:
            where = "" if field == "input" else f"{field}: "
            what = f"{where}{len(too_long)} text(s) exceed"
        super().__init__(
            f"{what} the model limit of {limit} tokens"
            + ("" if field == "query" else f": {shown}{more}")
            + (". Pass truncate=True to cut them to the limit, or split them."
               if field in ("query", "documents") else
               ". Pass overflow='truncate' to cut them to the limit, or overflow='chunk' to "
               "embed them in windows of the limit."))
        self.field = field  # the request field holding the texts (query, documents...)
        self.too_long = too_long
        self.limit = limit
        self.partial = partial
        self.partial_indices = list(partial_indices)


class NonFiniteOutputError(HybridEmbedError, ArithmeticError):
    """The model produced NaN or infinity for some texts (fp16 overflow on a GPU is the
    usual cause). The model failed, not the caller: nothing non-finite is ever returned,
    served or stored. ``indices`` are the offending caller indexes; the other texts were
    embedded and ``partial`` holds their result (rows in the order of ``partial_indices``).
    """

    def __init__(self, indices: list[int], partial=None, partial_indices=()):
        shown = ", ".join(f"#{i}" for i in indices[:10])
        more = f" (and {len(indices) - 10} more)" if len(indices) > 10 else ""
        super().__init__(
            f"the model produced a non-finite (NaN or infinite) vector for {len(indices)} "
            f"text(s): {shown}{more}; try dtype fp32, or report the model and text")
        self.indices = list(indices)
        self.partial = partial
        self.partial_indices = list(partial_indices)


class OutOfMemoryError(HybridEmbedError, MemoryError):
    """A single text did not fit in device memory even alone in its batch."""

    def __init__(self, index: int, tokens: int, device: str):
        super().__init__(
            f"out of memory on {device} embedding text #{index} ({tokens} tokens) even in a "
            "batch of one; lower max_length, use a smaller dtype, or move to a larger device"
        )
        self.index = index
        self.tokens = tokens


class UnsupportedOutputError(HybridEmbedError, ValueError):
    """The chosen backend (local, remote, ollama, openai) or model cannot produce a
    requested output kind."""


class NetworkUnavailableError(HybridEmbedError, ConnectionError):
    """A download was asked for but no network (or hub) can be reached."""


class OverloadedError(HybridEmbedError):
    """The queue is full; the request was refused at once and may be retried."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(HybridEmbedError, TimeoutError):
    """A request waited longer than the server's per-request timeout; its slot was freed."""
