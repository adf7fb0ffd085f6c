"""Collections over HTTP, backed by the configured store (default: embedded Qdrant Edge in
the data directory): create, list, describe, drop, upsert documents, delete documents,
search. Store calls block (database I/O, embedding), so they run off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

router = APIRouter(tags=["collections"])


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    multivector: bool = True


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str
    id: str | int | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    documents: list[DocumentIn]


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    ids: list[str | int]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: str
    mode: Literal["dense", "sparse", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "dbsf", "weighted"] = "rrf"
    k: int = Field(10, ge=1, le=10_000)
    filter: dict[str, Any] | None = None
    rerank: Literal["multivector", "cross-encoder"] | None = None
    candidates: int | None = Field(None, ge=1, le=100_000)
    weights: list[float] = Field(default_factory=lambda: [1.0, 1.0], min_length=2, max_length=2)


async def _call(request: Request, method: str, *args, **kwargs):
    store = request.app.state.core.store()
    return await asyncio.to_thread(getattr(store, method), *args, **kwargs)


@router.get("/v1/collections")
async def list_collections(request: Request):
    store = request.app.state.core.store()
    names = await asyncio.to_thread(store.list_collections)
    return {"store": store.kind, "collections": names}


@router.post("/v1/collections", status_code=201)
async def create(body: CreateRequest, request: Request):
    schema = await _call(request, "create_collection", body.name, body.multivector)
    return {"name": body.name, "schema": schema.to_dict()}


@router.get("/v1/collections/{name}")
async def describe(name: str, request: Request):
    return await _call(request, "describe", name)


@router.delete("/v1/collections/{name}")
async def drop(name: str, request: Request):
    await _call(request, "drop_collection", name)
    return {"dropped": name}


@router.post("/v1/collections/{name}/documents")
async def upsert(name: str, body: UpsertRequest, request: Request):
    core = request.app.state.core
    core.check_inputs([d.text for d in body.documents])
    docs = [d.model_dump() for d in body.documents]
    count = await _call(request, "upsert", name, docs)
    return JSONResponse({"upserted": count, "collection": name})


@router.delete("/v1/collections/{name}/documents")
async def delete(name: str, body: DeleteRequest, request: Request):
    return {"deleted": await _call(request, "delete", name, body.ids)}


@router.post("/v1/collections/{name}/search")
async def search(name: str, body: SearchRequest, request: Request):
    hits = await _call(request, "search", name, body.query, mode=body.mode, fusion=body.fusion,
                       k=body.k, filter=body.filter, rerank=body.rerank,
                       candidates=body.candidates, weights=tuple(body.weights))
    return {"collection": name, "hits": [h.to_dict() for h in hits]}
