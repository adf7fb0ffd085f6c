"""What every protocol's route models share: strict JSON types. A boolean must be a JSON
boolean and a number a JSON number — ``true`` is never 1 and ``"no"`` never false —
because OpenAI, Ollama and text-embeddings-inference all refuse wrong JSON types, and a
lenient server silently answers something the client did not ask for."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """A request body read strictly; fields a protocol may grow are allowed and ignored."""

    model_config = ConfigDict(strict=True, extra="allow")


class NativeModel(BaseModel):
    """A request body of hybridembed's own API: strict, and unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


def as_list(value: str | list) -> list:
    """A protocol's ``input``: one string is a list of one."""
    return [value] if isinstance(value, str) else list(value)
