"""text-embeddings-inference wire format: ``/embed``, ``/embed_sparse``, ``/embed_all``,
``/tokenize``, ``/info``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from .. import __version__
from ..service.batcher import EmbedOptions
from .errors import ApiError

router = APIRouter(tags=["text-embeddings-inference"])
PROMPT_NAMES = ("query", "document")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: str = "Right"
    prompt_name: str | None = None
    dimensions: int | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    inputs: str | list[str]
    add_special_tokens: bool = True


def _parse(body: EmbedRequest) -> tuple[list[str], str, bool]:
    if body.truncation_direction.lower() != "right":
        raise ApiError(400, f"truncation_direction {body.truncation_direction!r} is not "
                       "supported; valid: Right", param="truncation_direction")
    if body.prompt_name not in (None, *PROMPT_NAMES):
        raise ApiError(400, f"unknown prompt_name {body.prompt_name!r}; valid: "
                       + ", ".join(PROMPT_NAMES), param="prompt_name")
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    return texts, body.prompt_name or "document", body.truncate is not False


@router.post("/embed")
async def embed(body: EmbedRequest, request: Request):
    texts, kind, truncate = _parse(body)
    result = await request.app.state.core.embed(
        request, texts, EmbedOptions(kind=kind, dimensions=body.dimensions,
                                     normalize=body.normalize), truncate)
    return result.dense.tolist()


@router.post("/embed_sparse")
async def embed_sparse(body: EmbedRequest, request: Request):
    texts, kind, truncate = _parse(body)
    result = await request.app.state.core.embed(
        request, texts, EmbedOptions(dense=False, sparse=True, kind=kind), truncate)
    return [[{"index": i, "value": v} for i, v in zip(s.indices.tolist(), s.values.tolist(),
                                                      strict=True)] for s in result.sparse]


@router.post("/embed_all")
async def embed_all(body: EmbedRequest, request: Request):
    texts, kind, truncate = _parse(body)
    result = await request.app.state.core.embed(
        request, texts, EmbedOptions(dense=False, multivector=True, kind=kind), truncate)
    return [m.tolist() for m in result.multivector]


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    core = request.app.state.core
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    core.check_inputs(texts)
    tok = core.ready().tokenizer
    return [[{"id": i, "text": t, "special": s, "start": a, "stop": b}
             for i, t, s, a, b in tok.offsets(text) if body.add_special_tokens or not s]
            for text in texts]


@router.get("/info")
async def info(request: Request):
    core = request.app.state.core
    emb = core.ready()
    s = core.settings
    return {"model_id": emb.spec.hf_id or emb.model, "model_sha": None,
            "model_dtype": {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[emb.dtype],
            "model_type": {"embedding": {"pooling": emb.spec.pooling.replace("lasttoken",
                                                                             "last_token")}},
            "max_concurrent_requests": s.max_queued_requests, "max_input_length": emb.max_length,
            "max_batch_tokens": emb.max_batch_tokens,
            "max_batch_requests": s.max_batch_requests or None,
            "max_client_batch_size": s.max_inputs, "auto_truncate": True,
            "tokenization_workers": 1, "version": __version__, "sha": None, "docker_label": None}
