"""What every protocol's route models share: strict JSON types. A boolean must be a JSON
boolean and a number a JSON number — ``true`` is never 1 and ``"no"`` never false —
because OpenAI, Ollama and text-embeddings-inference all refuse wrong JSON types, and a
lenient server silently answers something the client did not ask for."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.responses import JSONResponse

from ..types import CHUNK_POOLINGS, OVERFLOWS, Usage


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
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _plain(value):
    """What orjson does not write itself: a strided array view (a ``dimensions`` cut
    without normalising) and NumPy scalars."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


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


# Ollama's keep_alive: a duration ("5m", "10s", "1.5h", "-1") or a number of seconds.
DURATION_PATTERN = r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
KeepAlive = Annotated[str | float | None, Field(
    description='how long the model stays loaded after the request: "5m", "10s", '
    'seconds; 0 unloads at once, negative keeps it loaded', union_mode="left_to_right",
    json_schema_extra=schema_of({"anyOf": [{"type": "string", "pattern": DURATION_PATTERN},
                                           {"type": "number"}, {"type": "null"}]}))]
# ``truncate: false`` with an ``overflow`` other than ``error`` contradicts itself (400).
NO_CONTRADICTION = {"not": {"required": ["truncate", "overflow"], "properties": {
    "truncate": {"const": False}, "overflow": {"enum": ["truncate", "chunk"]}}}}


def usage_lists(usage: Usage) -> dict[str, list[int]]:
    """Per-text token accounting: embedded, before any cut, cut off, windows."""
    return {"tokens": list(usage.tokens), "input_tokens": list(usage.input_tokens),
            "dropped_tokens": usage.dropped_tokens, "chunks": list(usage.chunks)}


# Per-text lists in headers stop here: HTTP clients and proxies refuse large header
# blocks (h11, which httpx uses, reads at most 16 KiB of them; nginx 4-8 KiB by default).
HEADER_LIST_BYTES = 8192


def accounting_headers(usage: Usage) -> dict[str, str]:
    """The same accounting as response headers, for protocols whose body has no room (TEI's
    bare lists) and beside the body everywhere else: totals always
    (``x-hybridembed-total-tokens``, ``-total-input-tokens``, ``-total-dropped-tokens``,
    ``-total-chunks``, and ``-cut-inputs``: how many texts were truncated or chunked), and
    the per-text lists (``x-hybridembed-tokens`` etc., one comma-separated number per
    text) while they fit in :data:`HEADER_LIST_BYTES`; a larger request gets the totals
    only (its per-text accounting is in the body where the protocol has one)."""
    lists = usage_lists(usage)
    headers = {"x-hybridembed-total-" + name.replace("_", "-"): str(sum(values))
               for name, values in lists.items()}
    headers["x-hybridembed-cut-inputs"] = str(sum(
        1 for dropped, chunks in zip(lists["dropped_tokens"], lists["chunks"], strict=True)
        if dropped or chunks > 1))
    per_text = {"x-hybridembed-" + name.replace("_", "-"): ",".join(map(str, values))
                for name, values in lists.items()}
    if sum(len(k) + len(v) + 4 for k, v in per_text.items()) <= HEADER_LIST_BYTES:
        headers.update(per_text)
    return headers


class OverflowFields(BaseModel):
    """hybridembed's overflow options, spelled the same on every protocol (an extension
    where the protocol has none): ``overflow`` (``error``, ``truncate``, ``chunk``),
    ``chunk_pooling`` (``mean``, ``max``), ``chunk_overlap`` (tokens). Their values are
    checked once, by ``Embedder.request``, as every other option."""

    overflow: str | None = Field(None, json_schema_extra=schema_of(
        {"anyOf": [{"type": "string", "enum": list(OVERFLOWS)}, {"type": "null"}]}))
    chunk_pooling: str = Field("mean", json_schema_extra=schema_of(
        {"type": "string", "enum": list(CHUNK_POOLINGS)}))
    # at most half the model's limit: the OpenAPI document says so once the model is loaded
    chunk_overlap: WholeNumber = Field(0, json_schema_extra=schema_of(
        {"type": "integer", "minimum": 0}))

    def overflow_options(self) -> dict:
        return {"overflow": self.overflow, "chunk_pooling": self.chunk_pooling,
                "chunk_overlap": self.chunk_overlap}
