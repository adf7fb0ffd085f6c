"""Server overhead, measured: in-process batch throughput versus the HTTP server under N
concurrent single-text clients, and single-request latency, in one run.

The server runs in a child process (as in production) with the result cache off, so
every request is computed; the load generator is this process, which loads no model
until the server is gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

from . import corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _post(reader, writer, host: str, path: str, payload: bytes) -> bytes:
    """One HTTP/1.1 POST on a kept-alive connection. A hand-rolled client costs a fraction
    of a full client library's CPU, which on a 2-core machine is CPU the server needs."""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    return body


async def _concurrent(url: str, texts: list[str], concurrency: int) -> tuple[float, list[float]]:
    host, port = url.removeprefix("http://").split(":")
    payloads = [json.dumps({"model": "any-name-ok", "input": t, "encoding_format": "base64"}
                           ).encode() for t in texts]
    latencies: list[float] = []

    async def client():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while payloads:
                payload = payloads.pop()
                began = time.perf_counter()
                await _post(reader, writer, f"{host}:{port}", "/v1/embeddings", payload)
                latencies.append(time.perf_counter() - began)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies


@contextlib.contextmanager
def child_server(flags: list[str], env: dict[str, str] | None = None,
                 ready_seconds: float = 300):
    """``hybridembed serve FLAGS`` in a child process on a free port, offline; yields its
    URL once ``/ready`` answers 200, and stops it afterwards."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    server = subprocess.Popen([sys.executable, "-m", "hybridembed", "serve", *flags,
                               "--port", str(port), "--log-level", "warning"], env=env,
                              stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_seconds
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def serve_and_load(model: str, texts: list[str], concurrency: int = 64,
                   single: int = 100, progress=print) -> dict:
    """Start ``hybridembed serve`` in a child process (cache off), drive it with
    ``concurrency`` single-text clients, then ``single`` sequential requests."""
    env = {"HYBRIDEMBED_CACHE_SIZE": "0"}
    with child_server(["--model", model, "--served-model-name", "any-name-ok"], env) as url:
        progress(f"server: {concurrency} concurrent clients, one text per request ...")
        asyncio.run(_concurrent(url, texts[:64], concurrency))  # warm connections and pools
        cpu = time.process_time()
        wall, latencies = asyncio.run(_concurrent(url, texts, concurrency))
        client_cpu = time.process_time() - cpu
        progress(f"server: {single} sequential single-text requests ...")
        _, singles = asyncio.run(_concurrent(url, texts[:single], 1))
        metrics = httpx.get(url + "/metrics").text
    sums = {line.split()[0]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith(("hybridembed_batch_texts_sum", "hybridembed_batch_texts_count"))}
    count = sums.get("hybridembed_batch_texts_count", 0.0)
    return {"texts_per_s": len(texts) / wall,
            "load_p50_ms": 1000 * statistics.median(latencies),
            "load_p95_ms": 1000 * _percentile(latencies, 0.95),
            "single_p50_ms": 1000 * statistics.median(singles),
            "single_p95_ms": 1000 * _percentile(singles, 0.95),
            "single_p99_ms": 1000 * _percentile(singles, 0.99),
            "mean_texts_per_batch": sums.get("hybridembed_batch_texts_sum", 0.0) / count
            if count else 0.0,
            "load_generator_cpu_s": client_cpu}


def run(model: str = "minilm", n: int = 1000, concurrency: int = 64, single: int = 100,
        progress=print) -> dict:
    from ..service import Embedder

    texts = corpus.texts(n)
    server = serve_and_load(model, texts, concurrency, single, progress)
    # In-process last, once the server is gone, so the load generator above never shares
    # this process with a busy torch thread pool.
    progress(f"in-process: embedding {n} texts with {model} ...")
    emb = Embedder(model, cache_size=0)
    began = time.perf_counter()
    result = emb.embed(texts)
    inproc = time.perf_counter() - began
    single_inproc = []
    for text in texts[:single]:
        began = time.perf_counter()
        emb.embed([text])
        single_inproc.append(time.perf_counter() - began)
    return {
        "model": model, "texts": n, "tokens": result.usage.total_tokens,
        "concurrency": concurrency,
        "in_process_texts_per_s": n / inproc,
        "server_texts_per_s": server["texts_per_s"],
        "server_vs_in_process": server["texts_per_s"] / (n / inproc),
        "server_latency_p50_ms": server["load_p50_ms"],
        "server_latency_p95_ms": server["load_p95_ms"],
        "single_request_p50_ms": server["single_p50_ms"],
        "single_request_p95_ms": server["single_p95_ms"],
        "mean_texts_per_batch": server["mean_texts_per_batch"],
        "load_generator_cpu_s": server["load_generator_cpu_s"],
        "in_process_single_p50_ms": 1000 * statistics.median(single_inproc),
    }


def format_report(r: dict) -> str:
    return "\n".join([
        f"model {r['model']}: {r['texts']} texts, {r['tokens']} tokens, "
        f"{r['concurrency']} concurrent clients",
        f"  in-process batch      {r['in_process_texts_per_s']:8.1f} texts/s",
        f"  server (concurrent)   {r['server_texts_per_s']:8.1f} texts/s  "
        f"= {r['server_vs_in_process']:.2f}x in-process; p50 {r['server_latency_p50_ms']:.0f} ms,"
        f" p95 {r['server_latency_p95_ms']:.0f} ms; {r['mean_texts_per_batch']:.1f} texts/batch",
        f"  single request        p50 {r['single_request_p50_ms']:.1f} ms, "
        f"p95 {r['single_request_p95_ms']:.1f} ms (in-process p50 "
        f"{r['in_process_single_p50_ms']:.1f} ms)",
    ])
