"""The ONNX Runtime runtime: exports :class:`EncoderWithHeads` once per checkpoint, checks
the export against torch, caches it, and runs it with ``onnxruntime``.

On first use for a checkpoint the torch module is loaded exactly as the torch runtime
loads it (fp32, CPU, SDPA attention) and exported with dynamic batch and sequence axes.
Before the export a fixed sample of built-in texts of mixed length is embedded with
torch; the export (and, with ``quantize="int8"``, its dynamic int8 quantisation) is run
on the same sample and the cosine of every pooled dense vector against torch's is
recorded in ``quality.json`` beside the model. An fp32 export that does not reproduce
torch is refused outright; an int8 model whose mean cosine is under
:data:`INT8_MIN_MEAN_COSINE` is refused unless ``force=True``.

Cache layout (root: ``cache_dir``, else ``$HYBRIDEMBED_ONNX_CACHE``, else
``~/.cache/hybridembed/onnx``)::

    <root>/<content hash>/fp32/model.onnx  quality.json  reference.npz
    <root>/<content hash>/int8/model.onnx  quality.json

The hash covers ``config.json``, the weight files, the head files, the pooling mode and
the export format. Each variant folder is built under a temporary name and renamed into
place, so an interrupted export never leaves a half-written entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidOptionError, UnsupportedModelError
from ..registry import ModelSpec
from .base import RuntimeOutOfMemory, RuntimeOutput, keep_heaviest
from .late_interaction import LateInteractionTokens

log = logging.getLogger(__name__)

CACHE_ENV = "HYBRIDEMBED_ONNX_CACHE"
OPSET = 17
# Bumped whenever the exported graph or the cache layout changes; part of the hash.
FORMAT_VERSION = 1
# What a server loads (runtimes.serving_options): batches one per core, as torch's run, on
# one-thread sessions (nothing spins); the whole-machine session's threads stop spinning
# when a call ends: spinning on (~60 ms after each call) took a core from the next batches
# and, measured with pauses between the compared blocks, gained a lone client nothing
# (docs/BENCHMARKS.md, session 6).
SERVING_OPTIONS = {"spin": "in-call", "side_by_side": True}
QUANTIZE: tuple[str, ...] = ("int8",)
DTYPES: tuple[str, ...] = ("auto", "fp32", "int8")
# The export must reproduce torch: below this worst-case cosine it is a broken export.
FP32_MIN_COSINE = 0.999
# int8 is refused (unless forced) when its mean dense cosine to torch fp32 is below this.
INT8_MIN_MEAN_COSINE = 0.99
# The recipes below are tried fastest first until one reaches this mean cosine (else the
# closest is kept). On all-MiniLM-L6-v2 the fastest recipe reached 0.991 and lost 0.9-1.2%
# dense nDCG@10 against fp32 on a first version of `hybridembed evaluate --dataset
# stdlib`; the next, at 0.9956, lost 0.4% there and 0.7% on the final set
# (docs/BENCHMARKS.md), so the aim sits above the refusal line.
INT8_TARGET_MEAN_COSINE = 0.995
GATE_BATCH = 8

INPUTS = ("input_ids", "attention_mask")

# Dynamic int8 recipes, tried in order until one reaches INT8_TARGET_MEAN_COSINE. Every
# recipe quantises only weight x activation MatMuls inside the transformer layers, with one
# scale per output channel; embeddings, pooling and the sparse/ColBERT heads stay fp32.
# The first recipe quantises every layer MatMul (the fastest); the FFN down-projection
# (``layer.N/output/dense``) reads GELU outputs with outlier channels and costs the most
# accuracy, so the next ones keep it (and then the first and last layers) in fp32. On
# all-MiniLM-L6-v2, 2-core AMD EPYC with VNNI (2026-11-24, texts/s of ONNX fp32 = 1.00):
# every MatMul 2.47x at mean cosine 0.991; ffn-out fp32 1.72x at 0.9956 (chosen there).
INT8_RECIPES: tuple[dict[str, Any], ...] = (
    {"name": "per-channel, every layer MatMul", "keep_fp32": ()},
    {"name": "per-channel, ffn-out fp32", "keep_fp32": ("ffn_out",)},
    {"name": "per-channel, ffn-out + first/last layers fp32",
     "keep_fp32": ("ffn_out", "first_layer", "last_layer")},
)
# Bumped whenever the recipes change: an int8 entry built under another version is rebuilt
# (the fp32 export beside it is kept).
INT8_VERSION = 3
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def needs_reduce_range() -> bool:
    """Whether int8 weights should use 7 bits: only on x86 CPUs without VNNI, whose u8 x s8
    instruction (VPMADDUBSW) can saturate. With VNNI (or on ARM) full 8-bit weights are
    both faster and more accurate (measured: mean cosine 0.9910 vs 0.9895, 579 vs 458
    texts/s on MiniLM)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume the conservative setting
        return True
    return not any(f" {flag}" in flags for flag in _VNNI_FLAGS)


