"""Server overhead, measured: the HTTP server against in-process ``Embedder.embed`` on the
same texts, each server measurement paired with an in-process one taken right after it.

Each round starts ``hybridembed serve`` in a child process (result cache off, so every
request is computed) and an in-process worker in another child process (so no two models
share a process or its thread pools; only one of them works at a time), then:

- ``concurrent``: ``concurrency`` clients (64) each sending one text per request, then
  every text in one in-process ``Embedder.embed`` call;
- ``lists``: ``list_clients`` clients (8) each sending ``list_size`` texts (32) per
  request, then the in-process call again;
- ``single``: one client, one text per request, in blocks of :data:`SINGLE_BLOCK`
  requests, each block followed by the same texts embedded one by one in process (and,
  with ``floor``, by the same requests to a bare uvicorn app, :mod:`.floor_app`: the least
  any server on uvicorn adds on this machine).

A shared or throttled machine changes speed from one ten seconds to the next (the same
in-process call varied by 20% between back-to-back runs here); pairing each load with
its own in-process measurement, and alternating blocks of single requests, keeps that
out of the ratios (blocks, not single requests: a process whose weights another process
has just pushed out of the CPU's cache runs its first text a third slower). Each server
load reports texts/s and its ratio to its in-process pair, latency p50/p95/p99, mean
texts per batch, mean batch fill (tokens / batch budget), the server process's CPU
seconds per text (against in-process CPU per text) and the mean seconds per request of
each stage from the server's ``/metrics`` (``hybridembed_request_stage_seconds``).

The load generator is a hand-rolled HTTP/1.1 keep-alive client on raw sockets: a client
library's own CPU per request would come out of the server's share of a small machine.
"""

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

