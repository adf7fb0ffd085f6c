"""``hybridembed bench``: speed and memory of several engines in ONE run, on the same
texts and machine — sentence-transformers ``encode`` (the reference), hybridembed torch,
hybridembed ONNX fp32 and int8, and the HTTP server under concurrent clients.

Each engine runs in its own child process, so its peak RSS is its own and no engine
inherits another's thread pools. Per engine: texts/s and tokens/s over a sweep of batch
budgets, single-text latency p50/p95/p99, peak RSS (and peak CUDA memory on a GPU), and
utilisation of the compute bound: model FLOPs per token x tokens/s / a matrix-multiply
rate measured on the same device, and the fill of its batches (real tokens / padded tokens
sent to the model: what length-sorted packing leaves of padding waste).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import corpus

ENGINES: tuple[str, ...] = ("sentence-transformers", "torch", "onnx", "onnx-int8", "server")
ST_BATCH = 32


def _percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50_ms": 1000 * statistics.median(values), "p95_ms": 1000 * pick(0.95),
            "p99_ms": 1000 * pick(0.99)}


_SQUARE = ((1024, 1024, 1024), (2048, 2048, 2048))


def _best_rate(shapes, seconds: float, rounds: int, operands, sync=lambda: None) -> float:
    """Best FLOP/s of ``a @ b`` over ``shapes``, each timed ``rounds`` times."""
    best = 0.0
    for m, k, n in shapes:
        a, b = operands(m, k, n)
        a @ b
        sync()
        for _ in range(rounds):
            began, done = time.perf_counter(), 0
            while True:
                a @ b
                done += 1
                sync()
                took = time.perf_counter() - began
                if took >= seconds / rounds:
                    break
            best = max(best, 2 * m * k * n * done / took)
    return best


def matmul_flops(device: str = "cpu", shapes: tuple[tuple[int, int, int], ...] | None = None,
                 seconds: float = 0.5, rounds: int = 3) -> float:
    """The best fp32 (bf16 on a GPU) matrix-multiply rate in FLOP/s measured on ``device``
    over several (m, k, n) shapes (:func:`model_gemm_shapes` gives a model's own), each
    timed for about ``seconds`` and taken at its best of ``rounds``; on a CPU with torch's
    BLAS (MKL) and NumPy's (OpenBLAS), whichever is faster (both reach ~175-180 GFLOP/s on
    the 2-core AMD EPYC when it is quiet). The first version of this probe timed one
    1024^3 product once and read 43-83 GFLOP/s in noisy spells, which put utilisation
    above 100%; best-of-rounds over several shapes is steadier."""
    import numpy as np
    import torch

    shapes = shapes or _SQUARE
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    best = _best_rate(shapes, seconds, rounds,
                      lambda m, k, n: (torch.randn(m, k, device=device, dtype=dtype),
                                       torch.randn(k, n, device=device, dtype=dtype)),
                      torch.cuda.synchronize if device != "cpu" else (lambda: None))
    if device == "cpu":
        rng = np.random.default_rng(0)
        best = max(best, _best_rate(shapes, seconds, rounds, lambda m, k, n: (
            rng.standard_normal((m, k), dtype=np.float32),
            rng.standard_normal((k, n), dtype=np.float32))))
    return best


def _config(spec) -> dict:
    return json.loads((Path(spec.path) / "config.json").read_text())


def model_gemm_shapes(spec, tokens: int = 2048) -> tuple[tuple[int, int, int], ...]:
    """The (m, k, n) products of one encoder layer over ``tokens`` tokens — projections
    (h x h) and feed-forward (h x i, i x h) — plus two square ones."""
    cfg = _config(spec)
    h = cfg["hidden_size"]
    inter = cfg.get("intermediate_size", 4 * h)
    return ((tokens, h, h), (tokens, h, inter), (tokens, inter, h), (1024, 1024, 1024),
            (2048, 2048, 2048))


def flops_per_token(spec, seq_len: float) -> float:
    """Forward FLOPs per token of a BERT-style encoder: 2 x weights touched per token
    (attention projections 4h^2 + feed-forward 2 h i per layer) + attention scores and
    mixing (4 h L per layer)."""
    cfg = _config(spec)
    h = cfg["hidden_size"]
    layers = cfg["num_hidden_layers"]
    inter = cfg.get("intermediate_size", 4 * h)
    return layers * (2 * (4 * h * h + 2 * h * inter) + 4 * h * seq_len)


def _timed(fn, repeats: int) -> list[float]:
    walls = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - began)
    return walls


def _run(budget: int | None, walls: list[float], texts: int, tokens: int) -> dict:
    """One setting's figures: the best of the repeats (the pass least disturbed by other
    work on the machine) and the median beside it."""
    best = min(walls)
    return {"budget": budget, "seconds": best, "texts_per_s": texts / best,
            "tokens_per_s": tokens / best,
            "median_texts_per_s": texts / statistics.median(walls), "repeats": len(walls)}


def _child(engine: str, texts: list[str], budgets: list[int], singles: int, model: str,
           onnx_cache: str | None, repeats: int = 3, outputs: tuple[str, ...] = ("dense",)
           ) -> dict:
    """Measure one engine in this (child) process: each setting ``repeats`` times. Our
    engines compute ``outputs`` (dense, sparse, multivector) in one pass; the
    sentence-transformers reference computes dense vectors only."""
    import torch

    cuda = torch.cuda.is_available()

    out: dict = {"engine": engine, "runs": []}
    if engine == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        from ..registry import resolve

        spec = resolve(model)
        st = SentenceTransformer(str(spec.path), device="cuda" if cuda else "cpu",
                                 model_kwargs={"dtype": torch.bfloat16} if cuda else None)
        st.encode(texts[:16])
        walls = _timed(lambda: st.encode(texts, batch_size=ST_BATCH), repeats)
        tokens = sum(min(len(x), spec.max_length) for x in st.tokenizer(texts)["input_ids"])
        out["runs"].append(_run(None, walls, len(texts), tokens) | {"batch_size": ST_BATCH})
        lat = []
        for text in texts[:singles]:
            t = time.perf_counter()
            st.encode([text])
            lat.append(time.perf_counter() - t)
        out["device"] = str(st.device)
    else:
        from ..service import Embedder

        options = {}
        if engine.startswith("onnx"):
            options = {"cache_dir": onnx_cache} if onnx_cache else {}
            if engine == "onnx-int8":
                options.update(quantize="int8", force=True)
        emb = Embedder(model, runtime="onnx" if engine.startswith("onnx") else "torch",
                       cache_size=0, runtime_options=options)
        spec = emb.spec
        out["device"] = emb.device
        quality = getattr(emb._runtime, "quality", None)
        if quality:
            out["quality"] = quality
        want = {o: o in outputs for o in ("dense", "sparse", "multivector")}
        tokens = emb.embed(texts, **want).usage.total_tokens  # also the warm-up pass
        walls: dict[int, list[float]] = {b: [] for b in budgets}
        filled = {b: [0, 0] for b in budgets}  # real and padded tokens sent to the model
        stats = emb._encoder.stats
        for _ in range(repeats):  # budgets interleaved: a slow spell hits all of them alike
            for budget in budgets:
                emb._encoder.max_batch_tokens = budget
                real, padded = stats.tokens, stats.padded_tokens
                walls[budget] += _timed(lambda: emb.embed(texts, **want), 1)
                filled[budget][0] += stats.tokens - real
                filled[budget][1] += stats.padded_tokens - padded
        out["runs"] += [_run(b, walls[b], len(texts), tokens)
                        | {"padding_efficiency": filled[b][0] / filled[b][1]
                           if filled[b][1] else None}  # None: no forward pass (BM25 only)
                        for b in budgets]
        lat = []
        for text in texts[:singles]:
            t = time.perf_counter()
            emb.embed([text], **want)
            lat.append(time.perf_counter() - t)
    out["latency"] = _percentiles(lat)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if engine == "torch":  # after the RSS reading: a second embedder with a result cache
        out["cache_hits_per_s"] = cache_hit_rate(model, texts)
    return out


def cache_hit_rate(model: str, texts: list[str], seconds: float = 1.0) -> float:
    """Texts/s of ``Embedder.embed`` when every text is already in its result cache
    (hash, lookup and assembling the result; no model call), best of three runs."""
    from ..service import Embedder

    emb = Embedder(model, cache_size=2 * len(texts))
    emb.embed(texts)
    best = 0.0
    for _ in range(3):
        began, done = time.perf_counter(), 0
        while time.perf_counter() - began < seconds / 3:
            emb.embed(texts)
            done += len(texts)
        best = max(best, done / (time.perf_counter() - began))
    return best


def _server(texts: list[str], model: str, concurrency: int, singles: int) -> dict:
    from . import loadtest

    r = loadtest.serve_and_load(model, texts, concurrency, singles)
    load, one = r["concurrent"], r["single"]
    return {"engine": "server", "device": "cpu", "runs": [{
        "budget": None, "concurrency": concurrency, "seconds": len(texts) / load["texts_per_s"],
        "texts_per_s": load["texts_per_s"], "tokens_per_s": None}],
        "latency": {"p50_ms": one["p50_ms"], "p95_ms": one["p95_ms"], "p99_ms": one["p99_ms"]},
        "under_load_p50_ms": load["p50_ms"], "peak_rss_mb": None}


def run(model: str = "minilm", corpus_name: str = "short", n: int = 300,
        budgets: tuple[int, ...] = (1024, 2048, 8192), engines: tuple[str, ...] = ENGINES,
        singles: int = 30, concurrency: int = 64, out_dir: str | os.PathLike = "bench-results",
        progress=None, repeats: int = 3, outputs: tuple[str, ...] = ("dense",)) -> dict:
    texts = corpus.load(corpus_name, n)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts_file = out_dir / "texts.json"
    texts_file.write_text(json.dumps(texts))
    onnx_cache = str(out_dir / "onnx-cache")
    from ..registry import resolve

    spec = resolve(model)
    shapes = model_gemm_shapes(spec, max(budgets))
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rate = matmul_flops(device, shapes)  # before and after the engines: the better one
    results = []
    for engine in engines:
        if progress:
            progress(engine)
        if engine == "server":
            results.append(_server(texts, model, concurrency, singles))
            continue
        args = json.dumps({"engine": engine, "texts_file": str(texts_file),
                           "budgets": list(budgets), "singles": singles, "model": model,
                           "onnx_cache": onnx_cache, "repeats": repeats,
                           "outputs": list(outputs)})
        child = subprocess.run([sys.executable, "-m", "hybridembed.bench.throughput", args],
                               capture_output=True, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if child.returncode != 0:
            results.append({"engine": engine, "error": child.stderr.strip().splitlines()[-1]
                            if child.stderr.strip() else f"exit {child.returncode}"})
            continue
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    rate = max(rate, matmul_flops(device, shapes))
    mean_tokens = _mean_tokens(spec, texts)
    fpt = flops_per_token(spec, mean_tokens)
    for r in results:
        for run_ in r.get("runs", []):
            tps = run_.get("tokens_per_s")
            if tps is None and run_.get("texts_per_s"):
                tps = run_["texts_per_s"] * mean_tokens
            run_["compute_utilisation"] = fpt * tps / rate if tps else None
    report = {"model": model, "corpus": corpus_name, "texts": len(texts),
              "mean_tokens": mean_tokens, "flops_per_token": fpt, "matmul_flops": rate,
              "machine": f"{os.cpu_count()} CPU(s)" + (
                  f", {torch.cuda.get_device_name()}" if device == "cuda" else ""),
              "device": device, "outputs": list(outputs), "date": time.strftime("%Y-%m-%d"),
              "engines": results}
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    report["chart"] = str(chart(report, out_dir / "bench.png"))
    return report


def _mean_tokens(spec, texts: list[str]) -> float:
    from ..engine import TextTokenizer

    tok = TextTokenizer(spec.path, spec.max_length)
    return statistics.mean(len(x) for x in tok.encode_truncated(texts))


def chart(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in report["engines"]:
        runs = [x for x in r.get("runs", []) if x.get("texts_per_s")]
        if not runs:
            continue
        if runs[0]["budget"] is None:  # a reference line: one setting only
            ax.axhline(runs[0]["texts_per_s"], linestyle="--", label=r["engine"])
        else:
            ax.plot([x["budget"] for x in runs], [x["texts_per_s"] for x in runs], marker="o",
                    label=r["engine"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch budget (padded tokens per forward pass)")
    ax.set_ylabel("texts / s")
    ax.set_title(f"{Path(report['model']).name}, {report['texts']} {Path(report['corpus']).name} "
                 f"texts (~{report['mean_tokens']:.0f} tokens), {report['machine']}",
                 fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_report(report: dict) -> str:
    ref = next((r["runs"][0]["texts_per_s"] for r in report["engines"]
                if r["engine"] == "sentence-transformers" and r.get("runs")), None)
    lines = [f"model {report['model']}: {report['texts']} {report['corpus']} texts, "
             f"~{report['mean_tokens']:.0f} tokens each; {report['machine']}; matmul "
             f"{report['matmul_flops'] / 1e9:.0f} GFLOP/s; "
             f"{report['flops_per_token'] / 1e6:.1f} MFLOP/token; our engines compute "
             f"{'+'.join(report.get('outputs', ['dense']))} in one pass",
             f"{'engine':<22} {'budget':>7} {'texts/s':>8} {'vs ST':>6} {'util':>6} "
             f"{'fill':>5} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'RSS MB':>7}"]
    for r in report["engines"]:
        if "error" in r:
            lines.append(f"{r['engine']:<22} failed: {r['error']}")
            continue
        for run_ in r["runs"]:
            vs = f"{run_['texts_per_s'] / ref:.2f}x" if ref else "-"
            util = run_.get("compute_utilisation")
            lat = r["latency"]
            fill = run_.get("padding_efficiency")
            lines.append(
                f"{r['engine']:<22} {run_['budget'] or '-':>7} {run_['texts_per_s']:>8.1f} "
                f"{vs:>6} {f'{util:.0%}' if util else '-':>6} "
                f"{f'{fill:.0%}' if fill else '-':>5} {lat['p50_ms']:>7.1f} "
                f"{lat['p95_ms']:>7.1f} {lat['p99_ms']:>7.1f} "
                f"{r['peak_rss_mb'] or 0:>7.0f}")
        if r.get("cache_hits_per_s"):
            lines.append(f"{'':<22} cache hits: {r['cache_hits_per_s']:,.0f} texts/s")
        if r.get("quality"):
            q = r["quality"]
            lines.append(f"{'':<22} quality vs torch fp32: min cosine {q['min_cosine']:.4f}, "
                         f"mean {q['mean_cosine']:.4f}")
    lines.append(f"chart: {report.get('chart')}")
    return "\n".join(lines)


if __name__ == "__main__":  # the child process of one engine
    a = json.loads(sys.argv[1])
    texts = json.loads(Path(a["texts_file"]).read_text())
    print(json.dumps(_child(a["engine"], texts, a["budgets"], a["singles"], a["model"],
                            a["onnx_cache"], a["repeats"], tuple(a["outputs"]))))
