"""Collections over HTTP, backed by the configured store (default: embedded Qdrant Edge in
the data directory): create, list, describe, drop, upsert documents, delete documents,
search. Store calls block (database I/O, embedding), so they run off the event loop."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .wire import WholeNumber, whole_number

router = APIRouter(tags=["collections"])


COLLECTION_NAME = r"^[a-z][a-z0-9_]{0,47}$"  # what every store accepts (stores.base)
CollectionName = Annotated[str, Path(pattern=COLLECTION_NAME)]


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=COLLECTION_NAME)
    multivector: bool = True


PayloadField = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
FilterValue = str | int | bool
Filter = Annotated[dict[PayloadField, FilterValue | Annotated[list[FilterValue],
                                                              Field(min_length=1)]],
                   Field(json_schema_extra={"additionalProperties": False})]


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(pattern=r"^[^\x00]*$", description="no NUL characters (stores refuse them)")
    id: Annotated[str, Field(min_length=1)] | WholeNumber | None = None
    payload: dict[PayloadField, Any] = Field(default_factory=dict, json_schema_extra={
        "additionalProperties": False})


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # One id twice (given, or derived from equal texts): the later document wins.
    documents: list[DocumentIn] = Field(min_length=1)


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    ids: list[str | int]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: str = Field(pattern=r"\S", description="a non-blank text")
    mode: Literal["dense", "sparse", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "dbsf", "weighted"] = "rrf"
    k: whole_number(ge=1, le=1000) = 10
    filter: Filter | None = Field(None, description="{field: value} (equality) or "
                                  "{field: [v1, v2]} (any of), on payload fields")
    rerank: Literal["multivector", "cross-encoder"] | None = None
    candidates: whole_number(ge=1, le=100_000) | None = None
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
async def describe(name: CollectionName, request: Request):
    return await _call(request, "describe", name)


@router.delete("/v1/collections/{name}")
async def drop(name: CollectionName, request: Request):
    await _call(request, "drop_collection", name)
    return {"dropped": name}


@router.post("/v1/collections/{name}/documents")
async def upsert(name: CollectionName, body: UpsertRequest, request: Request):
    core = request.app.state.core
    core.check_inputs([d.text for d in body.documents])
    docs = [d.model_dump() for d in body.documents]
    count = await _call(request, "upsert", name, docs)
    return JSONResponse({"upserted": count, "collection": name})


@router.delete("/v1/collections/{name}/documents")
async def delete(name: CollectionName, body: DeleteRequest, request: Request):
    return {"deleted": await _call(request, "delete", name, body.ids)}


@router.post("/v1/collections/{name}/search")
async def search(name: CollectionName, body: SearchRequest, request: Request):
    hits = await _call(request, "search", name, body.query, mode=body.mode, fusion=body.fusion,
                       k=body.k, filter=body.filter, rerank=body.rerank,
                       candidates=body.candidates, weights=tuple(body.weights))
    return {"collection": name, "hits": [h.to_dict() for h in hits]}
