"""Wire errors: every failure becomes an :class:`ApiError` once, then is rendered in the
shape of the protocol the client spoke (chosen by the request path)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse

from .. import errors as E

OLLAMA_BUSY = "server busy, please try again.  maximum pending requests exceeded"


@dataclass
class ApiError(Exception):
    status: int
    message: str
    kind: str = "invalid_request"  # invalid_request, validation, auth, not_found, too_large,
    param: str | None = None       # overloaded, timeout, not_ready, server, model_error
    retry_after: float | None = None
    headers: dict[str, str] | None = None  # e.g. Allow on a 405


def protocol_of(path: str) -> str:
    if path.startswith("/api/") or path == "/api":
        return "ollama"
    if path in ("/v1/embeddings", "/embeddings"):
        return "openai"
    if path.startswith(("/embed", "/tokenize", "/info")) or path in ("/", "/invocations",
                                                                         "/ping"):
        return "tei"
    return "native"


def from_exception(exc: Exception) -> ApiError:
    """The one mapping from library errors to HTTP statuses."""
    if isinstance(exc, ApiError):
        return exc
    from ..stores import base as S

    if isinstance(exc, S.CollectionNotFoundError):
        return ApiError(404, str(exc), "not_found", "collection")
    if isinstance(exc, S.CollectionExistsError):
        return ApiError(409, str(exc), "invalid_request", "name")
    if isinstance(exc, S.SchemaMismatchError):
        return ApiError(409, str(exc), "invalid_request", "model")
    if isinstance(exc, S.StoreLockedError):
        return ApiError(503, str(exc), "not_ready", retry_after=5)
    if isinstance(exc, E.OverloadedError):
        return ApiError(429, str(exc), "overloaded", retry_after=exc.retry_after)
    if isinstance(exc, E.RequestTimeoutError):
        return ApiError(503, str(exc), "timeout", retry_after=1)
    if isinstance(exc, E.NonFiniteOutputError):
        # The model failed, not the client: a 5xx, never a 200 carrying NaN.
        return ApiError(500, str(exc), "model_error", "input")
    if isinstance(exc, E.InputTooLongError):
        return ApiError(400, str(exc), "too_long", "input")
    if isinstance(exc, E.InvalidInputError):
        return ApiError(400, str(exc), "invalid_request", "input")
    if isinstance(exc, E.InvalidOptionError):
        return ApiError(400, str(exc), "invalid_request", exc.option)
    if isinstance(exc, E.ModelNotFoundError):
        return ApiError(404, str(exc), "not_found", "model")
    if isinstance(exc, E.UnsupportedOutputError):
        return ApiError(400, str(exc), "unsupported", None)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server")


_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                 404: "invalid_request_error", 413: "invalid_request_error",
                 429: "rate_limit_error"}
_OPENAI_CODES = {"auth": "invalid_api_key", "overloaded": "rate_limit_exceeded",
                 "too_long": "context_length_exceeded"}
_TEI_TYPES = {"overloaded": "Overloaded", "timeout": "Overloaded", "not_ready": "Unhealthy",
              "server": "Backend", "unsupported": "Backend", "auth": "Authentication",
              "empty": "Empty", "not_found": "Validation", "model_error": "Backend"}


def render(protocol: str, err: ApiError) -> JSONResponse:
    status = err.status
    headers = dict(err.headers or {})
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    if protocol == "ollama":
        message = err.message
        if err.kind == "overloaded":
            status, message = 503, f"{OLLAMA_BUSY} ({err.message})"
        body = {"error": message}
    elif protocol == "tei":
        if err.kind in ("too_long", "too_large", "validation"):
            status = 413
        elif err.kind == "invalid_request" and status == 400:
            status = 422
        body = {"error": err.message, "error_type": _TEI_TYPES.get(err.kind, "Validation")}
    else:
        default = "server_error" if status >= 500 else "invalid_request_error"
        code = _OPENAI_CODES.get(err.kind)
        if err.kind == "not_found" and err.param in ("model", "collection"):
            code = f"{err.param}_not_found"
        body = {"error": {"message": err.message,
                          "type": _OPENAI_TYPES.get(status, default),
                          "param": err.param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