_LAYER = re.compile(r"(?:^|/)(?:layer|layers)\.(\d+)(?:/|$)")
_HEADS = ("sparse_linear", "colbert_linear", "mlm_head", "dense_layers")


# -- gate sample --------------------------------------------------------------------------

_GATE_SENTENCES = (
    "Hybrid search combines dense vectors with sparse lexical weights.",
    "The river runs through the old city before it reaches the sea.",
    "A vector database stores embeddings and answers nearest-neighbour queries.",
    "She bought fresh bread, two apples and a bottle of milk at the market.",
    "Transformers read every token in the context at once through self-attention.",
    "The museum opens at nine and closes early on Sundays.",
    "Quarterly revenue grew by 12% while operating costs stayed flat.",
    "To reset the router, hold the button for ten seconds until the light blinks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The committee postponed the vote on the new energy policy until March.",
    "Late-interaction models keep one vector per token and score with MaxSim.",
    "Heavy rain is expected in the mountains tonight, with snow above 1500 m.",
    "La recherche hybride combine des vecteurs denses et des poids lexicaux.",
    "Der Zug nach Berlin fährt heute wegen Bauarbeiten zwanzig Minuten später.",
    "¿Dónde está la biblioteca más cercana a la estación de tren?",
    "日本語の文章も同じモデルで検索できます。",
    "def add(a, b):\n    return a + b  # a tiny Python function",
    "ERROR 2024-05-01T12:00:03Z worker-7 timeout after 30s (retry 3/5)",
    "BM25 weighs a term by its frequency in the document and its rarity in the corpus.",
    "The recipe calls for 200 g of flour, 3 eggs and a pinch of salt.",
)
_GATE_SHORT = ("cat", "hybrid search", "how to bake bread", "naïve café", "emoji 🚀 rocket",
               "UPPER lower MiXeD", "", "2024")


