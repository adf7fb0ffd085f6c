"""Ollama wire format: ``/api/embed``, legacy ``/api/embeddings``, and the listing routes
the official client and Ollama-aware apps call."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from .. import __version__
from .models import FOREVER, weights_bytes
from .schemas import (
    OllamaEmbeddingsResponse,
    OllamaEmbedResponse,
    OllamaShowResponse,
    OllamaTagsResponse,
    OllamaVersionResponse,
    ok,
)
from .wire import (
    NO_CONTRADICTION,
    KeepAlive,
    OverflowFields,
    VectorsResponse,
    WireModel,
    accounting_headers,
    as_list,
    usage_lists,
    whole_number,
)

router = APIRouter(tags=["Ollama"])
OLLAMA_VERSION = "0.6.0"  # the Ollama API level these routes follow


class OllamaEmbedRequest(WireModel, OverflowFields):
    """Ollama's fields, plus hybridembed's overflow fields and ``truncation_side`` as
    extensions (Ollama's ``truncate: false`` is overflow ``error``)."""

    model_config = {**WireModel.model_config, "json_schema_extra": NO_CONTRADICTION}

    model: str
    input: str | list[str] = ""
    truncate: bool | None = None
    dimensions: whole_number(ge=1) | None = None
    keep_alive: KeepAlive = None
    options: dict | None = None
    truncation_side: Literal["right", "left"] = "right"


class OllamaEmbeddingsRequest(WireModel):
    model: str
    prompt: str | None = None
    keep_alive: KeepAlive = None
    options: dict | None = None


class OllamaShowRequest(WireModel):
    model: str | None = None
    name: str | None = None


@router.post("/api/embed", responses=ok(OllamaEmbedResponse))
async def embed(body: OllamaEmbedRequest, request: Request):
    core = request.app.state.core
    started = time.perf_counter_ns()
    # As Ollama does: "" and [] (a preload, or with keep_alive 0 an unload) give no
    # embeddings; [""] gives one.
    texts = [] if body.input == "" else as_list(body.input)
    options = {"dimensions": body.dimensions, "truncate": body.truncate,
               "truncation_side": body.truncation_side, **body.overflow_options()}
    async with core.models.use(body.model, "embed", body.keep_alive) as slot:
        if not texts:
            slot.embedder.request([], **options)  # options still checked
            return {"model": body.model, "embeddings": []}
        embed = core.request(slot.embedder, texts, **options)
        result = await core.embed(request, embed, "ollama", slot=slot)
    return VectorsResponse({"model": body.model, "embeddings": result.dense,
                            "total_duration": time.perf_counter_ns() - started,
                            "prompt_eval_count": result.usage.total_tokens,
                            "usage": usage_lists(result.usage)},
                           headers=accounting_headers(result.usage))


@router.post("/api/embeddings", responses=ok(OllamaEmbeddingsResponse))
async def embeddings(body: OllamaEmbeddingsRequest, request: Request):
    core = request.app.state.core
    async with core.models.use(body.model, "embed", body.keep_alive) as slot:
        if not body.prompt:
            return {"embedding": []}
        # Ollama's legacy route returns the model's raw (unnormalised) vector.
        embed = core.request(slot.embedder, [body.prompt], normalize=False)
        result = await core.embed(request, embed, "ollama", slot=slot)
    return VectorsResponse({"embedding": result.dense[0]})


def _model_entry(core, slot) -> dict:
    name = slot.name if ":" in slot.name else slot.name + ":latest"
    family, dtype = "", ""
    if slot.embedder is not None:
        family, dtype = slot.embedder.spec.model_type, slot.embedder.dtype
    elif slot.reranker is not None:
        family, dtype = slot.reranker.reranker.model.config.model_type, slot.reranker.dtype
    return {"name": name, "model": name,
            "modified_at": datetime.fromtimestamp(core.started, UTC).isoformat(),
            "size": slot.bytes or weights_bytes(slot.config.source), "digest": "0" * 64,
            "details": {"parent_model": "", "format": "safetensors", "family": family,
                        "families": [family] if family else [], "parameter_size": "",
                        "quantization_level": dtype.upper()}}


@router.get("/api/tags", responses=ok(OllamaTagsResponse))
async def tags(request: Request):
    """Every configured model, loaded or not."""
    core = request.app.state.core
    return {"models": [_model_entry(core, s) for s in core.models.listing()]}


@router.get("/api/ps")
async def ps(request: Request):
    """The models loaded now, with their memory and when keep_alive unloads them."""
    core = request.app.state.core
    out = []
    for slot in core.models.listing():
        if not slot.loaded:
            continue
        entry = _model_entry(core, slot)
        on_gpu = str(getattr(slot.model, "device", "cpu")).startswith("cuda")
        expires = ("0001-01-01T00:00:00Z" if slot.expires == FOREVER
                   else datetime.fromtimestamp(slot.expires, UTC).isoformat())
        out.append({**entry, "size": slot.bytes, "size_vram": slot.bytes if on_gpu else 0,
                    "expires_at": expires})
    return {"models": out}


@router.get("/api/version", responses=ok(OllamaVersionResponse))
async def version():
    return {"version": OLLAMA_VERSION, "hybridembed": __version__}


@router.post("/api/show", responses=ok(OllamaShowResponse))
async def show(body: OllamaShowRequest, request: Request):
    core = request.app.state.core
    slot = core.models.resolve(body.model or body.name, "embed")
    async with core.models.use(slot.name, "embed"):
        entry = _model_entry(core, slot)
        emb = slot.embedder
        arch = emb.spec.model_type
        return {"details": entry["details"], "modified_at": entry["modified_at"],
                "capabilities": ["embedding"], "license": "", "modelfile": "", "parameters": "",
                "template": "",
                "model_info": {"general.architecture": arch,
                               f"{arch}.context_length": emb.max_length,
                               f"{arch}.embedding_length": emb.dim}}


@router.get("/", response_class=PlainTextResponse, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "Ollama's liveness text (POST / is TEI's embed route)"}})
async def root():
    return PlainTextResponse("Ollama is running (hybridembed)")
