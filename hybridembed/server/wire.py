"""What every protocol's route models share: strict JSON types. A boolean must be a JSON
boolean and a number a JSON number — ``true`` is never 1 and ``"no"`` never false —
because OpenAI, Ollama and text-embeddings-inference all refuse wrong JSON types, and a
lenient server silently answers something the client did not ask for."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..types import Usage


class WireModel(BaseModel):
    """A request body read strictly; fields a protocol may grow are allowed and ignored."""

    model_config = ConfigDict(strict=True, extra="allow")


class NativeModel(BaseModel):
    """A request body of hybridembed's own API: strict, and unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


def as_list(value: str | list) -> list:
    """A protocol's ``input``: one string is a list of one."""
    return [value] if isinstance(value, str) else list(value)


class OverflowFields(BaseModel):
    """hybridembed's overflow options, spelled the same on every protocol (an extension
    where the protocol has none): ``overflow`` (``error``, ``truncate``, ``chunk``),
    ``chunk_pooling`` (``mean``, ``max``), ``chunk_overlap`` (tokens). Their values are
    checked once, by ``Embedder.request``, as every other option."""

    overflow: str | None = None
    chunk_pooling: str = "mean"
    chunk_overlap: int = 0

    def overflow_options(self) -> dict:
        return {"overflow": self.overflow, "chunk_pooling": self.chunk_pooling,
                "chunk_overlap": self.chunk_overlap}


def usage_lists(usage: Usage) -> dict[str, list[int]]:
    """Per-text token accounting: embedded, before any cut, cut off, windows."""
    return {"tokens": list(usage.tokens), "input_tokens": list(usage.input_tokens),
            "dropped_tokens": usage.dropped_tokens, "chunks": list(usage.chunks)}


def accounting_headers(response, usage: Usage) -> None:
    """The same accounting as response headers (``x-hybridembed-tokens`` etc., one
    comma-separated number per text), for protocols whose body has no room (TEI's bare
    lists) and beside the body everywhere else."""
    for name, values in usage_lists(usage).items():
        response.headers["x-hybridembed-" + name.replace("_", "-")] = ",".join(map(str, values))
