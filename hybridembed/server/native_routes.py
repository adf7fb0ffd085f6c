"""hybridembed's own API: every representation in one call (``/v1/embed``), tokenisation
and the model list (OpenAI-compatible ``/v1/models`` with more fields)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ..service.batcher import EmbedOptions

router = APIRouter(tags=["hybridembed"])


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: str | list[str]
    model: str | None = None
    dense: bool = True
    sparse: bool = False
    multivector: bool = False
    kind: Literal["document", "query"] = "document"
    truncate: bool = True
    dimensions: int | None = None
    normalize: bool = True
    sparse_tokens: bool = False


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: str | list[str]
    truncate: bool = True


@router.post("/v1/embed")
async def embed(body: EmbedRequest, request: Request):
    core = request.app.state.core
    core.check_model(body.model)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    options = EmbedOptions(dense=body.dense, sparse=body.sparse, multivector=body.multivector,
                           kind=body.kind, dimensions=body.dimensions, normalize=body.normalize)
    result = await core.embed(request, texts, options, body.truncate)
    emb = core.ready()
    data = []
    for i, item in enumerate(result):
        row: dict = {"index": i, "tokens": item.tokens}
        if item.dense is not None:
            row["dense"] = item.dense.tolist()
        if item.sparse is not None:
            row["sparse"] = item.sparse.to_json()
            if body.sparse_tokens:
                row["sparse"]["tokens"] = emb.sparse_tokens(item.sparse, texts[i])
        if item.multivector is not None:
            row["multivector"] = item.multivector.tolist()
        data.append(row)
    return {"model": emb.model, "data": data,
            "usage": {"tokens": result.usage.tokens, "total_tokens": result.usage.total_tokens}}


@router.post("/v1/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    core = request.app.state.core
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    core.check_inputs(texts)
    emb = core.ready()
    ids = emb.tokenize(texts, truncate=body.truncate)
    return {"tokens": [{"ids": row, "strings": [emb.tokenizer.id_to_token(t) for t in row]}
                       for row in ids]}


@router.get("/v1/models")
async def models(request: Request):
    core = request.app.state.core
    emb = core.ready()
    spec = emb.spec
    return {"object": "list", "data": [{
        "id": emb.model, "object": "model", "created": int(core.started),
        "owned_by": "hybridembed", "hf_id": spec.hf_id, "family": spec.family, "dim": spec.dim,
        "max_length": spec.max_length, "pooling": spec.pooling, "sparse": spec.sparse_kind,
        "multivector_dim": spec.multivector_dim, "device": emb.device, "dtype": emb.dtype}]}
