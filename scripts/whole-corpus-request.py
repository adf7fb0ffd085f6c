"""Measure one whole-corpus request (issue 13): start `hybridembed serve` in its own
process, send N texts of ~250 tokens in ONE request to a route, and report wall time,
the server's peak RSS (VmHWM) and that every vector equals the in-process one.

    .venv/bin/python scripts/whole-corpus-request.py --texts 20000 --route /api/embed
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def corpus(n: int, seed: int = 0) -> list[str]:
    words = Path(__file__).read_text().split() + "the of and a to in is for on with".split() * 20
    rng = random.Random(seed)
    # ~200 words is about 250 MiniLM tokens (each text distinct: no cache hits)
    return [f"{i} " + " ".join(rng.choice(words) for _ in range(190)) for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=20_000)
    ap.add_argument("--route", default="/api/embed",
                    choices=["/api/embed", "/v1/embeddings", "/embed"])
    ap.add_argument("--check", type=int, default=200, help="vectors compared in process")
    ap.add_argument("--model", default="minilm",
                    help="alias or folder (a tiny model measures the pipeline's memory fast)")
    args = ap.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([sys.executable, "-m", "hybridembed", "serve", "--port", str(port),
                               "--model", args.model, "--served-model-name", "minilm",
                               "--device", "cpu", "--log-level", "warning",
                               # OpenAI's route caps inputs at 2048 as OpenAI does
                               "--max-inputs", str(max(args.texts, 2048))],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        texts = corpus(args.texts)
        body = {"/api/embed": {"model": "minilm", "input": texts},
                "/v1/embeddings": {"model": "minilm", "input": texts,
                                   "encoding_format": "float"},
                "/embed": {"inputs": texts}}[args.route]
        payload = json.dumps(body).encode()
        started = time.perf_counter()
        r = httpx.post(url + args.route, content=payload, timeout=None,
                       headers={"content-type": "application/json"})
        wall = time.perf_counter() - started
        hwm = next(line for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                   if line.startswith("VmHWM")).split()[1]
        assert r.status_code == 200, r.text[:500]
        out = r.json()
        vectors = {"/api/embed": lambda b: b["embeddings"],
                   "/v1/embeddings": lambda b: [d["embedding"] for d in b["data"]],
                   "/embed": lambda b: b}[args.route](out)
        assert len(vectors) == len(texts)
        from hybridembed import Embedder

        pick = random.Random(1).sample(range(len(texts)), min(args.check, len(texts)))
        expected = Embedder(args.model, device="cpu").embed([texts[i] for i in pick]).dense
        got = np.asarray([vectors[i] for i in pick], np.float32)
        cos = float(np.min(np.sum(got * expected, axis=1)))
        print(json.dumps({"route": args.route, "model": args.model, "texts": len(texts),
                          "body_mb": round(len(payload) / 2**20, 1),
                          "seconds": round(wall, 1), "texts_per_s": round(len(texts) / wall, 1),
                          "server_peak_rss_mb": round(int(hwm) / 1024),
                          "min_cosine_vs_in_process": round(cos, 6),
                          "load_average": os.getloadavg()}))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
