"""What every protocol's route models share: strict JSON types. A boolean must be a JSON
boolean and a number a JSON number — ``true`` is never 1 and ``"no"`` never false —
because OpenAI, Ollama and text-embeddings-inference all refuse wrong JSON types, and a
lenient server silently answers something the client did not ask for."""

from __future__ import annotations

from typing import Annotated

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.responses import JSONResponse


def _whole(value):
    # JSON has one number type: 64.0 is the integer 64 (as JSON Schema's "integer" says);
    # 64.5, "64" and true stay wrong and are refused by the strict int check after this.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def whole_number(**constraints):
    """A JSON integer within ``constraints`` (``ge``, ``le``): a float with a zero fraction
    passes, a string or a boolean never. (Constraints must precede the validator, or
    pydantic leaves them out of the JSON schema.)"""
    return Annotated[int, Field(**constraints), BeforeValidator(_whole)]


WholeNumber = whole_number()


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


def schema_of(schema: dict):
    """``json_schema_extra`` that replaces a field's generated schema with ``schema``:
    for constraints a route checks itself (with a protocol-specific message and status)
    but that the OpenAPI document must still declare."""
    def replace(generated: dict) -> None:
        keep = {k: generated[k] for k in ("title", "description", "default") if k in generated}
        generated.clear()
        generated.update(schema, **keep)
    return replace


def texts_schema(min_length: int = 0, max_items: int | None = None) -> dict:
    """A string, or a non-empty list of strings (at most ``max_items``)."""
    text = {"type": "string", **({"minLength": min_length} if min_length else {})}
    many = {"type": "array", "items": text, "minItems": 1}
    if max_items:
        many["maxItems"] = max_items
    return {"anyOf": [text, many]}