STAGES = ("parse", "validate", "tokenize", "queue", "inference", "serialize", "write")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and its threads so far (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


async def _post(reader, writer, host: str, path: str, payload: bytes) -> bytes:
    """One HTTP/1.1 POST on a kept-alive connection."""
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


async def _drive(url: str, requests: list[list[str]], concurrency: int
                 ) -> tuple[float, list[float]]:
    """Send every request (a list of texts each) with ``concurrency`` clients; returns the
    wall time and each request's latency."""
    host, port = url.removeprefix("http://").split(":")
    payloads = [json.dumps({"model": "any-name-ok", "input": texts, "encoding_format": "base64"}
                           ).encode() for texts in requests]
    payloads.reverse()  # popped from the end: sent in order
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


def _scrape(url: str) -> dict[str, float]:
    """The server's ``/metrics`` sums and counts this report reads."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(("hybridembed_request_stage_seconds_", "hybridembed_batch_")) and (
                "_sum" in line or "_count" in line):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _delta_report(before: dict[str, float], after: dict[str, float]) -> dict:
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = d("hybridembed_batch_texts_count")
    stages = {}
    for stage in STAGES:
        label = f'{{stage="{stage}"}}'
        n = d(f"hybridembed_request_stage_seconds_count{label}")
        if n:
            stages[stage] = 1000 * d(f"hybridembed_request_stage_seconds_sum{label}") / n
    return {"batches": int(batches),
            "mean_texts_per_batch": d("hybridembed_batch_texts_sum") / batches if batches else 0,
            "mean_batch_fill": d("hybridembed_batch_fill_sum") / batches if batches else 0,
            "stage_ms": stages}


def _measured(url: str, pid: int, name: str, clients: int, texts_per_request: int,
              texts: int, run) -> dict:
    """The report of one load: ``run()`` drives the server and returns ``(seconds,
    latencies)``; around it, the server's CPU time and its ``/metrics``."""
    before = _scrape(url)
    load = _load_average()
    cpu = _cpu_seconds(pid)
    wall, latencies = run()
    cpu_after = _cpu_seconds(pid)
    return {"load": name, "clients": clients, "texts_per_request": texts_per_request,
            "texts_per_s": texts / wall,
            # CPU per text is steadier than texts/s on a machine shared with other work
            "server_cpu_ms_per_text": None if cpu is None or cpu_after is None
            else 1000 * (cpu_after - cpu) / texts,
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * _percentile(latencies, 0.95),
            "p99_ms": 1000 * _percentile(latencies, 0.99),
            "load_average": load, **_delta_report(before, _scrape(url))}


def _load(url: str, name: str, requests: list[list[str]], concurrency: int, pid: int) -> dict:
    return _measured(url, pid, name, concurrency, len(requests[0]),
                     sum(len(r) for r in requests),
                     lambda: asyncio.run(_drive(url, requests, concurrency)))


@contextlib.contextmanager
def child_server(flags: list[str], env: dict[str, str] | None = None,
                 ready_seconds: float = 300, command: tuple[str, ...] = ("hybridembed", "serve")):
    """``python -m COMMAND FLAGS`` (``hybridembed serve FLAGS``) in a child process on a
    free port, offline; yields the process (its ``url`` attribute: the server's URL) once
    ``/ready`` answers 200, and stops it afterwards."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    server = subprocess.Popen([sys.executable, "-m", *command, *flags,
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
        server.url = url  # the caller may read the child's pid too
        yield server
    finally:
        server.terminate()
        server.wait(30)


# Pause between the two processes' measurements: thread pools spin a while after work
# (OpenMP's and ONNX Runtime's), which would come out of the other one's time.
QUIET_SECONDS = 0.5
# Single-text requests per block of the alternating latency measurement.
SINGLE_BLOCK = 10
# Pause between those blocks: ONNX Runtime's threads spin ~60 ms after a call and
# OpenMP's ~12 ms on the 2-core machine (CPU time burnt after the last call), which would
# slow the other process's next block.
SINGLE_PAUSE_SECONDS = 0.2


# Prefix of the worker's answers on its stdout: any other line there (a library's print)
# is skipped.
ANSWER = "hybridembed-loadtest "


class InProcess:
    """An in-process worker in a child process: ``Embedder(model, cache_size=0)`` loaded
    once, answering :meth:`throughput` and :meth:`singles` over a pipe."""

    def __init__(self, model: str, n: int, runtime: str | None):
        args = json.dumps({"model": model, "n": n, "runtime": runtime})
        self.child = subprocess.Popen(
            [sys.executable, "-m", "hybridembed.bench.loadtest", args],
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        try:
            self._ask(None)  # loaded and warm
        except BaseException:
            self.close()
            raise

    def _ask(self, op: dict | None) -> dict:
        if op is not None:
            self.child.stdin.write(json.dumps(op) + "\n")
            self.child.stdin.flush()
        while True:
            line = self.child.stdout.readline()
            if not line:
                raise RuntimeError("the in-process worker died (its error is above)")
            if line.startswith(ANSWER):
                return json.loads(line[len(ANSWER):])

    def throughput(self) -> dict:
        """Every text in one ``embed`` call: ``texts_per_s``, ``cpu_ms_per_text``,
        ``tokens``."""
        time.sleep(QUIET_SECONDS)
        out = self._ask({"op": "throughput"})
        time.sleep(QUIET_SECONDS)
        return out

    def singles(self, first: int, count: int) -> list[float]:
        """Seconds to embed each of texts ``first .. first + count - 1`` alone."""
        return self._ask({"op": "singles", "first": first, "count": count})["seconds"]

    def close(self) -> None:
        """Stop the worker (killed if it does not end within 30 s)."""
        try:
            self.child.stdin.close()
            self.child.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.child.kill()
            self.child.wait()


def _worker(model: str, n: int, runtime: str | None) -> None:
    """The child side of :class:`InProcess`."""
    from ..service import Embedder

    texts = corpus.texts(n)
    emb = Embedder(model, cache_size=0, runtime=runtime or "torch")
    emb.embed(texts[:64])
    print(ANSWER + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        op = json.loads(line)
        if op["op"] == "throughput":
            load = _load_average()
            began, cpu = time.perf_counter(), time.process_time()
            result = emb.embed(texts)
            seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
            out = {"texts_per_s": len(texts) / seconds, "tokens": result.usage.total_tokens,
                   "cpu_ms_per_text": 1000 * cpu / len(texts), "load_average": load}
        else:
            seconds = []
            for text in texts[op["first"]:op["first"] + op["count"]]:
                began = time.perf_counter()
                emb.embed([text])
                seconds.append(time.perf_counter() - began)
            out = {"seconds": seconds}
        print(ANSWER + json.dumps(out), flush=True)


async def _singles(url: str, texts: list[str], inproc: InProcess | None,
                   floor_url: str | None = None) -> tuple[list, list, list]:
    """One request at a time, in blocks of :data:`SINGLE_BLOCK`, each block followed by
    the same texts in process (with ``inproc``) and then, with ``floor_url``, sent to that
    server (:mod:`.floor_app`), :data:`SINGLE_PAUSE_SECONDS` apart: the latencies of the
    server, in process and of the floor app, alternated so a change of machine speed
    touches them alike."""
    connections = []
    for address in (url, floor_url):
        if address is not None:
            host, port = address.removeprefix("http://").split(":")
            connections.append((f"{host}:{port}",
                                *await asyncio.open_connection(host, int(port))))
    server: list[float] = []
    local: list[float] = []
    bare: list[float] = []

    async def block_to(connection, block, into):
        target, reader, writer = connection
        for text in block:
            payload = json.dumps({"model": "any-name-ok", "input": [text],
                                  "encoding_format": "base64"}).encode()
            began = time.perf_counter()
            await _post(reader, writer, target, "/v1/embeddings", payload)
            into.append(time.perf_counter() - began)

    try:
        for first in range(0, len(texts), SINGLE_BLOCK):
            block = texts[first:first + SINGLE_BLOCK]
            await block_to(connections[0], block, server)
            if inproc is not None:
                time.sleep(SINGLE_PAUSE_SECONDS)
                local += inproc.singles(first, len(block))
                time.sleep(SINGLE_PAUSE_SECONDS)
            if floor_url is not None:
                await block_to(connections[1], block, bare)
                time.sleep(SINGLE_PAUSE_SECONDS)
    finally:
        for _, _, writer in connections:
            writer.close()
    return server, local, bare


def _single_load(url: str, texts: list[str], inproc: InProcess | None, pid: int,
                 floor_url: str | None = None) -> dict:
    local: list[float] = []
    bare: list[float] = []

    def run():
        server, mine, floor = asyncio.run(_singles(url, texts, inproc, floor_url))
        local.extend(mine)
        bare.extend(floor)
        return sum(server), server

    out = _measured(url, pid, "single", 1, 1, len(texts), run)
    if local:
        out["in_process_p50_ms"] = 1000 * statistics.median(local)
        out["in_process_p95_ms"] = 1000 * _percentile(local, 0.95)
        out["p50_over_in_process_ms"] = out["p50_ms"] - out["in_process_p50_ms"]
    if bare:
        out["floor_p50_ms"] = 1000 * statistics.median(bare)
        if local:
            out["floor_p50_over_in_process_ms"] = out["floor_p50_ms"] - out["in_process_p50_ms"]
    return out


def round_of(model: str, texts: list[str], concurrency: int = 64, single: int = 100,
             list_clients: int = 8, list_size: int = 32, runtime: str | None = None,
             progress=print, paired: bool = True, floor: bool = False) -> dict:
    """One round: a server child (cache off) and, when ``paired``, an in-process worker;
    each load on the server followed by its in-process pair. Returns ``{"server": {load:
    report}, "in_process": {load: report}}``; with pairs, each server report has its ratio
    to its pair (``vs_in_process``, or for ``single`` ``p50_over_in_process_ms``). With
    ``floor`` (and pairs), the ``single`` load alternates its blocks with a bare uvicorn
    app's (:mod:`.floor_app`, same model and runtime, started after the other loads):
    ``floor_p50_ms`` and ``floor_p50_over_in_process_ms`` in the ``single`` report."""
    env = {"HYBRIDEMBED_CACHE_SIZE": "0"}
    if runtime:
        env["HYBRIDEMBED_RUNTIME"] = runtime
    flags = ["--model", model, "--served-model-name", "any-name-ok"]
    inproc = InProcess(model, len(texts), runtime) if paired else None
    try:
        with child_server(flags, env, ready_seconds=600) as server:  # a busy machine loads slowly
            url = server.url
            asyncio.run(_drive(url, [[t] for t in texts[:64]], concurrency))  # warm up
            out: dict[str, dict] = {"server": {}, "in_process": {}}
            size = min(list_size, len(texts))
            lists = [texts[i:i + size] for i in range(0, len(texts) - size + 1, size)]
            for name, requests, clients in (
                    ("concurrent", [[t] for t in texts], concurrency),
                    ("lists", lists, list_clients)):
                progress(f"server: {clients} clients x {len(requests[0])} text(s)"
                         + (", then in-process ..." if inproc else " ..."))
                time.sleep(QUIET_SECONDS)
                cpu = time.process_time()
                report = _load(url, name, requests, clients, server.pid)
                report["load_generator_cpu_s"] = time.process_time() - cpu
                # the in-process call embeds every text; a list load may leave a few out
                report["texts"] = sum(len(r) for r in requests)
                out["server"][name] = report
                if inproc is not None:
                    pair = inproc.throughput()
                    report["vs_in_process"] = report["texts_per_s"] / pair["texts_per_s"]
                    out["in_process"][name] = pair
            progress(f"server: 1 client x 1 text, {single} requests"
                     + (", alternating with in-process ..." if inproc else " ..."))
            if floor and inproc is not None:
                progress("starting a bare uvicorn app beside it ...")
            with (_floor_app(model, runtime, texts) if floor and inproc is not None
                  else contextlib.nullcontext()) as bare:
                time.sleep(QUIET_SECONDS)
                out["server"]["single"] = _single_load(url, texts[:single], inproc, server.pid,
                                                       bare.url if bare else None)
    finally:
        if inproc is not None:
            inproc.close()
    return out


@contextlib.contextmanager
def _floor_app(model: str, runtime: str | None, texts: list[str]):
    """:mod:`.floor_app` serving ``model`` in a child process, warmed up (its runtime, like
    the server child's, from ``runtime`` or else the environment)."""
    flags = ["--model", model, *(["--runtime", runtime] if runtime else [])]
    with child_server(flags, ready_seconds=600, command=("hybridembed.bench.floor_app",)
                      ) as bare:
        asyncio.run(_drive(bare.url, [[t] for t in texts[:16]], 1))
        yield bare


def serve_and_load(model: str, texts: list[str], concurrency: int = 64, single: int = 100,
                   list_clients: int = 8, list_size: int = 32, runtime: str | None = None,
                   progress=print) -> dict:
    """The server's reports of one unpaired :func:`round_of` (``{load name: report}``):
    no in-process worker, for callers that measure in-process their own way."""
    return round_of(model, texts, concurrency, single, list_clients, list_size, runtime,
                    progress, paired=False)["server"]


def run(model: str = "minilm", n: int = 600, concurrency: int = 64, single: int = 100,
        rounds: int = 3, runtime: str | None = None, list_clients: int = 8,
        list_size: int = 32, progress=print, floor: bool = False) -> dict:
    """``rounds`` rounds of :func:`round_of` (``floor``: with the bare uvicorn app's
    one-client load). Returns every round and, per load, the ratio server / in-process of
    each round and their median; for the one-client load, the p50 differences (and the
    bare app's, with ``floor``) and their medians."""
    texts = corpus.texts(n)
    all_rounds = []
    for r in range(rounds):
        progress(f"round {r + 1}/{rounds} (load average {_load_average()})")
        all_rounds.append(round_of(model, texts, concurrency, single, list_clients,
                                   list_size, runtime, progress, floor=floor))
        progress(_format_round(r + 1, all_rounds[-1]))
    summary = {}
    for load in ("concurrent", "lists"):
        ratios = [r["server"][load]["vs_in_process"] for r in all_rounds]
        summary[load] = {"ratios": ratios, "median": statistics.median(ratios)}
    deltas = [r["server"]["single"]["p50_over_in_process_ms"] for r in all_rounds]
    summary["single"] = {"p50_over_in_process_ms": deltas, "median": statistics.median(deltas)}
    if floor:
        bare = [r["server"]["single"]["floor_p50_over_in_process_ms"] for r in all_rounds]
        summary["single"].update(floor_p50_over_in_process_ms=bare,
                                 floor_median=statistics.median(bare))
    return {"model": model, "runtime": runtime or "torch", "texts": n,
            "tokens": all_rounds[0]["in_process"]["concurrent"]["tokens"],
            "concurrency": concurrency, "list_clients": list_clients, "list_size": list_size,
            "rounds": all_rounds, "summary": summary}


def format_report(r: dict) -> str:
    lines = [f"model {r['model']} ({r['runtime']}): {r['texts']} texts, {r['tokens']} tokens; "
             f"loads: {r['concurrency']} clients x 1 text, {r['list_clients']} clients x "
             f"{r['list_size']} texts, 1 client x 1 text"]
    lines += [_format_round(i, rnd) for i, rnd in enumerate(r["rounds"], 1)]
    s = r["summary"]
    lines.append("summary: server / in-process "
                 + "; ".join(f"{k} {min(v['ratios']):.2f}-{max(v['ratios']):.2f}x (median "
                             f"{v['median']:.2f}x)" for k, v in s.items() if "ratios" in v)
                 + f"; single p50 over in-process: median {s['single']['median']:+.1f} ms"
                 + (f" (a bare uvicorn app: {s['single']['floor_median']:+.1f} ms)"
                    if "floor_median" in s["single"] else ""))
    return "\n".join(lines)


def _format_round(i: int, rnd: dict) -> str:
    lines = [f"round {i}:"]
    for name, s in rnd["server"].items():
        ip = rnd["in_process"].get(name)
        if ip is not None:
            ratio = (f"{s['vs_in_process']:.2f}x in-process ({ip['texts_per_s']:.1f} texts/s, "
                     f"{ip['cpu_ms_per_text']:.2f} CPU ms/text)")
        else:
            ratio = (f"p50 {s['p50_over_in_process_ms']:+.1f} ms over in-process (p50 "
                     f"{s['in_process_p50_ms']:.1f} ms)")
            if "floor_p50_ms" in s:
                ratio += (f"; a bare uvicorn app {s['floor_p50_over_in_process_ms']:+.1f} ms "
                          f"(p50 {s['floor_p50_ms']:.1f} ms)")
        stages = ", ".join(f"{k} {v:.2f}" for k, v in s["stage_ms"].items())
        cpu = s["server_cpu_ms_per_text"]
        lines.append(
            f"  {name:<10} {s['clients']:>2} x {s['texts_per_request']:<2} "
            f"{s['texts_per_s']:7.1f} texts/s = {ratio}; p50/p95/p99 {s['p50_ms']:.1f}/"
            f"{s['p95_ms']:.1f}/{s['p99_ms']:.1f} ms; {s['mean_texts_per_batch']:.1f} "
            f"texts/batch, fill {s['mean_batch_fill']:.2f} (load average "
            f"{s['load_average']})")
        lines.append(f"             stage ms/request: {stages}"
                     + (f"; server CPU {cpu:.2f} ms/text" if cpu is not None else ""))
    return "\n".join(lines)


if __name__ == "__main__":  # the in-process worker of :class:`InProcess`
    a = json.loads(sys.argv[1])
    _worker(a["model"], a["n"], a["runtime"])
