"""text-embeddings-inference wire format: ``/embed``, ``/embed_sparse``, ``/embed_all``,
``/tokenize``, ``/info``."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from .. import __version__
from ..types import EmbedRequest
from .errors import ApiError
from .schemas import SparseEntry, Status, TEIInfo, TEIToken, ok
from .wire import (
    NO_CONTRADICTION,
    OverflowFields,
    VectorsResponse,
    WireModel,
    accounting_headers,
    as_list,
    schema_of,
    texts_schema,
    whole_number,
)

router = APIRouter(tags=["text-embeddings-inference"])


class TEIEmbedRequest(WireModel, OverflowFields):
    """TEI's fields, plus hybridembed's overflow fields as extensions; TEI's bodies are
    bare lists, so the token accounting comes back in ``x-hybridembed-*`` headers."""

    model_config = {**WireModel.model_config, "json_schema_extra": NO_CONTRADICTION}

    inputs: str | list[str] = Field(json_schema_extra=schema_of(texts_schema(min_length=1)))
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: Literal["Right", "Left"] = "Right"
    prompt_name: str | None = Field(None, description="a key of the model's prompts "
                                    "(query and document always work)")
    dimensions: whole_number(ge=1) | None = None
    max_active_dims: whole_number(ge=1) | None = Field(
        None, description="hybridembed extension for /embed_sparse: keep only this many "
        "heaviest entries of each sparse vector")


class TEITokenizeRequest(WireModel):
    inputs: str | list[str] = Field(json_schema_extra=schema_of(texts_schema()))
    add_special_tokens: bool = True


def _request(core, emb, body: TEIEmbedRequest, **outputs) -> EmbedRequest:
    """The request value of a TEI body. As TEI does, an empty batch is 400 ``Empty``, an
    empty text 413 ``Validation``, and the request's ``truncation_direction`` (not the
    folder's tokenizer config) decides which end of an over-long text is kept."""
    texts = as_list(body.inputs)
    if not texts:
        raise ApiError(400, "`inputs` cannot be empty", "empty", "inputs")
    if "" in texts:
        raise ApiError(413, f"`inputs` cannot be empty (input {texts.index('')} is an empty "
                       "string)", "validation", "inputs")
    kind = "query" if body.prompt_name == "query" else "document"
    return core.request(
        emb, texts, kind=kind, prompt_name=body.prompt_name, truncate=body.truncate,
        truncation_side=body.truncation_direction.lower(), **body.overflow_options(),
        **outputs)


async def _embed(request: Request, body: TEIEmbedRequest, render, **outputs):
    """TEI has no model field: the default embedding model answers. TEI's bare lists have
    no room for token accounting: it goes in ``x-hybridembed-*`` headers. ``render`` makes
    the body from the result."""
    core = request.app.state.core
    async with core.models.use(None, "embed") as slot:
        result = await core.embed(request, _request(core, slot.embedder, body, **outputs),
                                  "tei", slot=slot)
    return VectorsResponse(render(result), headers=accounting_headers(result.usage))


@router.post("/embed", responses=ok(list[list[float]]))
@router.post("/", responses=ok(list[list[float]]),
             summary="Embed (TEI's root route; GET / is Ollama's liveness text)")
@router.post("/invocations", responses=ok(list[list[float]]),
             summary="Embed (TEI's SageMaker route)")
async def embed(body: TEIEmbedRequest, request: Request):
    return await _embed(request, body, lambda r: r.dense, dimensions=body.dimensions,
                        normalize=body.normalize)


@router.post("/embed_sparse", responses=ok(list[list[SparseEntry]]))
async def embed_sparse(body: TEIEmbedRequest, request: Request):
    return await _embed(request, body, lambda r: [
        [{"index": i, "value": v} for i, v in zip(s.indices.tolist(), s.values.tolist(),
                                                  strict=True)] for s in r.sparse],
        dense=False, sparse=True, dimensions=body.dimensions,
        max_active_dims=body.max_active_dims)


@router.post("/embed_all", responses=ok(list[list[list[float]]]))
async def embed_all(body: TEIEmbedRequest, request: Request):
    return await _embed(request, body, lambda r: r.multivector, dense=False, multivector=True,
                        dimensions=body.dimensions)


@router.post("/tokenize", responses=ok(list[list[TEIToken]]))
async def tokenize(body: TEITokenizeRequest, request: Request):
    core = request.app.state.core
    texts = as_list(body.inputs)
    core.check_inputs(texts, "tei")
    core.ready().request(texts)  # the same text checks as embedding
    tok = core.ready().tokenizer
    return [[{"id": i, "text": t, "special": s, "start": a, "stop": b}
             for i, t, s, a, b in tok.offsets(text) if body.add_special_tokens or not s]
            for text in texts]


@router.get("/ping", responses=ok(Status))
async def ping(request: Request):
    """TEI's SageMaker health route: 200 once the model is loaded, 503 before."""
    request.app.state.core.ready()
    return {"status": "ok"}


@router.get("/info", responses=ok(TEIInfo))
async def info(request: Request):
    """The default embedding model as TEI describes one; on a server with no embedding
    model, the default reranker (TEI's ``model_type: reranker``)."""
    core = request.app.state.core
    if core.models is not None and core.models.default("embed") is None:
        async with core.models.use(None, "rerank") as slot:
            model = slot.reranker
            labels = {"0": "LABEL_0"}
            return _info(core, model.reranker.hf_id or slot.name, model.dtype,
                         {"reranker": {"id2label": labels, "label2id": {"LABEL_0": 0}}},
                         model.max_length, model.max_batch_tokens)
    emb = core.ready()
    return _info(core, emb.spec.hf_id or emb.model, emb.dtype,
                 {"embedding": {"pooling": emb.spec.pooling.replace("lasttoken", "last_token")}},
                 emb.max_length, emb.max_batch_tokens)


def _info(core, model_id: str, dtype: str, model_type: dict, max_length: int,
          max_batch_tokens: int) -> dict:
    s = core.settings
    return {"model_id": model_id, "model_sha": None,
            "model_dtype": {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype],
            "model_type": model_type,
            "max_concurrent_requests": s.max_queued_requests, "max_input_length": max_length,
            "max_batch_tokens": max_batch_tokens,
            "max_batch_requests": s.max_batch_requests or None,
            "max_client_batch_size": core.input_limit("tei"), "auto_truncate": True,
            "tokenization_workers": 1, "version": __version__, "sha": None, "docker_label": None}
