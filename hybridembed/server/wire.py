"""What every protocol's route models share: strict JSON types. A boolean must be a JSON
boolean and a number a JSON number — ``true`` is never 1 and ``"no"`` never false —
because OpenAI, Ollama and text-embeddings-inference all refuse wrong JSON types, and a
lenient server silently answers something the client did not ask for."""

from __future__ import annotations

import orjson
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse


class WireModel(BaseModel):
    """A request body read strictly; fields a protocol may grow are allowed and ignored."""

    model_config = ConfigDict(strict=True, extra="allow")


class NativeModel(BaseModel):
    """A request body of hybridembed's own API: strict, and unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class VectorsResponse(JSONResponse):
    """A JSON body holding NumPy arrays as they are (float32 rows, int index arrays),
    rendered by orjson from the arrays' buffers: no per-float Python work (a 384-float row
    took ~9 ms through ``.tolist()`` and FastAPI's encoder, ~0.1 ms this way). Each float32
    is written in its shortest form that reads back to the same float32. Routes return it
    directly, so FastAPI's own encoder never walks the body."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def as_list(value: str | list) -> list:
    """A protocol's ``input``: one string is a list of one."""
    return [value] if isinstance(value, str) else list(value)
