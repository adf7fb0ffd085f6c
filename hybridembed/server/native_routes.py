"""hybridembed's own API: every representation in one call (``/v1/embed``), tokenisation
and the model list (OpenAI-compatible ``/v1/models`` with more fields)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from .schemas import ModelList, NativeEmbedResponse, NativeTokenizeResponse, ok
from .wire import NativeModel, VectorsResponse, as_list, schema_of, texts_schema, whole_number

router = APIRouter(tags=["hybridembed"])


class NativeEmbedRequest(NativeModel):
    # At least one output: dense (default true), sparse or multivector.
    model_config = {**NativeModel.model_config, "json_schema_extra": {"anyOf": [
        {"properties": {"dense": {"const": True}}},
        {"properties": {"sparse": {"const": True}}, "required": ["sparse"]},
        {"properties": {"multivector": {"const": True}}, "required": ["multivector"]}]}}
    inputs: str | list[str] = Field(json_schema_extra=schema_of(texts_schema()))
    model: str | None = None
    dense: bool = True
    sparse: bool = False
    multivector: bool = False
    kind: Literal["document", "query"] = "document"
    prompt_name: str | None = None
    truncate: bool = True
    truncation_side: Literal["right", "left"] = "right"
    dimensions: whole_number(ge=1) | None = None
    normalize: bool = True
    sparse_tokens: bool = False


class NativeTokenizeRequest(NativeModel):
    inputs: str | list[str] = Field(json_schema_extra=schema_of(texts_schema()))
    truncate: bool = True
    truncation_side: Literal["right", "left"] = "right"


@router.post("/v1/embed", responses=ok(NativeEmbedResponse))
async def embed(body: NativeEmbedRequest, request: Request):
    core = request.app.state.core
    core.check_model(body.model)
    texts = as_list(body.inputs)
    emb = core.ready()
    result = await core.embed(request, core.request(
        texts, dense=body.dense, sparse=body.sparse, multivector=body.multivector,
        kind=body.kind, prompt_name=body.prompt_name, truncate=body.truncate,
        truncation_side=body.truncation_side, dimensions=body.dimensions,
        normalize=body.normalize))
    data = []
    for i, item in enumerate(result):
        row: dict = {"index": i, "tokens": item.tokens}
        if item.dense is not None:
            row["dense"] = item.dense
        if item.sparse is not None:
            row["sparse"] = item.sparse.to_json()
            if body.sparse_tokens:
                row["sparse"]["tokens"] = emb.sparse_tokens(item.sparse, texts[i])
        if item.multivector is not None:
            row["multivector"] = item.multivector
        data.append(row)
    return VectorsResponse({"model": emb.model, "data": data, "usage": {
        "tokens": result.usage.tokens, "total_tokens": result.usage.total_tokens}})


@router.post("/v1/tokenize", responses=ok(NativeTokenizeResponse))
async def tokenize(body: NativeTokenizeRequest, request: Request):
    core = request.app.state.core
    texts = as_list(body.inputs)
    core.check_inputs(texts)
    emb = core.ready()
    ids = emb.tokenize(texts, truncate=body.truncate, truncation_side=body.truncation_side)
    return {"tokens": [{"ids": row, "strings": [emb.tokenizer.id_to_token(t) for t in row]}
                       for row in ids]}


@router.get("/v1/models", responses=ok(ModelList))
async def models(request: Request):
    core = request.app.state.core
    emb = core.ready()
    spec = emb.spec
    return {"object": "list", "data": [{
        "id": emb.model, "object": "model", "created": int(core.started),
        "owned_by": "hybridembed", "hf_id": spec.hf_id, "dim": spec.dim,
        "max_length": spec.max_length, "pooling": spec.pooling, "sparse": spec.sparse_kind,
        "multivector_dim": spec.multivector_dim, "device": emb.device, "dtype": emb.dtype}]}
