"""The least an HTTP server on uvicorn adds to an embedding: a bare ASGI app, no framework,
that reads ``{"input": [texts]}``, embeds the texts inline with ``Embedder.embed`` and
answers ``{"data": [{"embedding": base64 float32}]}``, with the model loaded and served
the way ``hybridembed serve`` loads and serves it (the same ``HYBRIDEMBED_*`` settings
and the runtime's serving options, e.g. ONNX Runtime's threads not spinning after a
call, through :func:`~hybridembed.server.models.served_embedder`; uvicorn's defaults, no
access log).

``hybridembed loadtest --floor`` measures its one-client latency against the same
in-process worker as the real server's: what is left between the two is what the server's
own work (validation, admission, batching, accounting, metrics) costs, and what is left
between this app and in-process is the machine's and uvicorn's, which no change to the
server can remove. Not a server to deploy: no validation, no errors in any protocol's
shape.

Run as ``python -m hybridembed.bench.floor_app --model M [--runtime R] --port P`` (the
result cache is off)."""

from __future__ import annotations

import argparse
import base64

import orjson


def floor_app(embedder):
    """An ASGI app embedding with ``embedder`` (an :class:`~hybridembed.service.Embedder`):
    ``POST`` any path with a JSON body whose ``input`` is a list of strings -> 200,
    ``{"data": [{"embedding": <base64 of the little-endian float32 dense row>}]}``;
    ``GET /ready`` -> 200. Anything else it receives is a programming error of the caller
    and raises."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "GET":
            body = b"ready"
        else:
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            dense = embedder.embed(orjson.loads(b"".join(chunks))["input"]).dense
            body = orjson.dumps({"data": [
                {"embedding": base64.b64encode(row.astype("<f4").tobytes()).decode()}
                for row in dense]})
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from ..config import Settings
    from ..server.models import served_embedder

    parser = argparse.ArgumentParser(prog="python -m hybridembed.bench.floor_app")
    parser.add_argument("--model", required=True)
    parser.add_argument("--runtime", help="default: HYBRIDEMBED_RUNTIME, else torch")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    settings = Settings.from_env(model=args.model, runtime=args.runtime, cache_size=0)
    embedder = served_embedder(settings, args.model)
    embedder.embed(["warm up"] * 8)
    uvicorn.run(floor_app(embedder), host="127.0.0.1", port=args.port,
                log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
