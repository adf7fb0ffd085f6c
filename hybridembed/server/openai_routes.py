"""OpenAI wire format: ``POST /v1/embeddings`` (also ``/embeddings``)."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..service.batcher import EmbedOptions
from .errors import ApiError

router = APIRouter(tags=["OpenAI"])


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a string, a list of strings, a token-id list or a list of token-id lists")
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def _texts(core, value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        value = [value]
    if value and isinstance(value[0], list):
        tok = core.ready().tokenizer
        out = []
        for i, ids in enumerate(value):
            try:
                out.append(tok.decode(ids))
            except ValueError as exc:
                raise ApiError(400, f"input[{i}]: {exc}", param="input") from None
        return out
    return list(value)


def _encode(vector: np.ndarray, fmt: str):
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/v1/embeddings")
@router.post("/embeddings", include_in_schema=False)
async def embeddings(body: EmbeddingsRequest, request: Request):
    core = request.app.state.core
    core.check_model(body.model)
    texts = _texts(core, body.input)
    result = await core.embed(request, texts, EmbedOptions(dimensions=body.dimensions))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                 for i, v in enumerate(result.dense)],
        "model": body.model,
        "usage": {"prompt_tokens": result.usage.total_tokens,
                  "total_tokens": result.usage.total_tokens},
    }
