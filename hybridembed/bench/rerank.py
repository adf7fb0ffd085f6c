"""``hybridembed bench --suite rerank``: pairs/s reranking ``passages`` passages of about
``words`` words against one query, by three engines in ONE run on the same machine —
sentence-transformers ``CrossEncoder.predict`` (the reference), hybridembed's rerank
service in process, and the HTTP server's ``/v1/rerank`` (Cohere shape, through the
rerank batcher) — with rounds interleaved (st, in-process, http, st, ...) so that noise
from other work on the machine falls on every engine alike; the median round is reported.

Without a cross-encoder on the machine, the model is MiniLM-L6 with a one-logit
classification head (the shape of cross-encoder/ms-marco-MiniLM-L-6-v2; weights of the
packaged all-MiniLM-L6-v2 encoder, head random): the speed of a real one of that shape.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from . import corpus

ENGINES = ("sentence-transformers", "in-process", "http")


def minilm_cross_encoder(folder: Path) -> Path:
    """MiniLM-L6 with a random one-logit head, saved as a sequence classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .. import registry

    source, _ = registry.locate("minilm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1)
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    return folder


def _serve(reranker):
    """The hybridembed server with ``reranker`` in a thread; returns (url, server)."""
    import socket
    import threading

    import uvicorn

    from ..config import Settings
    from ..server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    # the server's one model; no request timeout: a noisy machine must not fail a round
    app = create_app(Settings(port=port, request_timeout=24 * 3600.0), embedder=reranker)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 120
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def run(model: str | None = None, passages: int = 100, words: int = 150, rounds: int = 5,
        batch_size: int = 32, progress=lambda message: None) -> dict:
    """Pairs/s of each engine (median of ``rounds``), tokens per pair, and the HTTP /
    in-process ratio. ``model``: a cross-encoder (alias, folder); default the MiniLM-L6
    cross-encoder built here."""
    import httpx
    from sentence_transformers import CrossEncoder

    from ..rerank import CrossEncoderReranker
    from ..service.rerank import CrossEncoderRerankService

    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            progress("building the MiniLM-L6 cross-encoder")
            folder = str(minilm_cross_encoder(Path(tmp) / "minilm-ce"))
        else:
            folder = model
        docs = corpus.texts(passages, min_words=words, max_words=words, seed=1)
        query = "how does hybrid retrieval combine dense and sparse vectors"
        reranker = CrossEncoderReranker(folder, device="cpu", batch_size=batch_size)
        service = CrossEncoderRerankService(reranker)
        st = CrossEncoder(str(reranker.path), device="cpu", max_length=reranker.max_length,
                          local_files_only=True)
        pairs = [(query, d) for d in docs]
        tokens = reranker.pair_lengths([query] * len(docs), docs)
        url, server = _serve(reranker)
        body = {"query": query, "documents": docs}  # the default reranker
        calls = {
            "sentence-transformers": lambda: st.predict(pairs, batch_size=batch_size),
            "in-process": lambda: service.run(service.request(query, docs)),
            "http": lambda: httpx.post(url + "/v1/rerank", json=body,
                                       timeout=600).raise_for_status(),
        }
        try:
            for fn in calls.values():  # warm up every engine once
                fn()
            walls: dict[str, list[float]] = {e: [] for e in ENGINES}
            for r in range(rounds):
                progress(f"round {r + 1}/{rounds}")
                for engine in ENGINES:
                    began = time.perf_counter()
                    calls[engine]()
                    walls[engine].append(time.perf_counter() - began)
        finally:
            server.should_exit = True
    rate = {e: passages / statistics.median(w) for e, w in walls.items()}
    return {
        "model": model or "MiniLM-L6 cross-encoder (random head)", "passages": passages,
        "tokens_per_pair": statistics.mean(min(t, reranker.max_length) for t in tokens),
        "max_length": reranker.max_length, "batch_size": batch_size, "rounds": rounds,
        "threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
        "pairs_per_s": rate, "seconds": walls,
        "http_over_in_process": rate["http"] / rate["in-process"],
        "in_process_over_st": rate["in-process"] / rate["sentence-transformers"],
    }


def format_report(report: dict) -> str:
    lines = [f"rerank: {report['passages']} passages x {report['tokens_per_pair']:.0f} tokens "
             f"per pair (limit {report['max_length']}), {report['model']}, median of "
             f"{report['rounds']} rounds"]
    for engine, rate in report["pairs_per_s"].items():
        lines.append(f"  {engine:<22} {rate:8.1f} pairs/s")
    lines.append(f"  http / in-process     {report['http_over_in_process']:8.2f}x")
    lines.append(f"  in-process / st       {report['in_process_over_st']:8.2f}x")
    return "\n".join(lines)


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def mixed_load(seconds: float = 30.0, embed_clients: int = 64, rerank_clients: int = 8,
               documents: int = 20, words: int = 150, progress=lambda message: None) -> dict:
    """Embedding latency alone and under rerank load, two models in one server (a child
    process: ``hybridembed serve --model minilm --model rr=<MiniLM-L6 cross-encoder>``):
    ``embed_clients`` clients each sending one short text at a time for ``seconds``, then
    the same with ``rerank_clients`` clients each reranking ``documents`` passages of
    ``words`` words. Reports p50/p95 (ms), requests done and failed per phase."""
    import asyncio

    import httpx

    from .loadtest import child_server

    texts = corpus.texts(500, min_words=8, max_words=16, seed=3)
    docs = corpus.texts(documents, min_words=words, max_words=words, seed=4)

    async def phase(url: str, with_rerank: bool) -> dict:
        stop = time.perf_counter() + seconds
        lat: dict[str, list[float]] = {"embed": [], "rerank": []}
        failed = {"embed": 0, "rerank": 0}

        async def client(kind: str, i: int, http: httpx.AsyncClient) -> None:
            n = i
            while time.perf_counter() < stop:
                n += 1
                if kind == "embed":
                    path, body = "/v1/embeddings", {"model": "minilm",
                                                    "input": texts[n % len(texts)]}
                else:
                    path, body = "/v1/rerank", {"model": "rr", "query": texts[n % len(texts)],
                                                "documents": docs}
                began = time.perf_counter()
                try:
                    r = await http.post(path, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat[kind].append(time.perf_counter() - began)
                else:
                    failed[kind] += 1

        limits = httpx.Limits(max_connections=embed_clients + rerank_clients + 8)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
            tasks = [client("embed", i, http) for i in range(embed_clients)]
            if with_rerank:
                tasks += [client("rerank", i, http) for i in range(rerank_clients)]
            await asyncio.gather(*tasks)
        return {kind: {"done": len(v), "failed": failed[kind],
                       "p50_ms": 1000 * _percentile(v, 0.5), "p95_ms": 1000 * _percentile(v, 0.95)}
                for kind, v in lat.items() if v or failed[kind]}

    with tempfile.TemporaryDirectory() as tmp:
        progress("building the MiniLM-L6 cross-encoder")
        folder = minilm_cross_encoder(Path(tmp) / "minilm-ce")
        flags = ["--model", "minilm", "--model", f"rr={folder}", "--device", "cpu",
                 "--request-timeout", "600"]
        with child_server(flags) as server:
            url = server.url
            progress(f"embed alone, {seconds:g} s")
            alone = asyncio.run(phase(url, False))
            progress(f"embed + rerank, {seconds:g} s")
            mixed = asyncio.run(phase(url, True))
    return {"seconds": seconds, "embed_clients": embed_clients,
            "rerank_clients": rerank_clients, "rerank_documents": documents,
            "alone": alone, "mixed": mixed,
            "embed_p95_ratio": mixed["embed"]["p95_ms"] / alone["embed"]["p95_ms"]}


def format_mixed(report: dict) -> str:
    lines = [f"mixed load: {report['embed_clients']} embed clients (+ {report['rerank_clients']}"
             f" rerank clients x {report['rerank_documents']} passages), "
             f"{report['seconds']:g} s per phase"]
    for phase in ("alone", "mixed"):
        for kind, row in report[phase].items():
            lines.append(f"  {phase:<6} {kind:<7} {row['done']:6d} done {row['failed']:4d} failed"
                         f"  p50 {row['p50_ms']:8.1f} ms  p95 {row['p95_ms']:8.1f} ms")
    lines.append(f"  embed p95 mixed / alone: {report['embed_p95_ratio']:.2f}x")
    return "\n".join(lines)
