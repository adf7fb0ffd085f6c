"""hybridembed's own API: every representation in one call (``/v1/embed``), late
chunking of one document (``/v1/embed_chunks``), tokenisation and the model list
(OpenAI-compatible ``/v1/models`` with more fields)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from .models import describe
from .schemas import (
    ModelList,
    NativeChunksResponse,
    NativeEmbedResponse,
    NativeTokenizeResponse,
    ok,
)
from .wire import (
    NO_CONTRADICTION,
    NativeModel,
    OverflowFields,
    VectorsResponse,
    accounting_headers,
    as_list,
    schema_of,
    texts_schema,
    usage_lists,
    whole_number,
)

router = APIRouter(tags=["hybridembed"])


class NativeEmbedRequest(NativeModel, OverflowFields):
    # At least one output: dense (default true), sparse or multivector.
    model_config = {**NativeModel.model_config, "json_schema_extra": {"anyOf": [
        {"properties": {"dense": {"const": True}}},
        {"properties": {"sparse": {"const": True}}, "required": ["sparse"]},
        {"properties": {"multivector": {"const": True}}, "required": ["multivector"]}],
        **NO_CONTRADICTION}}
    inputs: str | list[str] = Field(json_schema_extra=schema_of(texts_schema()))
    model: str | None = None
    dense: bool = True
    sparse: bool = False
    multivector: bool = False
    kind: Literal["document", "query"] = "document"
    prompt_name: str | None = None
    truncate: bool | None = None
    truncation_side: Literal["right", "left"] = "right"
    dimensions: whole_number(ge=1) | None = None
    normalize: bool = True
    max_active_dims: whole_number(ge=1) | None = Field(
        None, description="keep only this many heaviest entries of each sparse vector")
    sparse_tokens: bool = False


class NativeChunksRequest(NativeModel):
    """One document and its chunks: exactly one of ``spans`` (character ``[start, end]``
    pairs), ``every`` (tokens per chunk, with ``overlap``) or ``chunks`` (texts that
    concatenate to the document)."""

    document: str
    model: str | None = None
    spans: list[list[whole_number(ge=0)]] | None = None
    every: whole_number(ge=1) | None = None
    overlap: whole_number(ge=0) = 0
    chunks: list[str] | None = None
    dense: bool = True
    sparse: bool = False
    multivector: bool = False
    kind: Literal["document", "query"] = "document"
    prompt_name: str | None = None
    dimensions: whole_number(ge=1) | None = None
    normalize: bool = True
    max_active_dims: whole_number(ge=1) | None = Field(
        None, description="keep only this many heaviest entries of each sparse vector")
    window_overlap: whole_number(ge=0) | None = None
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
        result = await core.embed(request, core.request(
            emb, texts, dense=body.dense, sparse=body.sparse, multivector=body.multivector,
            kind=body.kind, prompt_name=body.prompt_name, truncate=body.truncate,
            truncation_side=body.truncation_side, dimensions=body.dimensions,
            max_active_dims=body.max_active_dims,
            normalize=body.normalize, **body.overflow_options()), slot=slot)
    data = []
    for i, item in enumerate(result):
        data.append({"index": i, **result.usage.row(i),
                     **_row(emb, item, texts[i], body.sparse_tokens)})
    return VectorsResponse({"model": emb.model, "data": data, "usage": {
        **usage_lists(result.usage), "total_tokens": result.usage.total_tokens}},
        headers=accounting_headers(result.usage))


def _row(emb, item, text: str, sparse_tokens: bool) -> dict:
    """The vectors of one embedded text (or chunk) as the native API writes them (arrays
    as they are: :class:`VectorsResponse` renders them)."""
    row: dict = {}
    if item.dense is not None:
        row["dense"] = item.dense
    if item.sparse is not None:
        row["sparse"] = item.sparse.to_json()
        if sparse_tokens:
            row["sparse"]["tokens"] = emb.sparse_tokens(item.sparse, text)
    if item.multivector is not None:
        row["multivector"] = item.multivector
    return row


@router.post("/v1/embed_chunks", responses=ok(NativeChunksResponse))
async def embed_chunks(body: NativeChunksRequest, request: Request):
    """Late chunking: one result per chunk, pooled from token states of the whole
    document. Runs beside the batcher (the model is shared under the Embedder's lock)."""
    core = request.app.state.core
    spans = None if body.spans is None else [tuple(s) for s in body.spans]
    async with core.models.use(body.model, "embed") as slot:
        emb = slot.embedder
        got = await asyncio.to_thread(
            emb.embed_chunks, body.document, spans=spans, every=body.every,
            overlap=body.overlap, chunks=body.chunks, dense=body.dense, sparse=body.sparse,
            multivector=body.multivector, kind=body.kind, prompt_name=body.prompt_name,
            dimensions=body.dimensions, normalize=body.normalize,
            window_overlap=body.window_overlap, max_active_dims=body.max_active_dims)
    data = [{"index": i, "text": c.text, "start": c.start, "end": c.end, "tokens": c.tokens,
             **_row(emb, item, c.text, body.sparse_tokens)}
            for i, (c, item) in enumerate(got)]
    return VectorsResponse({"model": emb.model, "data": data, "usage": {
        "document_tokens": got.document_tokens, "windows": got.windows,
        "total_tokens": got.tokens}})


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
