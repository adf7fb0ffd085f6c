"""OpenAI wire format: ``POST /v1/embeddings`` (also ``/embeddings``)."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import Field

from .errors import ApiError
from .schemas import OpenAIEmbeddingsResponse, ok
from .token_ids import CL100K_MAX_ID, read_token_ids
from .wire import (
    OverflowFields,
    VectorsResponse,
    WholeNumber,
    WireModel,
    accounting_headers,
    schema_of,
    texts_schema,
    usage_lists,
    whole_number,
)

router = APIRouter(tags=["OpenAI"])


_TOKEN_IDS = {"type": "array", "minItems": 1,
              "items": {"type": "integer", "minimum": 0, "maximum": CL100K_MAX_ID}}
_INPUT_SCHEMA = {"anyOf": [*texts_schema(min_length=1, max_items=2048)["anyOf"], _TOKEN_IDS,
                           {"type": "array", "items": _TOKEN_IDS, "minItems": 1,
                            "maxItems": 2048}]}


class OpenAIEmbeddingsRequest(WireModel, OverflowFields):
    """OpenAI's fields, plus hybridembed's overflow fields and ``truncation_side`` as
    extensions (over-long inputs are cut on the right unless they say otherwise)."""

    input: str | list[str] | list[WholeNumber] | list[list[WholeNumber]] = Field(
        description="a string, a list of strings, a token-id list or a list of token-id lists "
                    "(cl100k_base ids unless the server says otherwise); none may be empty",
        json_schema_extra=schema_of(_INPUT_SCHEMA))
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: whole_number(ge=1) | None = None
    user: str | None = None
    truncation_side: Literal["right", "left"] = "right"


def _inputs(core, value) -> list[str] | list[list[int]]:
    """The inputs of an ``input``: texts, or token-id lists read as the server's
    ``--token-ids`` policy says. OpenAI refuses empty strings and lists (400)."""
    if isinstance(value, str):
        value = [value]
    if not value:
        raise ApiError(400, "input is empty; send at least one text", "invalid_request", "input")
    if isinstance(value[0], int):
        value = [value]
    if isinstance(value[0], list):
        for i, ids in enumerate(value):
            if not ids:
                raise ApiError(400, f"input[{i}] is an empty token list", param="input")
        return read_token_ids(core.settings.token_ids, value)
    for i, text in enumerate(value):
        if text == "":
            raise ApiError(400, f"input[{i}] is an empty string; OpenAI's API refuses empty "
                           "inputs", param="input")
    return list(value)


def _encode(vector: np.ndarray, fmt: str):
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


@router.post("/v1/embeddings", responses=ok(OpenAIEmbeddingsResponse))
@router.post("/embeddings", include_in_schema=False)
async def embeddings(body: OpenAIEmbeddingsRequest, request: Request):
    core = request.app.state.core
    async with core.models.use(body.model, "embed") as slot:
        embed = core.request(slot.embedder, _inputs(core, body.input),
                             dimensions=body.dimensions, truncation_side=body.truncation_side,
                             **body.overflow_options())
        result = await core.embed(request, embed, "openai", slot=slot)
    return VectorsResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                 for i, v in enumerate(result.dense)],
        "model": body.model,
        "usage": {"prompt_tokens": result.usage.total_tokens,
                  "total_tokens": result.usage.total_tokens,
                  **usage_lists(result.usage)},
    }, headers=accounting_headers(result.usage))
