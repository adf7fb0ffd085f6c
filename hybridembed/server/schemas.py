"""The OpenAPI document tells the truth: response bodies of every route, every status the
server sends with the protocol's error body, and request constraints that only the loaded
model knows (dimensions up to its size, its prompt names). Routes name their 200 models
here; :func:`complete_openapi` adds the rest to FastAPI's generated document once.
``tests/server/test_openapi.py`` runs schemathesis over the app to keep it so."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


# -- error bodies, one per protocol ----------------------------------------------------------
class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's (and the native API's) error body."""

    error: OpenAIErrorDetail


class OllamaError(BaseModel):
    error: str


class TEIError(BaseModel):
    error: str
    error_type: str


ERROR_MODELS: dict[str, type[BaseModel]] = {"openai": OpenAIError, "native": OpenAIError,
                                            "ollama": OllamaError, "tei": TEIError}
# What each protocol answers besides 200: bad input (TEI: 422 for types, 413 for values, as
# TEI), auth, unknown model/route/collection, body or input count too large, overload
# (Ollama: 503 "server busy", as Ollama), a failed model, not ready / timed out.
ERROR_STATUSES: dict[str, tuple[int, ...]] = {
    "openai": (400, 401, 404, 405, 409, 413, 429, 500, 503),
    "native": (400, 401, 404, 405, 409, 413, 429, 500, 503),
    "ollama": (400, 401, 404, 405, 413, 500, 503),
    "tei": (400, 401, 404, 405, 413, 422, 429, 500, 503),
}


# -- 200 bodies ----------------------------------------------------------------------------------
class OpenAIEmbedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian "
                                                      "float32 with encoding_format=base64")


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: str = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OllamaEmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    prompt_eval_count: int | None = None


class OllamaEmbeddingsResponse(BaseModel):
    embedding: list[float]


class OllamaModelDetails(BaseModel):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class OllamaModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaModelDetails


class OllamaTagsResponse(BaseModel):
    models: list[OllamaModel]


class OllamaVersionResponse(BaseModel):
    version: str
    hybridembed: str


class OllamaShowResponse(BaseModel):
    details: OllamaModelDetails
    modified_at: str
    capabilities: list[str]
    license: str
    modelfile: str
    parameters: str
    template: str
    model_info: dict[str, Any]


class SparseEntry(BaseModel):
    index: int
    value: float


class TEIToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TEIInfo(BaseModel):
    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[str, Any]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int | None
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None


class Status(BaseModel):
    status: str


class NativeSparse(BaseModel):
    indices: list[int]
    values: list[float]
    tokens: dict[str, float] | None = None


class NativeRow(BaseModel):
    index: int
    tokens: int
    dense: list[float] | None = None
    sparse: NativeSparse | None = None
    multivector: list[list[float]] | None = None


class NativeUsage(BaseModel):
    tokens: list[int]
    total_tokens: int


class NativeEmbedResponse(BaseModel):
    model: str
    data: list[NativeRow]
    usage: NativeUsage


class NativeTokens(BaseModel):
    ids: list[int]
    strings: list[str]


class NativeTokenizeResponse(BaseModel):
    tokens: list[NativeTokens]


class ModelCard(BaseModel):
    id: str
    object: str
    created: int
    owned_by: str
    hf_id: str | None
    dim: int
    max_length: int
    pooling: str
    sparse: str
    multivector_dim: int | None
    device: str
    dtype: str


class ModelList(BaseModel):
    object: str
    data: list[ModelCard]


class ReadyResponse(BaseModel):
    status: str
    model: str
    device: str
    load_seconds: float


def ok(model) -> dict:
    """``responses=`` of a route whose 200 body is ``model``."""
    return {200: {"model": model}}


# -- completing FastAPI's document ---------------------------------------------------------------
def complete_openapi(schema: dict, protocol_of, embedder=None) -> dict:
    """Add to each operation the error statuses its protocol sends, with that protocol's
    error body (dropping FastAPI's default 422 body, which no route sends), and, once the
    model is loaded, the constraints only it knows: ``dimensions`` at most its size and
    ``prompt_name`` one of its prompts."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model in {"OpenAIError": OpenAIError, "OllamaError": OllamaError,
                        "TEIError": TEIError}.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[name] = body
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for path, item in schema.get("paths", {}).items():
        protocol = protocol_of(path)
        ref = {"$ref": f"#/components/schemas/{ERROR_MODELS[protocol].__name__}"}
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in ERROR_STATUSES[protocol]:
                responses.setdefault(str(status), {
                    "description": _DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": ref}}})
    if embedder is not None:
        prompts = sorted(set(embedder.spec.prompts) | {"query", "document"})
        for model in components.values():
            props = model.get("properties", {})
            if "dimensions" in props:
                props["dimensions"] = {"anyOf": [{"type": "integer", "minimum": 1,
                                                  "maximum": embedder.dim}, {"type": "null"}],
                                       "title": "Dimensions"}
            if "prompt_name" in props:
                props["prompt_name"] = {"anyOf": [{"type": "string", "enum": prompts},
                                                  {"type": "null"}], "title": "Prompt Name"}
    return schema


_DESCRIPTIONS = {400: "Bad input: the field, what was received and what is valid",
                 401: "Missing or wrong API key", 404: "Unknown model, route or collection",
                 405: "Method not allowed (see the Allow header)",
                 409: "Collection exists, or a schema mismatch",
                 413: "Body, input count or (TEI) an input's value is too large or invalid",
                 422: "Wrong JSON types (TEI)", 429: "Overloaded: retry after Retry-After",
                 500: "The model failed (for example a non-finite output)",
                 503: "Model not ready, overloaded (Ollama) or timed out"}
