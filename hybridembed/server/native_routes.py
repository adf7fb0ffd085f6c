"""hybridembed's own API: every representation in one call (``/v1/embed``), tokenisation
and the model list (OpenAI-compatible ``/v1/models`` with more fields)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from .models import describe
from .schemas import ModelList, NativeEmbedResponse, NativeTokenizeResponse, ok
from .wire import NativeModel, as_list, schema_of, texts_schema, whole_number

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
    texts = as_list(body.inputs)
    async with core.models.use(body.model, "embed") as slot:
        emb = slot.embedder
        result = await core.embed(request, emb.request(
            texts, dense=body.dense, sparse=body.sparse, multivector=body.multivector,
            kind=body.kind, prompt_name=body.prompt_name, truncate=body.truncate,
            truncation_side=body.truncation_side, dimensions=body.dimensions,
            normalize=body.normalize), slot=slot)
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
    """Every configured model (OpenAI's list shape, with more fields): loaded or not, its
    task, memory and, when loaded, its dimensions and limits."""
    core = request.app.state.core
    data = []
    for slot in core.models.listing():
        row = {"id": slot.name, "object": "model", "created": int(core.started),
               "owned_by": "hybridembed", **describe(slot)}
        if slot.embedder is not None:
            spec = slot.embedder.spec
            row.update(hf_id=spec.hf_id, family=spec.family, dim=spec.dim,
                       max_length=spec.max_length, pooling=spec.pooling, sparse=spec.sparse_kind,
                       multivector_dim=spec.multivector_dim)
        elif slot.reranker is not None:
            row.update(hf_id=slot.reranker.reranker.hf_id, max_length=slot.reranker.max_length)
        data.append(row)
    return {"object": "list", "data": data}
