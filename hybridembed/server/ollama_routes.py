"""Ollama wire format: ``/api/embed``, legacy ``/api/embeddings``, and the listing routes
the official client and Ollama-aware apps call."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from .. import __version__
from .schemas import (
    OllamaEmbeddingsResponse,
    OllamaEmbedResponse,
    OllamaShowResponse,
    OllamaTagsResponse,
    OllamaVersionResponse,
    ok,
)
from .wire import VectorsResponse, WireModel, as_list, whole_number

router = APIRouter(tags=["Ollama"])
OLLAMA_VERSION = "0.6.0"  # the Ollama API level these routes follow


class OllamaEmbedRequest(WireModel):
    model: str
    input: str | list[str] = ""
    truncate: bool | None = True
    dimensions: whole_number(ge=1) | None = None
    keep_alive: Any = None
    options: dict | None = None


class OllamaEmbeddingsRequest(WireModel):
    model: str
    prompt: str | None = None
    keep_alive: Any = None
    options: dict | None = None


class OllamaShowRequest(WireModel):
    model: str | None = None
    name: str | None = None


@router.post("/api/embed", responses=ok(OllamaEmbedResponse))
async def embed(body: OllamaEmbedRequest, request: Request):
    core = request.app.state.core
    core.check_model(body.model)
    started = time.perf_counter_ns()
    # As Ollama does: "" and [] (a preload) give no embeddings; [""] gives one.
    texts = [] if body.input == "" else as_list(body.input)
    if not texts:
        core.ready().request([], dimensions=body.dimensions)  # options still checked
        return {"model": body.model, "embeddings": []}
    embed = core.request(texts, dimensions=body.dimensions, truncate=body.truncate is not False)
    result = await core.embed(request, embed, "ollama")
    return VectorsResponse({"model": body.model, "embeddings": result.dense,
                            "total_duration": time.perf_counter_ns() - started,
                            "prompt_eval_count": result.usage.total_tokens})


@router.post("/api/embeddings", responses=ok(OllamaEmbeddingsResponse))
async def embeddings(body: OllamaEmbeddingsRequest, request: Request):
    core = request.app.state.core
    core.check_model(body.model)
    if not body.prompt:
        return {"embedding": []}
    # Ollama's legacy route returns the model's raw (unnormalised) vector.
    embed = core.request([body.prompt], normalize=False)
    result = await core.embed(request, embed, "ollama")
    return VectorsResponse({"embedding": result.dense[0]})


def _model_entry(core) -> dict:
    emb = core.ready()
    name = emb.model if ":" in emb.model else emb.model + ":latest"
    return {"name": name, "model": name,
            "modified_at": datetime.fromtimestamp(core.started, UTC).isoformat(),
            "size": 0, "digest": "0" * 64,
            "details": {"parent_model": "", "format": "safetensors", "family": emb.spec.model_type,
                        "families": [emb.spec.model_type], "parameter_size": "",
                        "quantization_level": emb.dtype.upper()}}


@router.get("/api/tags", responses=ok(OllamaTagsResponse))
async def tags(request: Request):
    return {"models": [_model_entry(request.app.state.core)]}


@router.get("/api/version", responses=ok(OllamaVersionResponse))
async def version():
    return {"version": OLLAMA_VERSION, "hybridembed": __version__}


@router.post("/api/show", responses=ok(OllamaShowResponse))
async def show(body: OllamaShowRequest, request: Request):
    core = request.app.state.core
    core.check_model(body.model or body.name)
    entry = _model_entry(core)
    emb = core.ready()
    arch = emb.spec.model_type
    return {"details": entry["details"], "modified_at": entry["modified_at"],
            "capabilities": ["embedding"], "license": "", "modelfile": "", "parameters": "",
            "template": "",
            "model_info": {"general.architecture": arch, f"{arch}.context_length": emb.max_length,
                           f"{arch}.embedding_length": emb.dim}}


@router.get("/", response_class=PlainTextResponse, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "Ollama's liveness text (POST / is TEI's embed route)"}})
async def root():
    return PlainTextResponse("Ollama is running (hybridembed)")
