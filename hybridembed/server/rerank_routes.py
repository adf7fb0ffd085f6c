"""Rerank and score routes in each peer's wire format, all through one path
(:func:`_score`: the model's reranker service builds the request value, the model's rerank
batcher scores it):

- text-embeddings-inference: ``/rerank`` (``query``, ``texts``, ``raw_scores``,
  ``return_text``, ``truncate``), ``/similarity`` (cosine of dense embeddings) and
  ``/decode`` (token ids back to text);
- Cohere: ``/v1/rerank`` and ``/v2/rerank`` (``query``, ``documents``, ``top_n``,
  ``return_documents``; what Jina's and llama.cpp's clients send too);
- vLLM: ``/score`` (``text_1``, ``text_2``) and ``/rerank`` in the Cohere shape — a
  ``/rerank`` body with ``documents`` is vLLM's, one with ``texts`` TEI's;
- Ollama: ``/api/rerank`` (``model``, ``query``, ``documents``, ``top_n``, ``keep_alive``).

Scores: cross-encoders' logits pass through a sigmoid (0..1, as every peer returns them)
unless TEI's ``raw_scores`` asks for the logits; ``maxsim``/``combined`` scores are
similarities and are returned as computed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from ..errors import InputTooLongError
from ..scores import cosine
from ..service.rerank import relevance_scores
from ..types import RerankResult
from .errors import ApiError
from .wire import (
    KeepAlive,
    WholeNumber,
    WireModel,
    as_list,
    schema_of,
    texts_schema,
    whole_number,
)

router = APIRouter(tags=["rerank"])


class DocumentObject(WireModel):
    """A document given as an object (Cohere v1, Jina): only ``text`` is read."""

    text: str


_DOCUMENTS = schema_of({"type": "array", "minItems": 1,
                        "items": {"anyOf": [{"type": "string"}, {"$ref":
                                  "#/components/schemas/DocumentObject"}]}})
_STRINGS = schema_of({"type": "array", "minItems": 1, "items": {"type": "string"}})
_TOP_N = schema_of({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]})


class CohereRerankRequest(WireModel):
    model: str | None = None
    query: str
    documents: list[str | DocumentObject] = Field(json_schema_extra=_DOCUMENTS)
    top_n: WholeNumber | None = Field(None, json_schema_extra=_TOP_N)
    return_documents: bool = False
    max_tokens_per_doc: whole_number(ge=1) | None = None
    truncate: bool = True
    weights: list[float] | None = Field(None, description="BGE-M3 combined score: (dense, "
                                        "sparse, multivector) weights")
    # vLLM's spelling of truncation; -1 (or any value) cuts to the model's limit
    truncate_prompt_tokens: WholeNumber | None = None
    keep_alive: KeepAlive = None


class OllamaRerankRequest(WireModel):
    model: str
    query: str
    documents: list[str] = Field(json_schema_extra=_STRINGS)
    top_n: WholeNumber | None = Field(None, json_schema_extra=_TOP_N)
    truncate: bool = True
    keep_alive: KeepAlive = None
    options: dict | None = None


class TEIRerankRequest(WireModel):
    query: str
    texts: list[str] = Field(json_schema_extra=_STRINGS)
    truncate: bool | None = None
    truncation_direction: Literal["Right"] = Field(
        "Right", description="cross-encoders cut the longer of query and text on the right")
    raw_scores: bool = False
    return_text: bool = False


class TEISimilarityInputs(WireModel):
    source_sentence: str
    sentences: list[str] = Field(json_schema_extra=_STRINGS)


class TEISimilarityRequest(WireModel):
    inputs: TEISimilarityInputs
    parameters: dict | None = None


_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}


class TEIDecodeRequest(WireModel):
    ids: list[WholeNumber] | list[list[WholeNumber]] = Field(json_schema_extra=schema_of(
        {"anyOf": [_IDS, {"type": "array", "minItems": 1, "items": _IDS}]}))
    skip_special_tokens: bool = True


class VLLMScoreRequest(WireModel):
    model: str | None = None
    text_1: str | list[str] = Field(
        description="one text (or a list of one) scored against each of text_2; a list as "
        "long as text_2 scores pairwise (declared as at most one: the lengths must match)",
        json_schema_extra=schema_of(texts_schema(max_items=1)))
    text_2: str | list[str] = Field(json_schema_extra=schema_of(texts_schema()))
    truncate_prompt_tokens: WholeNumber | None = None


# -- the one scoring path -------------------------------------------------------------------

async def _score(request: Request, model: str | None, query: str, documents: list[str], *,
                 field: str, truncate: bool = True, weights=None, keep_alive=None
                 ) -> RerankResult:
    """Score ``documents`` against ``query`` with the model named (or the default
    reranker): refuse an empty list (400 naming ``field``), build the request value, queue
    it on the model's rerank batcher and wait. The result names the model as served."""
    core = request.app.state.core
    if not documents:
        raise ApiError(400, f"{field} is empty; send at least one document to rank", "empty",
                       field)
    async with core.models.use(model, "rerank", keep_alive) as slot:
        try:
            value = slot.reranker.request(query, documents, truncate=truncate, weights=weights)
        except Exception as exc:  # noqa: BLE001 - re-addressed to this protocol's field
            raise _renamed(exc, field) from None
        try:
            result = await core.rerank(request, value, slot)
        except Exception as exc:  # noqa: BLE001
            raise _renamed(exc, field) from None
    return dataclasses.replace(result, model=slot.name)  # the name the client knows


