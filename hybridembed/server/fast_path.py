"""A shorter way through the server for the hot routes: a POST whose route function takes
one wire model and the request goes from the edge straight to that function, skipping
FastAPI's routing, dependency solving and middleware layers, which were most of the
server's own CPU per request (docs/BENCHMARKS.md, issue 18). On two cores that CPU comes
out of the forward passes' share.

The route functions, wire models and error handlers are the app's own; only the way to
them is shorter. A body that does not validate is handed to FastAPI with its bytes
replayed, so every error response is the one FastAPI's path gives; an error raised by the
route function is rendered by the app's own exception handlers."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, get_origin, get_type_hints

from fastapi.datastructures import DefaultPlaceholder
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import HybridEmbedError
from .errors import ApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastRoute:
    """A route function ``endpoint(**{body: model instance, request: Request})``; a
    value it returns that is not a response is sent as FastAPI sends it (JSON, with the
    route's ``status_code``)."""

    model: type[BaseModel]
    endpoint: Callable
    body: str
    request: str
    status_code: int = 200


def fast_routes(routes) -> dict[str, FastRoute]:
    """``{path: FastRoute}`` for every POST route among ``routes`` (FastAPI routes) whose
    async function takes exactly one plain pydantic model (no ``Annotated`` body options)
    and the request, with no dependencies, no path parameters, no response model and the
    default response class; other routes keep FastAPI's path. Where two routes share a
    path, the first is taken, as FastAPI's router takes it."""
    out: dict[str, FastRoute | None] = {}
    for route in routes:
        if isinstance(route, APIRoute) and "POST" in route.methods:
            out.setdefault(route.path, _fast(route))  # FastAPI's router: the first wins
    return {path: fast for path, fast in out.items() if fast is not None}


def _fast(route: APIRoute) -> FastRoute | None:
    if ("{" in route.path or route.response_model is not None
            or not isinstance(route.response_class, DefaultPlaceholder)
            or route.dependencies or not inspect.iscoroutinefunction(route.endpoint)):
        return None
    params = inspect.signature(route.endpoint).parameters
    hints = get_type_hints(route.endpoint, include_extras=True)
    body = [n for n in params if isinstance(hints.get(n), type)
            and get_origin(hints[n]) is not Annotated and issubclass(hints[n], BaseModel)]
    request = [n for n in params if hints.get(n) is Request]
    if len(params) == 2 and len(body) == 1 and len(request) == 1:
        return FastRoute(hints[body[0]], route.endpoint, body[0], request[0],
                         route.status_code or 200)
    return None


async def serve(route: FastRoute, api, app, scope, receive, send) -> None:
    """Answer one request through ``route``; ``api`` (the FastAPI app) lends its
    exception handlers, ``app`` (the ASGI app below the edge) takes a body that does not
    validate."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client left before sending its body: nothing to answer
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    try:
        value = route.model.model_validate_json(body)
    except ValidationError:
        return await app(scope, _replay(body, receive), send)
    request = Request(scope, receive, send)
    try:
        response = await route.endpoint(**{route.body: value, route.request: request})
        if not isinstance(response, Response):
            response = JSONResponse(jsonable_encoder(response), status_code=route.status_code)
    except Exception as exc:  # noqa: BLE001 - rendered as the app renders it
        response = await _handled(api, request, exc)
    await response(scope, receive, send)


async def _handled(api, request: Request, exc: Exception):
    if not isinstance(exc, ApiError | HybridEmbedError | HTTPException):
        # FastAPI's path logs these (its error middleware re-raises to the server)
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
    for kind in type(exc).__mro__:
        handler = api.exception_handlers.get(kind)
        if handler is not None:
            return await handler(request, exc)
    raise exc


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
