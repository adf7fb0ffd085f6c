"""The FastAPI application: routers of every protocol over one :class:`ServerCore`, an
edge middleware (auth, body size, metrics) and one error handler per failure kind that
renders in the client's protocol."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import Settings
from ..errors import HybridEmbedError, InvalidOptionError
from . import (
    collections_routes,
    fast_path,
    native_routes,
    ollama_routes,
    openai_routes,
    rerank_routes,
    tei_routes,
)
from .core import ServerCore
from .errors import ApiError, from_exception, protocol_of, render
from .metrics import CLOCK, StageClock
from .models import readiness
from .schemas import ReadyResponse, Status, complete_openapi, ok
from .token_ids import POLICIES

PUBLIC_PATHS = ("/health",)
ROUTERS = (native_routes, openai_routes, ollama_routes, tei_routes, rerank_routes,
           collections_routes)


def route_label(path: str, routes: set[str]) -> str:
    """The route template for metrics labels (bounded cardinality)."""
    if path in routes:
        return path
    if path.startswith("/v1/collections/"):
        rest = path.split("/")[4:]
        return "/v1/collections/{name}" + ("/" + rest[0] if rest else "")
    return "other"


def _may_embed(path: str) -> bool:
    """Whether a POST to ``path`` may queue on the default model's embedding batcher (the
    batcher waits briefly for announced requests; reranks, collections, tokenising and
    late chunking never arrive there)."""
    return not (path.startswith("/v1/collections") or "rerank" in path
                or "tokenize" in path or path.endswith("/embed_chunks"))


class _TooLarge(BaseException):
    """Raised from the edge's ``receive`` past ``--max-body-bytes``. A BaseException so
    that FastAPI's body parsing and error middleware (which catch ``Exception``: a 400
    "not valid JSON", a 500) let it through to the edge, which answers 413."""


class EdgeMiddleware:
    """Pure ASGI (it must not break disconnect detection): bearer auth, body size limit,
    request metrics by route and status, and the stage clock of each request (announcing
    POSTs to the batcher, so a batch about to start waits for them to be queued). POSTs
    to ``fast`` routes take :mod:`.fast_path` (``api``: the FastAPI app, for its exception
    handlers)."""

    def __init__(self, app, core: ServerCore, routes: set[str],
                 fast: dict[str, fast_path.FastRoute] | None = None, api=None):
        self.app = app
        self.core = core
        self.routes = routes
        self.fast = fast or {}
        self.api = api

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        protocol = protocol_of(path)
        route = route_label(path, self.routes)
        started = time.perf_counter()
        status: list[int | None] = [None]  # the answer's, once sent
        left = [False]  # a disconnect was read
        clock = StageClock()
        context = CLOCK.set(clock)
        if scope["method"] == "POST" and _may_embed(path):
            self.core.announce(clock)

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if "inference" in clock.seconds:
                    clock.lap("serialize")
            await send(message)
            if (message["type"] == "http.response.body" and not message.get("more_body")
                    and "serialize" in clock.seconds):
                clock.lap("write")

        if scope["method"] == "POST":  # every POST body here is JSON, whatever curl says
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        try:
            error = self._refuse(scope, path)
            if error is not None:
                return await render(protocol, error)(scope, receive, send_tracked)
            limit = self.core.settings.max_body_bytes
            seen = [0]

            async def receive_limited():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > limit:
                        raise _TooLarge
                elif message["type"] == "http.disconnect" and status[0] is None:
                    left[0] = True  # (uvicorn also says so once an answer is complete)
                return message

            try:
                fast = self.fast.get(path) if scope["method"] == "POST" else None
                if fast is not None:
                    await fast_path.serve(fast, self.api, self.app, scope, receive_limited,
                                          send_tracked)
                else:
                    await self.app(scope, receive_limited, send_tracked)
            except _TooLarge:
                if status[0] is None:  # else the answer has begun: nothing more to send
                    await render(protocol, ApiError(413, f"request body over {limit} bytes",
                                                    "too_large"))(scope, receive, send_tracked)
        except BaseException as exc:
            # an escaped error is answered 500 by the server; a task cancelled as the
            # server stops is answered nothing
            if status[0] is None and not isinstance(exc, asyncio.CancelledError):
                status[0] = 500
            raise
        finally:
            self.core.arrived(clock)
            CLOCK.reset(context)
            m = self.core.metrics
            # The client left before an answer began (whatever was then answered went
            # nowhere; FastAPI's path answers a body cut short with a 400), or neither an
            # answer nor an error: 499, as nginx records a client that closed its request.
            m.requests.labels(route, str(499 if left[0] else status[0] or 499)).inc()
            m.latency.labels(route).observe(time.perf_counter() - started)
            m.record_stages(clock)

    def _refuse(self, scope, path: str) -> ApiError | None:
        headers = dict(scope.get("headers") or [])
        key = self.core.settings.api_key
        if key and path not in PUBLIC_PATHS:
            given = headers.get(b"authorization", b"")
            expected = b"Bearer " + key.encode()
            if not hmac.compare_digest(given, expected):
                return ApiError(401, "missing or wrong API key; send 'Authorization: Bearer "
                                "<key>'", "auth")
        length = headers.get(b"content-length")
        limit = self.core.settings.max_body_bytes
        if length and length.isdigit() and int(length) > limit:
            return ApiError(413, f"request body of {int(length)} bytes is over the limit of "
                            f"{limit} bytes", "too_large")
        return None


class EdgedApp(FastAPI):
    """FastAPI with its ``edge`` (an ASGI app: :class:`EdgeMiddleware`, with CORS around
    it when configured) in front of its whole middleware stack rather than inside it: a
    request on a fast route goes from the server straight to the edge, past the
    layers FastAPI puts before user middleware (its telemetry check, error and body-limit
    middleware), which a lone request pays for in cold Python on a small machine. Every
    other request passes through the edge into FastAPI as before. So an error escaping
    the edge itself gets the server's plain 500 rather than the protocol's (the fast path
    renders its routes' errors with the app's handlers), and FastAPI's OpenTelemetry
    instrumentation does not see the hot routes."""

    edge = None

    async def __call__(self, scope, receive, send):
        if self.edge is None or scope["type"] != "http":  # lifespan; websockets
            return await super().__call__(scope, receive, send)
        scope["app"] = self  # as Starlette sets it: routes read ``request.app``
        await self.edge(scope, receive, send)


def create_app(settings: Settings | None = None, embedder=None,
               models: dict | None = None, *, gc_freeze: bool = False) -> EdgedApp:
    """Build the app. With ``embedder`` given, it is used as is (tests, embedding apps);
    otherwise the model named in ``settings`` loads in the background at start-up.
    ``models`` maps more names to models already loaded (an :class:`Embedder` or a
    :class:`~hybridembed.rerank.CrossEncoderReranker`), served beside those of
    ``settings`` (see :mod:`hybridembed.server.models`). ``gc_freeze``: the app owns its
    process (``hybridembed serve``), so the objects alive after each model load are
    frozen out of the garbage collector's full passes
    (:func:`~hybridembed.server.models.freeze_heap`)."""
    settings = settings or Settings.from_env()
    if settings.token_ids not in POLICIES:
        raise InvalidOptionError(f"token_ids must be one of {', '.join(POLICIES)}, got "
                                 f"{settings.token_ids!r}", "token_ids")
    core = ServerCore(settings, gc_freeze=gc_freeze)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await core.start(embedder, models)
        yield
        await core.stop()

    app = EdgedApp(title="hybridembed", version=__version__, lifespan=lifespan,
                  description="Dense, sparse and ColBERT embeddings over native, OpenAI, "
                              "Ollama and text-embeddings-inference wire formats.")
    app.state.core = core
    for module in ROUTERS:
        app.include_router(module.router)

    @app.get("/health", tags=["operations"], responses=ok(Status))
    async def health():
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], responses=ok(ReadyResponse))
    async def ready():
        return readiness(core)

    @app.get("/metrics", tags=["operations"], response_class=Response, responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}},
              "description": "Prometheus text exposition format"}})
    async def metrics():
        b = core.batcher
        cache = core.embedder.stats()["cache"] if core.embedder else None
        body = core.metrics.render(b.queued_texts if b else 0, b.queued_tokens if b else 0, cache)
        return Response(body, media_type="text/plain; version=0.0.4")

    def _respond(request: Request, err: ApiError) -> JSONResponse:
        protocol = getattr(request.state, "protocol", None) or protocol_of(request.url.path)
        return render(protocol, err)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return _respond(request, exc)

    @app.exception_handler(HybridEmbedError)
    async def on_library_error(request: Request, exc: HybridEmbedError):
        return _respond(request, from_exception(exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        return _respond(request, ApiError(400, _describe(exc), "invalid_request",
                                          _first_field(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "invalid_request"}.get(exc.status_code, "invalid_request")
        message = ("request body is not valid UTF-8 JSON" if exc.status_code == 400
                   else f"{exc.detail}: {request.method} {request.url.path}")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; list them all.
            headers["Allow"] = ", ".join(_methods_of(app, request.scope))
            message += f" (allowed: {headers['Allow']})"
        param = "route" if exc.status_code in (404, 405) else None
        return _respond(request, ApiError(exc.status_code, message, kind, param,
                                          headers=headers))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        return _respond(request, from_exception(exc))

    def openapi() -> dict:
        # Completed once the model is loaded (its size and prompts bound the requests).
        if app.openapi_schema is None or getattr(app.state, "openapi_model", None) is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            app.openapi_schema = complete_openapi(schema, protocol_of, core.embedder)
            app.state.openapi_model = core.embedder
        return app.openapi_schema

    app.openapi = openapi
    routes = {r.path for m in ROUTERS for r in m.router.routes}
    routes |= {"/health", "/ready", "/metrics", "/docs", "/openapi.json"}
    fast = fast_path.fast_routes([r for m in ROUTERS for r in m.router.routes])
    async def stack(scope, receive, send):  # FastAPI's own middleware and routing
        await FastAPI.__call__(app, scope, receive, send)

    edge = EdgeMiddleware(stack, core=core, routes=routes, fast=fast, api=app)
    if settings.cors_allow_origin:
        # Outside the edge middleware: a browser's preflight carries no API key.
        from fastapi.middleware.cors import CORSMiddleware

        origins = [o.strip() for o in settings.cors_allow_origin.split(",") if o.strip()]
        edge = CORSMiddleware(edge, allow_origins=origins, allow_methods=["*"],
                              allow_headers=["*"], expose_headers=["Retry-After"])
    app.edge = edge
    return app


def _methods_of(app: FastAPI, scope) -> list[str]:
    """Every method some route accepts on the request's path (the routers' own routes:
    FastAPI wraps included routers in objects that do not expose theirs)."""
    routes = [r for m in ROUTERS for r in m.router.routes] + list(app.router.routes)
    methods: set[str] = set()
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(scope["path"]):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods - {"HEAD"})


def _first_field(exc: RequestValidationError) -> str | None:
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return None
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if loc:
            return loc[0]
    return None


def _describe(exc: RequestValidationError) -> str:
    """One line naming each wrong field, what was received and what is valid. A union
    (``input``: string or list) reports one error per alternative: the field is named
    once, with every alternative's expectation."""
    by_field: dict[str, list[str]] = {}
    received: dict[str, str] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # Union members appear in the location as type names (``list[str]``); drop them.
        name = ".".join(p for p in loc if not any(c in p for c in "[]") and p not in
                        ("str", "int", "bool", "float", "function-after")) or "body"
        by_field.setdefault(name, [])
        msg = err.get("msg", "")
        if msg not in by_field[name]:
            by_field[name].append(msg)
        if name not in received and err.get("type") != "missing":
            received[name] = _shown(err.get("input"))
    parts = []
    for name, msgs in list(by_field.items())[:5]:
        got = f" (received {received[name]})" if name in received else ""
        parts.append(f"{name}: {'; or '.join(msgs[:4])}{got}")
    return "invalid request: " + " | ".join(parts) if parts else json.dumps(exc.errors())[:300]


def _shown(value) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