def _renamed(exc: Exception, field: str) -> Exception:
    """``exc`` with the documents' field named as this protocol names it."""
    if isinstance(exc, InputTooLongError) and exc.field == "documents" != field:
        return InputTooLongError(exc.too_long, exc.limit, exc.partial, exc.partial_indices,
                                 field=field)
    if getattr(exc, "field", None) == "documents":
        exc.field = field
    if isinstance(exc, ApiError) and exc.param == "documents":
        exc.param = field
    return exc


def _top_n(top_n: int | None, n: int, zero_means_all: bool = False) -> int:
    """How many results to return; ``top_n`` over ``n`` returns all ``n``."""
    if top_n is None or (zero_means_all and top_n == 0):
        return n
    if top_n < 1:
        raise ApiError(400, f"top_n must be a whole number >= 1, got {top_n}", param="top_n")
    return min(top_n, n)


def _ranked(scores: np.ndarray, top: int) -> list[int]:
    """Indexes best first (ties keep input order), ``top`` of them."""
    return [int(i) for i in np.argsort(-scores, kind="stable")[:top]]


def _texts_of(documents: list) -> list[str]:
    return [d.text if isinstance(d, DocumentObject) else d for d in documents]


def _validated(model: type[BaseModel], body) -> BaseModel:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]) from None


async def _json_body(request: Request):
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None


# -- Cohere / Jina / llama.cpp / vLLM --------------------------------------------------------

async def _cohere_like(request: Request, body: CohereRerankRequest, version: str,
                       zero_means_all: bool = False) -> dict:
    docs = _texts_of(body.documents)
    top = _top_n(body.top_n, len(docs), zero_means_all)
    truncate = body.truncate or body.truncate_prompt_tokens is not None
    result = await _score(request, body.model, body.query, docs, field="documents",
                          truncate=truncate, weights=body.weights, keep_alive=body.keep_alive)
    scores = relevance_scores(result)
    results = []
    for i in _ranked(scores, top):
        row: dict = {"index": i, "relevance_score": float(scores[i])}
        if body.return_documents:
            row["document"] = {"text": docs[i]}
        results.append(row)
    tokens = result.usage.total_tokens
    return {"id": str(uuid.uuid4()), "model": result.model, "object": "list",
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "meta": {"api_version": {"version": version},
                     "billed_units": {"search_units": math.ceil(len(docs) / 100)},
                     "tokens": {"input_tokens": tokens, "output_tokens": 0}}}


@router.post("/v1/rerank")
async def rerank_v1(body: CohereRerankRequest, request: Request):
    return await _cohere_like(request, body, "1")


@router.post("/v2/rerank")
async def rerank_v2(body: CohereRerankRequest, request: Request):
    return await _cohere_like(request, body, "2")


def _either_body() -> dict:
    """The ``/rerank`` body for the OpenAPI document: TEI's or vLLM's (Cohere shape)."""
    tei = TEIRerankRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    tei.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "anyOf": [tei, {"$ref": "#/components/schemas/CohereRerankRequest"}]}}}}}


_EITHER_ERROR = {"anyOf": [{"$ref": "#/components/schemas/TEIError"},
                           {"$ref": "#/components/schemas/VLLMError"}]}


@router.post("/rerank", openapi_extra=_either_body(), responses={
    status: {"description": "TEI's error body, or vLLM's for a body with documents",
             "content": {"application/json": {"schema": _EITHER_ERROR}}}
    for status in (400, 401, 404, 405, 413, 422, 429, 500, 503)})
async def rerank(request: Request):
    """TEI's ``/rerank`` (a body with ``texts``) or vLLM's (a body with ``documents``)."""
    body = await _json_body(request)
    if isinstance(body, dict) and "documents" in body and "texts" not in body:
        request.state.protocol = "vllm"
        return await _cohere_like(request, _validated(CohereRerankRequest, body), "1",
                                  zero_means_all=True)
    return await _tei_rerank(request, _validated(TEIRerankRequest, body))