def gate_texts(n: int = 64) -> list[str]:
    """``n`` fixed texts from one word to a few hundred tokens, mixed languages."""
    sizes = (1, 1, 2, 2, 3, 4, 6, 18)  # sentences; 18 is over MiniLM's 256-token limit
    texts: list[str] = []
    for i in range(n):
        if i % 8 == 0:
            texts.append(_GATE_SHORT[(i // 8) % len(_GATE_SHORT)])
            continue
        size = sizes[(i + i // 8) % len(sizes)]
        start = (i * 7) % len(_GATE_SENTENCES)
        texts.append(" ".join(_GATE_SENTENCES[(start + k * 3) % len(_GATE_SENTENCES)]
                              for k in range(size)))
    return texts


def _gate_batches(spec: ModelSpec) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """The gate sample tokenized and padded in batches, and its texts in batch order."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(spec.path))
    texts = gate_texts()
    ids = tok(texts, truncation=True, max_length=spec.max_length,
              return_token_type_ids=False)["input_ids"]
    # The first batch spans every length (heavy padding); the rest are grouped by length
    # as the engine packs them (little padding), which keeps the gate quick.
    by_length = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    last = len(ids) - 1
    mixed = sorted({by_length[round(k * last / (GATE_BATCH - 1))] for k in range(GATE_BATCH)})
    rest = [i for i in by_length if i not in set(mixed)]
    order = mixed + rest
    batches = []
    for start in range(0, len(order), GATE_BATCH):
        rows = [ids[i] for i in order[start:start + GATE_BATCH]]
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), tok.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            input_ids[r, :len(row)] = row
            mask[r, :len(row)] = 1
        batches.append((input_ids, mask))
    return batches, [texts[i] for i in order]


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.sum(_unit(got) * _unit(want), axis=-1)


# -- cache key ----------------------------------------------------------------------------

def _weight_files(folder: Path) -> list[Path]:
    """The weight files transformers loads from ``folder``, in its order of preference."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                shards = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UnsupportedModelError(f"cannot read {folder / index}: {exc}") from exc
            return [folder / index] + [folder / s for s in sorted(set(shards.values()))]
    raise UnsupportedModelError(f"{folder} has no weights for an ONNX export")


_HASHES: dict[str, str] = {}
_MEMO_FILE = "file-hashes.json"
_MEMO_MIN_BYTES = 64 << 20


def _file_digest(path: Path, memo: dict[str, str]) -> str:
    """sha256 of a file, remembered by (path, size, mtime): in this process, and for large
    files in ``memo`` (kept in the cache root, so a 2 GB checkpoint is hashed once)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in _HASHES:
        if key in memo:
            _HASHES[key] = memo[key]
        else:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(8 << 20), b""):
                    digest.update(chunk)
            _HASHES[key] = digest.hexdigest()
    if stat.st_size >= _MEMO_MIN_BYTES:
        memo[key] = _HASHES[key]
    return _HASHES[key]


def model_hash(spec: ModelSpec, root: Path | None = None) -> str:
    """Content hash of everything the export depends on."""
    files = [("config.json", spec.path / "config.json")]
    files += [(f"weights/{p.name}", p) for p in _weight_files(spec.path)]
    for role, head in (("sparse", spec.sparse_head), ("colbert", spec.colbert_head)):
        if head is not None:
            files.append((f"head/{role}", Path(head)))
    for role, layers in (("dense", spec.dense_layers), ("token", spec.token_projection)):
        files += [(f"{role}/{i}", layer.weights) for i, layer in enumerate(layers)]
    memo_path = root / _MEMO_FILE if root is not None else None
    memo = (_read_json(memo_path) or {}) if memo_path is not None else {}
    before = dict(memo)
    digest = hashlib.sha256(f"hybridembed-onnx/{FORMAT_VERSION}/opset{OPSET}/"
                            f"pooling={spec.pooling}/{_heads_key(spec)}\n".encode())
    for name, path in files:
        if not path.is_file():
            raise UnsupportedModelError(f"{path} is missing; cannot export {spec.name}")
        digest.update(f"{name}\0{_file_digest(path, memo)}\n".encode())
    if memo_path is not None and memo != before:
        with contextlib.suppress(OSError):  # only a speed-up: never fail a load over it
            root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{_MEMO_FILE}.", dir=root)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(memo, fh, indent=1, sort_keys=True)
            os.replace(tmp, memo_path)
    return digest.hexdigest()[:32]


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "hybridembed" / "onnx"


# -- export -------------------------------------------------------------------------------

def _heads_key(spec: ModelSpec) -> str:
    """The head settings an export bakes in, for the cache key."""
    layers = [(d.in_features, d.out_features, d.bias, d.activation)
              for d in spec.dense_layers + spec.token_projection]
    return f"{spec.family}/{spec.splade}/{layers}/all_tokens={spec.late_interaction is not None}"


def _load_torch_module(spec: ModelSpec):
    """The torch module exactly as the torch runtime builds it, fp32 on CPU."""
    import torch
    from transformers.utils import logging as hf_logging

    from .torch_model import build_module
    from .torch_runtime import _load_encoder

    hf_logging.disable_progress_bar()
    return build_module(spec, torch.float32, _load_encoder).to("cpu").eval()


def _sparse_output(module) -> str | None:
    """Name of the module's sparse output: SPLADE's vocabulary weights, BGE-M3's token
    weights, or None."""
    if module.mlm_head is not None:
        return "vocab_weights"
    return "token_weights" if module.sparse_linear is not None else None


def _output_names(sparse: str | None) -> list[str]:
    return ["dense"] + ([sparse] if sparse else []) + ["token_vectors"]


def _torch_outputs(module, batches) -> list[list[np.ndarray]]:
    import torch

    outs = []
    with torch.inference_mode():
        for ids, mask in batches:
            pooled, weights, vectors = module(torch.from_numpy(ids), torch.from_numpy(mask))
            outs.append([t.float().numpy() for t in (pooled, weights, vectors) if t is not None])
    return outs


def _export(module, path: Path, sample: tuple[np.ndarray, np.ndarray]) -> str:
    """Write ``module`` as ONNX to ``path``; returns the exporter used. The TorchScript
    exporter handles transformers' SDPA masks with dynamic axes; the dynamo exporter is the
    fallback where it is gone. The traced module must not be run again afterwards (the
    trace leaves it in a state that no longer matches its own outputs)."""
    import torch
    from torch import nn

    sparse = _sparse_output(module)
    has_sparse = sparse is not None

    class Exportable(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            pooled, weights, vectors = self.inner(input_ids, attention_mask, True, True, True)
            return (pooled, weights, vectors) if has_sparse else (pooled, vectors)

    wrapper = Exportable(module).eval()
    args = tuple(torch.from_numpy(a) for a in sample)
    names = _output_names(sparse)
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "dense": {0: "batch"},
            "token_vectors": {0: "batch", 1: "length" if module.all_tokens else "length_after_cls"}}
    if sparse == "token_weights":
        axes["token_weights"] = {0: "batch", 1: "length"}
    elif sparse:
        axes[sparse] = {0: "batch"}
    errors = []
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=OPSET,
                              input_names=list(INPUTS), output_names=names,
                              dynamic_axes=axes, do_constant_folding=True)
            return "torchscript"
        except Exception as exc:  # any failure: try the other exporter
            errors.append(f"torchscript exporter: {type(exc).__name__}: {exc}")
        try:
            batch, length = torch.export.Dim("batch"), torch.export.Dim("length", min=2)
            program = torch.onnx.export(
                wrapper, args, dynamo=True, opset_version=OPSET, input_names=list(INPUTS),
                output_names=names,
                dynamic_shapes={"input_ids": {0: batch, 1: length},
                                "attention_mask": {0: batch, 1: length}})
            program.save(str(path))
            return "dynamo"
        except Exception as exc:
            errors.append(f"dynamo exporter: {type(exc).__name__}: {exc}")
    raise UnsupportedModelError("cannot export the model to ONNX; " + "; ".join(errors))


def _save_onnx(src: Path, dest: Path) -> None:
    """Rewrite ``src`` as ``dest``, weights in one ``.data`` file beside it when the
    model is over protobuf's 2 GB limit."""
    import onnx

    model = onnx.load(str(src))
    try:
        big = model.ByteSize() > 1_800_000_000
    except Exception:  # protobuf may refuse to size a > 2 GB message
        big = True
    onnx.save_model(model, str(dest), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=dest.name + ".data", size_threshold=1024)


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def _staging(final: Path):
    """A temporary folder beside ``final`` renamed to ``final`` when the block succeeds;
    removed when it fails. Losing the race to another process keeps the other's entry."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "quality.json").is_file():
                raise
            log.info("%s was written by another process meanwhile; using it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SPIN = ("always", "in-call", "never")


def _session(path: Path, providers: list, threads: int, spin: str = "always"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if spin == "never":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif spin == "in-call":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers)


def _run_gate(session, batches) -> list[list[np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    return [session.run(names, {"input_ids": ids, "attention_mask": mask})
            for ids, mask in batches]


def _dense_quality(got: list[list[np.ndarray]], reference: np.ndarray,
                   texts: list[str]) -> dict[str, Any]:
    cos = _cosines(np.concatenate([o[0] for o in got]), reference)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "worst_text": texts[int(cos.argmin())][:80]}


def export_fp32(spec: ModelSpec, folder: Path) -> dict[str, Any]:
    """Export ``spec`` into the variant folder ``folder`` (fp32); returns its quality."""
    started = time.perf_counter()
    batches, texts = _gate_batches(spec)
    module = _load_torch_module(spec)
    reference = _torch_outputs(module, batches)  # before the export: see _export
    sparse = _sparse_output(module)
    first = 0 if module.all_tokens else 1
    with _staging(folder) as tmp:
        raw = tmp / "raw" / "model.onnx"
        raw.parent.mkdir()
        exporter = _export(module, raw, batches[0])
        del module
        _save_onnx(raw, tmp / "model.onnx")
        shutil.rmtree(raw.parent)
        session = _session(tmp / "model.onnx", ["CPUExecutionProvider"], os.cpu_count() or 1)
        got = _run_gate(session, batches)
        del session
        ref_dense = np.concatenate([r[0] for r in reference])
        quality = _dense_quality(got, ref_dense, texts)
        valid = [m[:, first:].astype(bool) for _, m in batches]
        vec_cos = np.concatenate([
            np.sum(g[-1] * r[-1], axis=-1)[v] for g, r, v in zip(got, reference, valid,
                                                               strict=True)])
        quality["token_vectors_min_cosine"] = float(vec_cos.min())
        if sparse == "token_weights":
            quality["token_weights_max_abs_error"] = float(max(
                np.abs(g[1] - r[1])[m.astype(bool)].max()
                for g, r, (_, m) in zip(got, reference, batches, strict=True)))
        elif sparse:
            quality["vocab_weights_max_abs_error"] = float(max(
                np.abs(g[1] - r[1]).max() for g, r in zip(got, reference, strict=True)))
        record = {"variant": "fp32", "model": spec.name, "source": str(spec.path),
                  "outputs": _output_names(sparse), "exporter": exporter, "opset": OPSET,
                  "reference": "torch fp32 CPU (the torch runtime's module)",
                  "texts": int(ref_dense.shape[0]), **quality, **_versions(),
                  "export_seconds": round(time.perf_counter() - started, 2),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if quality["min_cosine"] < FP32_MIN_COSINE or quality["token_vectors_min_cosine"] < (
                FP32_MIN_COSINE):
            raise UnsupportedModelError(
                f"the ONNX export of {spec.name} does not reproduce torch (dense min cosine "
                f"{quality['min_cosine']:.6f}, token vectors min cosine "
                f"{quality['token_vectors_min_cosine']:.6f}); use runtime='torch'")
        np.savez(tmp / "reference.npz", dense=ref_dense.astype(np.float32))
        _write_json(tmp / "quality.json", record)
    log.info("exported %s to ONNX in %.1fs (dense cosine to torch: min %.6f, mean %.6f)",
             spec.name, record["export_seconds"], quality["min_cosine"], quality["mean_cosine"])
    return record


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- int8 ---------------------------------------------------------------------------------

def _int8_nodes(model, keep_fp32: tuple[str, ...]) -> tuple[list[str], int]:
    """Names of the MatMuls to quantise under a recipe, and how many were eligible."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    eligible = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        if node.input[1] not in constants or any(h in node.name for h in _HEADS):
            continue
        match = _LAYER.search(node.name)
        eligible.append((node.name, int(match.group(1)) if match else None))
    layers = [layer for _, layer in eligible if layer is not None]
    if not layers:  # names without layer numbers (another exporter): every weight MatMul
        return [name for name, _ in eligible], len(eligible)
    first, last = min(layers), max(layers)
    chosen = []
    for name, layer in eligible:
        if layer is None:
            continue
        if "ffn_out" in keep_fp32 and "/output/dense" in name and "attention" not in name:
            continue
        if ("first_layer" in keep_fp32 and layer == first) or (
                "last_layer" in keep_fp32 and layer == last):
            continue
        chosen.append(name)
    return chosen, len(eligible)


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizer chats on the root logger (and so may configure it): its
    info and warnings (pre-processing advice, unquantised tensors) are dropped."""
    root = logging.getLogger()
    added = None
    if not root.handlers:
        added = logging.NullHandler()
        root.addHandler(added)

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if added is not None:
            root.removeHandler(added)


def quantize_int8(spec: ModelSpec, fp32_folder: Path, folder: Path) -> dict[str, Any]:
    """Dynamic int8 quantisation of the cached fp32 export, gated against torch's
    reference vectors: recipes are tried fastest first and the first to reach
    :data:`INT8_TARGET_MEAN_COSINE` wins, else the closest is kept; either way a model
    under :data:`INT8_MIN_MEAN_COSINE` is refused on load unless forced."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    batches, texts = _gate_batches(spec)
    with np.load(fp32_folder / "reference.npz") as data:
        reference = data["dense"]
    source = fp32_folder / "model.onnx"
    graph = onnx.load(str(source), load_external_data=False)
    big = source.stat().st_size + sum(p.stat().st_size for p in fp32_folder.glob("*.data")) > (
        1_800_000_000)
    with _staging(folder) as tmp:
        best = None
        reduce_range = needs_reduce_range()
        for i, recipe in enumerate(INT8_RECIPES):
            nodes, eligible = _int8_nodes(graph, recipe["keep_fp32"])
            if not nodes:  # e.g. first + last layers kept on a two-layer model
                continue
            out = tmp / f"candidate{i}" / "model.onnx"
            out.parent.mkdir()
            with _quiet_quantizer(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(source, out, op_types_to_quantize=["MatMul", "Gemm"],
                                 nodes_to_quantize=nodes, per_channel=True,
                                 reduce_range=reduce_range, weight_type=QuantType.QInt8,
                                 use_external_data_format=big,
                                 extra_options={"MatMulConstBOnly": True})
            session = _session(out, ["CPUExecutionProvider"], os.cpu_count() or 1)
            quality = _dense_quality(_run_gate(session, batches), reference, texts)
            del session
            quality.update(recipe=recipe["name"], reduce_range=reduce_range,
                           quantized_nodes=len(nodes),
                           weight_matmuls=eligible)
            log.info("int8 recipe %r: dense cosine min %.4f mean %.4f", recipe["name"],
                     quality["min_cosine"], quality["mean_cosine"])
            if best is None or quality["mean_cosine"] > best[1]["mean_cosine"]:
                if best is not None:
                    shutil.rmtree(best[0].parent)
                best = (out, quality)
            else:
                shutil.rmtree(out.parent)
            if quality["mean_cosine"] >= INT8_TARGET_MEAN_COSINE:
                break
        if best is None:
            raise UnsupportedModelError(f"{spec.name}: no weight MatMul to quantise")
        out, quality = best
        for item in out.parent.iterdir():
            os.rename(item, tmp / item.name)
        out.parent.rmdir()
        record = {"variant": "int8", "int8_version": INT8_VERSION, "model": spec.name,
                  "source": str(spec.path),
                  "method": "onnxruntime.quantization.quantize_dynamic (QInt8 weights)",
                  "reference": "torch fp32 CPU (the torch runtime's module)",
                  "texts": int(reference.shape[0]), "threshold_mean_cosine":
                  INT8_MIN_MEAN_COSINE, "target_mean_cosine": INT8_TARGET_MEAN_COSINE,
                  "passed": quality["mean_cosine"] >= INT8_MIN_MEAN_COSINE,
                  **quality, **_versions(),
                  "quantize_seconds": round(time.perf_counter() - started, 2),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(tmp / "quality.json", record)
    return record


# -- runtime ------------------------------------------------------------------------------

def _providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def pick_device(device: str | None, quantize: str | None) -> str:
    device = device or "auto"
    if not isinstance(device, str):
        raise InvalidOptionError(f"device must be a string, got {device!r}", "device")
    base, _, index = device.partition(":")
    if base not in ("auto", "cpu", "cuda") or (index and (base != "cuda" or not index.isdigit())):
        raise InvalidOptionError(f"unknown device {device!r} for runtime 'onnx'; valid: auto, "
                                 "cpu, cuda (optionally cuda:N)", "device")
    has_cuda = "CUDAExecutionProvider" in _providers()
    if base == "auto":
        return "cuda" if has_cuda and quantize is None else "cpu"
    if base == "cuda":
        if quantize is not None:
            raise InvalidOptionError("int8 (dynamic quantisation) runs on device 'cpu' only",
                                     "device")
        if not has_cuda:
            raise InvalidOptionError(
                "device 'cuda' asked for but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(_providers())}); install onnxruntime-gpu or use "
                "device='cpu'", "device")
    return device


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("failed to allocate", "bad_alloc", "out of memory",
                                   "outofmemory", "cudaerrormemoryallocation",
                                   "available memory of"))


class OnnxRuntime:
    """Runs the cached ONNX export of ``spec`` with ONNX Runtime.

    ``quantize="int8"`` (or ``dtype="int8"``) loads the dynamically quantised model,
    refused when its quality gate failed unless ``force=True``. ``quality`` holds the
    loaded variant's cosine to torch fp32; ``exported``/``quantized`` tell whether this
    instance had to build the cache entry. ``spin``: whether ONNX Runtime's compute threads
    spin while they wait for work — ``"always"`` (its default: also after a call, fastest
    for a process doing nothing but embedding), ``"in-call"`` (between the operators of a
    call, then they sleep: the server's choice) or ``"never"``.
    ``side_by_side=True`` (the server, on a multi-core CPU): a second session with one
    compute thread, so :attr:`parallel_forwards` batches run at once, one per core, each
    on its caller's thread (``forward(threads=1)``) — no thread pool to spin or wake, as
    the torch runtime's lanes; a lone batch still takes the first session's threads. The
    weights are loaded twice.
    """

    def __init__(self, spec: ModelSpec, device: str = "auto", dtype: str | None = None,
                 threads: int | None = None, quantize: str | None = None,
                 cache_dir: str | os.PathLike | None = None, force: bool = False,
                 spin: str = "always", side_by_side: bool = False):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise InvalidOptionError(f"runtime 'onnx' needs the onnx and onnxruntime packages "
                                     f"({exc}); `pip install onnx onnxruntime`, or use "
                                     "runtime='torch'", "runtime") from exc
        if dtype not in (None, *DTYPES):
            raise InvalidOptionError(f"unknown dtype {dtype!r} for runtime 'onnx'; valid: "
                                     f"{', '.join(DTYPES)} (int8 = quantize='int8')", "dtype")
        if spin not in SPIN:
            raise InvalidOptionError(f"spin must be one of {', '.join(SPIN)}, got {spin!r}",
                                     "spin")
        if quantize not in (None, *QUANTIZE):
            raise InvalidOptionError(f"unknown quantize {quantize!r}; valid: None, "
                                     f"{', '.join(QUANTIZE)}", "quantize")
        if dtype == "int8":
            quantize = "int8"
        elif dtype == "fp32" and quantize is not None:
            raise InvalidOptionError("dtype='fp32' contradicts quantize='int8'", "dtype")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise InvalidOptionError(f"threads must be a whole number >= 1, got {threads!r}",
                                     "threads")
        self.spec = spec
        self.device = pick_device(device, quantize)
        self.dtype = quantize or "fp32"
        self.force = bool(force)
        self.threads = int(threads or os.cpu_count() or 1)
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
        self.cache_dir = root / model_hash(spec, root)
        self.exported = self.quantized = False

        fp32 = self.cache_dir / "fp32"
        record = _read_json(fp32 / "quality.json") if (fp32 / "model.onnx").is_file() else None
        if record is None:
            if fp32.exists():  # an entry from a crashed older layout: rebuild it
                shutil.rmtree(fp32, ignore_errors=True)
            record = export_fp32(spec, fp32)
            self.exported = True
        if self.dtype == "int8":
            folder = self.cache_dir / "int8"
            record = (_read_json(folder / "quality.json")
                      if (folder / "model.onnx").is_file() else None)
            if (record is None or record.get("int8_version") != INT8_VERSION
                    or record.get("reduce_range") != needs_reduce_range()):
                # built by other recipes, or for a CPU that needs other weights (a cache
                # shared between machines): quantise again, the gate runs again
                if folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)
                record = quantize_int8(spec, fp32, folder)
                self.quantized = True
            if record["mean_cosine"] < INT8_MIN_MEAN_COSINE and not self.force:
                raise UnsupportedModelError(
                    f"int8 quantisation of {spec.name} failed its quality gate: dense cosine "
                    f"to torch fp32 mean {record['mean_cosine']:.4f}, min "
                    f"{record['min_cosine']:.4f} (needs mean >= {INT8_MIN_MEAN_COSINE}) over "
                    f"{record['texts']} texts; pass force=True to load it anyway, or use fp32")
        else:
            folder = fp32
        self.record = record
        self.quality = {"min_cosine": float(record["min_cosine"]),
                        "mean_cosine": float(record["mean_cosine"])}
        self.model_path = folder / "model.onnx"
        if self.device.startswith("cuda"):
            _, _, index = self.device.partition(":")
            providers = [("CUDAExecutionProvider", {"device_id": int(index or 0)}),
                         "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = _session(self.model_path, providers, self.threads, spin)
            self.lane_session = None
            if side_by_side and self.device == "cpu" and self.threads > 1:
                self.lane_session = _session(self.model_path, providers, 1, spin)
                self.parallel_forwards = self.threads
        except Exception as exc:
            if _is_oom(exc):
                raise RuntimeOutOfMemory(str(exc)) from exc
            raise
        self.outputs = {o.name for o in self.session.get_outputs()}
        self.late = (LateInteractionTokens(spec.late_interaction, spec.path)
                     if spec.late_interaction is not None else None)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, *, dense: bool,
                sparse: bool, multivector: bool, query: bool = False,
                threads: int | None = None) -> RuntimeOutput:
        """One batch (of queries with ``query``: ColBERT query expansion); ``threads=1``
        runs it on the one-thread session when there is one (``side_by_side``)."""
        wanted = [name for name, on in (("dense", dense), ("token_weights", sparse),
                                        ("vocab_weights", sparse),
                                        ("token_vectors", multivector))
                  if on and name in self.outputs]
        if not wanted:
            return RuntimeOutput()
        plan = self.late.plan(input_ids, attention_mask, query) if self.late else None
        if plan is not None:
            input_ids, attention_mask = plan.input_ids, plan.attention_mask
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}
        session = self.lane_session if threads == 1 and self.lane_session else self.session
        try:
            results = session.run(wanted, feeds)
        except Exception as exc:
            if _is_oom(exc):
                raise RuntimeOutOfMemory(str(exc)) from exc
            raise
        got = {name: np.asarray(value, dtype=np.float32)
               for name, value in zip(wanted, results, strict=True)}
        vocab = got.get("vocab_weights")
        if vocab is not None and self.spec.max_active_dims:
            vocab = keep_heaviest(vocab, self.spec.max_active_dims)
        return RuntimeOutput(dense=got.get("dense"), token_weights=got.get("token_weights"),
                             token_vectors=got.get("token_vectors"), vocab_weights=vocab,
                             token_mask=None if plan is None or "token_vectors" not in got
                             else plan.keep)