@router.post("/score")
@router.post("/v1/score", include_in_schema=False)
async def score(body: VLLMScoreRequest, request: Request):
    """vLLM's ``/score``: ``text_1`` against each of ``text_2`` (one to many), or pairwise
    when both are lists of the same length. A reranker scores the pairs; an embedding
    model that cannot rerank gives the cosine of their dense embeddings, as vLLM does."""
    core = request.app.state.core
    first, second = as_list(body.text_1), as_list(body.text_2)
    if not first or not second:
        raise ApiError(400, "text_1 and text_2 must not be empty", "empty",
                       "text_1" if not first else "text_2")
    if len(first) != 1 and len(first) != len(second):
        raise ApiError(400, f"text_1 has {len(first)} texts and text_2 {len(second)}; give one "
                       "text_1, or as many as text_2 (vLLM's 1:N or N:N)", param="text_1")
    slot = core.models.find(body.model) if body.model else core.models.default("rerank")
    truncate = body.truncate_prompt_tokens is not None
    if slot is not None and slot.can_rerank or slot is None and body.model:
        if len(first) == 1:
            results = [await _score(request, body.model, first[0], second, field="text_2",
                                    truncate=truncate)]
        else:
            results = await asyncio.gather(*(
                _score(request, body.model, q, [d], field="text_2", truncate=truncate)
                for q, d in zip(first, second, strict=True)))
        values = [float(s) for r in results for s in relevance_scores(r)]
        tokens = sum(r.usage.total_tokens for r in results)
        model = results[0].model
    else:
        values, tokens, model = await _cosines(request, body.model, first, second, truncate)
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": model,
            "data": [{"index": i, "object": "score", "score": v} for i, v in enumerate(values)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}


async def _cosines(request: Request, model: str | None, first: list[str], second: list[str],
                   truncate: bool = True) -> tuple[list[float], int, str]:
    """Cosine of the dense embeddings of ``first`` (one, or one per ``second``) and each
    of ``second``, with the embedding model named (or the default)."""
    core = request.app.state.core
    async with core.models.use(model, "embed") as slot:
        emb = slot.embedder
        result = await core.embed(request, emb.request([*first, *second], truncate=truncate),
                                  "native", slot=slot)
    a, b = result.dense[:len(first)], result.dense[len(first):]
    values = [cosine(a[0 if len(first) == 1 else i], b[i]) for i in range(len(second))]
    return values, result.usage.total_tokens, result.model


# -- text-embeddings-inference ---------------------------------------------------------------

async def _tei_rerank(request: Request, body: TEIRerankRequest) -> list[dict]:
    result = await _score(request, None, body.query, body.texts, field="texts",
                          truncate=body.truncate is not False)
    scores = relevance_scores(result, raw=body.raw_scores)
    out = []
    for i in _ranked(scores, len(scores)):
        row: dict = {"index": i, "score": float(scores[i])}
        if body.return_text:
            row["text"] = body.texts[i]
        out.append(row)
    return out


@router.post("/similarity")
async def similarity(body: TEISimilarityRequest, request: Request):
    """TEI's sentence-similarity: cosine of ``source_sentence``'s dense embedding with each
    of ``sentences``'."""
    if not body.inputs.sentences:
        raise ApiError(400, "`sentences` cannot be empty", "empty", "inputs.sentences")
    values, _, _ = await _cosines(request, None, [body.inputs.source_sentence],
                                  body.inputs.sentences)
    return values


@router.post("/decode")
async def decode(body: TEIDecodeRequest, request: Request):
    """Token ids back to text with the default embedding model's tokenizer."""
    core = request.app.state.core
    rows = [body.ids] if not body.ids or isinstance(body.ids[0], int) else body.ids
    if not rows or not any(rows):
        raise ApiError(400, "`ids` cannot be empty", "empty", "ids")
    tok = core.ready().tokenizer
    out = []
    for i, ids in enumerate(rows):
        try:
            out.append(tok.decode(ids, skip_special_tokens=body.skip_special_tokens))
        except ValueError as exc:
            raise ApiError(422, f"ids[{i}]: {exc}", param="ids") from None
    return out


# -- Ollama ---------------------------------------------------------------------------------

@router.post("/api/rerank")
async def ollama_rerank(body: OllamaRerankRequest, request: Request):
    """hybridembed's Ollama-side rerank (Ollama has none): ``{model, query, documents,
    top_n, keep_alive}`` → ``{model, results: [{index, document, relevance_score}],
    total_duration, prompt_eval_count}``, best first."""
    started = time.perf_counter_ns()
    top = _top_n(body.top_n, len(body.documents))
    result = await _score(request, body.model, body.query, body.documents, field="documents",
                          truncate=body.truncate, keep_alive=body.keep_alive)
    scores = relevance_scores(result)
    return {"model": body.model,
            "results": [{"index": i, "document": body.documents[i],
                         "relevance_score": float(scores[i])} for i in _ranked(scores, top)],
            "total_duration": time.perf_counter_ns() - started,
            "prompt_eval_count": result.usage.total_tokens}
