"""The ONNX runtime: export once per checkpoint into a content-keyed cache, parity with
sentence-transformers and with the torch runtime (BGE-M3 heads), the int8 quality gate,
option validation and out-of-memory translation."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hybridembed import Embedder  # noqa: E402
from hybridembed.errors import InvalidOptionError, UnsupportedModelError  # noqa: E402
from hybridembed.registry import resolve  # noqa: E402
from hybridembed.runtimes import RuntimeOutOfMemory, load_runtime  # noqa: E402
from hybridembed.runtimes import onnx_runtime as ox  # noqa: E402
from tests.service.test_parity import assert_parity, mixed_texts  # noqa: E402


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One cache for the module, also reachable through the environment variable (the
    path ``Embedder(..., runtime="onnx")`` takes)."""
    root = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ox.CACHE_ENV, str(root))
        yield root


@pytest.fixture(scope="module")
def minilm_onnx(onnx_cache):
    return Embedder("minilm", runtime="onnx", device="cpu", cache_size=0)


def test_dense_parity_with_sentence_transformers(minilm_onnx, st_reference):
    emb = minilm_onnx
    assert emb.dtype == "fp32" and emb.device == "cpu"
    assert emb._runtime.exported and emb._runtime.quality["min_cosine"] >= 0.9999
    texts, reference = st_reference
    assert_parity(emb.embed(texts).dense, reference)


def test_protocol_outputs_without_sparse_head(minilm_onnx):
    rt = minilm_onnx._runtime
    ids = np.array([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=np.int64)
    mask = (np.arange(4) < np.array([[4], [3]])).astype(np.int64)
    out = rt.forward(ids, mask, dense=True, sparse=True, multivector=True)
    assert out.token_weights is None  # no learned sparse head: BM25 is used above
    assert out.dense.shape == (2, 384) and out.dense.dtype == np.float32
    assert out.token_vectors.shape == (2, 3, 384) and out.token_vectors.dtype == np.float32
    np.testing.assert_array_equal(out.token_vectors[1, 2], 0.0)  # padded position
    np.testing.assert_allclose(np.linalg.norm(out.token_vectors[0], axis=-1), 1.0, atol=1e-5)
    assert rt.forward(ids, mask, dense=False, sparse=True, multivector=False).dense is None


def test_cache_is_reused_and_described(minilm_onnx, onnx_cache):
    first = minilm_onnx._runtime
    model = first.model_path
    assert model.parent.parent.parent == onnx_cache and model.parent.name == "fp32"
    mtime = model.stat().st_mtime_ns
    again = ox.OnnxRuntime(minilm_onnx.spec)  # cache from the environment variable
    assert not again.exported and again.model_path == model
    assert model.stat().st_mtime_ns == mtime
    record = json.loads((model.parent / "quality.json").read_text())
    assert record["variant"] == "fp32" and record["texts"] == len(ox.gate_texts()) == 64
    assert record["outputs"] == ["dense", "token_vectors"] and record["opset"] >= 17
    assert again.quality == {"min_cosine": record["min_cosine"],
                             "mean_cosine": record["mean_cosine"]}
    assert not [p for p in onnx_cache.rglob("*") if ".tmp-" in p.name]
    memo = json.loads((onnx_cache / "file-hashes.json").read_text())  # big files hashed once
    assert any("model.safetensors|" in key for key in memo)


def test_int8_gate_and_force(minilm_onnx, onnx_cache, monkeypatch):
    spec = minilm_onnx.spec
    try:
        rt = ox.OnnxRuntime(spec, quantize="int8", cache_dir=onnx_cache)
    except UnsupportedModelError as exc:  # refused: the message carries the numbers
        assert "mean" in str(exc) and "force=True" in str(exc)
        rt = ox.OnnxRuntime(spec, quantize="int8", cache_dir=onnx_cache, force=True)
    else:
        assert rt.quantized and rt.quality["mean_cosine"] >= ox.INT8_MIN_MEAN_COSINE
    assert rt.dtype == "int8" and rt.model_path.parent.name == "int8"
    record = json.loads((rt.model_path.parent / "quality.json").read_text())
    assert record["mean_cosine"] == rt.quality["mean_cosine"] and record["recipe"]
    assert record["int8_version"] == ox.INT8_VERSION
    assert record["reduce_range"] == ox.needs_reduce_range()
    print(f"\nint8 ({record['recipe']}): min cosine {record['min_cosine']:.4f}, "
          f"mean {record['mean_cosine']:.4f}")

    # The same model under a stricter gate is refused from its cached record, with the
    # measured numbers, and loads with force=True without quantising again.
    monkeypatch.setattr(ox, "INT8_MIN_MEAN_COSINE", 0.99999)
    with pytest.raises(UnsupportedModelError, match=r"mean 0\.\d+, min 0\.\d+.*force=True"):
        ox.OnnxRuntime(spec, quantize="int8", cache_dir=onnx_cache)
    forced = ox.OnnxRuntime(spec, quantize="int8", cache_dir=onnx_cache, force=True)
    assert not forced.quantized and forced.quality == rt.quality

    # An entry built by an older recipe set is rebuilt; the fp32 export beside it is kept.
    fp32_mtime = minilm_onnx._runtime.model_path.stat().st_mtime_ns
    stale = rt.model_path.parent / "quality.json"
    stale.write_text(json.dumps({**record, "int8_version": ox.INT8_VERSION - 1}))
    rebuilt = ox.OnnxRuntime(spec, quantize="int8", cache_dir=onnx_cache, force=True)
    assert rebuilt.quantized and not rebuilt.exported
    assert json.loads(stale.read_text())["int8_version"] == ox.INT8_VERSION
    assert minilm_onnx._runtime.model_path.stat().st_mtime_ns == fp32_mtime
    # ... and so is one quantised for a CPU that needs other weights (a shared cache).
    stale.write_text(json.dumps({**json.loads(stale.read_text()),
                                 "reduce_range": not ox.needs_reduce_range()}))
    assert ox.OnnxRuntime(spec, quantize="int8", cache_dir=onnx_cache, force=True).quantized

    # Through the engine: dtype="int8" picks the quantised model.
    monkeypatch.setattr(ox, "INT8_MIN_MEAN_COSINE", 0.0)
    emb = Embedder("minilm", runtime="onnx", dtype="int8", cache_size=0)
    assert emb.dtype == "int8"
    texts = ["hybrid search with dense and sparse vectors", "a cat", "Der Fluss"]
    cos = np.sum(emb.embed(texts).dense * minilm_onnx.embed(texts).dense, axis=1)
    assert cos.min() > 0.95


def test_int8_recipes_fastest_first_until_the_target(tiny_m3_dir, tmp_path, monkeypatch,
                                                     caplog):
    """The fastest recipe that reaches the target mean cosine wins; when none does, every
    recipe that applies is tried and the closest kept. On this two-layer model the last
    recipe (first and last layers kept fp32) leaves nothing to quantise and is skipped."""
    import logging

    spec = resolve(str(tiny_m3_dir))
    monkeypatch.setattr(ox, "INT8_TARGET_MEAN_COSINE", 0.0)
    first = ox.OnnxRuntime(spec, quantize="int8", cache_dir=tmp_path / "a", force=True)
    assert first.record["recipe"] == ox.INT8_RECIPES[0]["name"]

    monkeypatch.setattr(ox, "INT8_TARGET_MEAN_COSINE", 1.01)  # out of reach
    with caplog.at_level(logging.INFO, logger=ox.log.name):
        closest = ox.OnnxRuntime(spec, quantize="int8", cache_dir=tmp_path / "b", force=True)
    tried = [r.args for r in caplog.records if r.msg.startswith("int8 recipe")]
    assert [name for name, *_ in tried] == [r["name"] for r in ox.INT8_RECIPES[:2]]
    assert closest.record["mean_cosine"] == pytest.approx(max(mean for *_, mean in tried))
    assert closest.record["target_mean_cosine"] == 1.01
    assert [p.name for p in (tmp_path / "b").rglob("candidate*")] == []


@pytest.mark.parametrize(("machine", "cpuinfo", "expected"), [
    ("x86_64", "flags\t\t: fpu sse avx2 avx512f avx512_vnni\n", False),  # VNNI: 8-bit
    ("x86_64", "flags\t\t: fpu sse avx2 avx_vnni\n", False),
    ("x86_64", "flags\t\t: fpu sse avx2 fma\n", True),  # u8 x s8 can saturate: 7-bit
    ("aarch64", None, False),
])
def test_reduce_range_follows_the_cpu(monkeypatch, tmp_path, machine, cpuinfo, expected):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: machine)
    real_read = ox.Path.read_text
    fake = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        fake.write_text(cpuinfo)
    monkeypatch.setattr(ox.Path, "read_text", lambda self, *a, **k: real_read(
        fake if str(self) == "/proc/cpuinfo" else self, *a, **k))
    assert ox.needs_reduce_range() is expected


# -- BGE-M3 heads on the tiny model --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_onnx(tiny_m3_dir, onnx_cache):
    return Embedder(str(tiny_m3_dir), runtime="onnx", device="cpu", cache_size=0,
                    max_batch_tokens=256)


def test_bge_m3_heads_match_torch(tiny_onnx, tiny_m3):
    assert tiny_onnx.spec.has_learned_sparse and tiny_onnx._runtime.exported
    record = tiny_onnx._runtime.record
    assert record["outputs"] == ["dense", "token_weights", "token_vectors"]
    texts = ["search the hybrid vector index", "cat", "", "dog " * 200,
             "the river city the river city", "unknown ßymbols ✓"] + mixed_texts(24, seed=3)
    got = tiny_onnx.embed(texts, dense=True, sparse=True, multivector=True)
    want = tiny_m3.embed(texts, dense=True, sparse=True, multivector=True)
    np.testing.assert_allclose(got.dense, want.dense, atol=1e-4)
    for i, text in enumerate(texts):
        g, w = got.sparse[i].to_dict(), want.sparse[i].to_dict()
        assert sorted(g) == sorted(w), text
        np.testing.assert_allclose([g[k] for k in sorted(g)], [w[k] for k in sorted(w)],
                                   atol=1e-4)
        assert got.multivector[i].shape == want.multivector[i].shape
        np.testing.assert_allclose(got.multivector[i], want.multivector[i], atol=1e-4)
    assert got.usage.tokens == want.usage.tokens


def test_forward_matches_torch_runtime_on_padded_batch(tiny_onnx, tiny_m3):
    ids = tiny_m3.tokenize(["search the hybrid vector index", "cat", "the river city"])
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), tiny_m3.tokenizer.pad_id, dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for r, row in enumerate(ids):
        input_ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    got = tiny_onnx._runtime.forward(input_ids, mask, dense=True, sparse=True, multivector=True)
    want = tiny_m3._runtime.forward(input_ids, mask, dense=True, sparse=True, multivector=True)
    for name in ("dense", "token_weights", "token_vectors"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == np.float32 and a.shape == b.shape, name
        if name == "token_weights":  # any value where padded (torch runs this batch unpadded)
            a, b = a * mask, b * mask
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=name)
    only = tiny_onnx._runtime.forward(input_ids, mask, dense=False, sparse=True,
                                      multivector=False)
    assert only.dense is None and only.token_vectors is None
    assert only.token_weights.shape == input_ids.shape


# -- cache key and interrupted exports ----------------------------------------------------

def test_hash_follows_content_not_path(tiny_m3_dir, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_m3_dir, tmp_path / "copy")
    original = ox.model_hash(resolve(str(tiny_m3_dir)))
    assert ox.model_hash(resolve(str(copy))) == original
    config = json.loads((copy / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert ox.model_hash(resolve(str(copy))) != original


def test_failed_export_leaves_no_entry(tiny_m3_dir, tmp_path, monkeypatch):
    def boom(module, path, sample):
        path.write_bytes(b"half an onnx file")
        raise KeyboardInterrupt  # as if the process were interrupted mid-export

    monkeypatch.setattr(ox, "_export", boom)
    with pytest.raises(KeyboardInterrupt):
        ox.OnnxRuntime(resolve(str(tiny_m3_dir)), cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    assert list(entry.iterdir()) == []  # neither fp32/ nor a temporary folder remains


# -- options and errors -------------------------------------------------------------------

@pytest.mark.parametrize("options, option", [
    ({"device": "mps"}, "device"), ({"device": "tpu"}, "device"), ({"dtype": "fp16"}, "dtype"),
    ({"dtype": "bf16"}, "dtype"), ({"quantize": "int4"}, "quantize"), ({"threads": 0}, "threads"),
    ({"dtype": "fp32", "quantize": "int8"}, "dtype"),
    ({"device": "cuda", "quantize": "int8"}, "device"), ({"spin": "sometimes"}, "spin"),
    ({"spin": True}, "spin"),
])
def test_invalid_options(tiny_m3_dir, tmp_path, options, option):
    with pytest.raises(InvalidOptionError) as info:
        load_runtime("onnx", resolve(str(tiny_m3_dir)), cache_dir=tmp_path, **options)
    assert info.value.option == option
    assert not list(tmp_path.iterdir())  # refused before any export


def test_cuda_needs_the_cuda_provider(tiny_m3_dir, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(InvalidOptionError, match="CUDAExecutionProvider"):
        load_runtime("onnx", resolve(str(tiny_m3_dir)), device="cuda", cache_dir=tmp_path)
    assert ox.pick_device("auto", None) == "cpu"


def test_allocation_failure_becomes_runtime_oom(tiny_onnx, monkeypatch):
    rt = tiny_onnx._runtime

    class Failing:
        def run(self, names, feeds):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status "
                               "code returned while running MatMul node. Failed to allocate "
                               "memory for requested buffer of size 123456789")

    monkeypatch.setattr(rt, "session", Failing())
    ids = np.array([[0, 5, 2]], dtype=np.int64)
    with pytest.raises(RuntimeOutOfMemory):
        rt.forward(ids, np.ones_like(ids), dense=True, sparse=False, multivector=False)


def _config(emb, key: str) -> str | None:
    try:
        return emb._runtime.session.get_session_options().get_session_config_entry(key)
    except Exception:  # noqa: BLE001 - unset: ONNX Runtime's default
        return None


def test_the_server_loads_onnx_with_lanes_and_no_spinning_between_calls(tiny_m3_dir,
                                                                         tiny_onnx):
    """In process, ONNX Runtime's threads spin, also between calls (fastest alone); the
    server's stop spinning when a call ends, or they would take a core from the next
    batches, and its batches run one per core on a one-thread session (no pool to spin),
    each equal to what the shared session gives."""
    import os

    from hybridembed.config import Settings
    from hybridembed.server.models import ModelConfig, ModelRegistry
    from tests.models import corpus

    settings = Settings(model=str(tiny_m3_dir), runtime="onnx", device="cpu")
    registry = ModelRegistry(settings, [ModelConfig("m", str(tiny_m3_dir))])
    served = registry._construct(registry.slots["m"])
    assert _config(served, "session.force_spinning_stop") == "1"
    assert _config(tiny_onnx, "session.force_spinning_stop") is None
    assert _config(tiny_onnx, "session.intra_op.allow_spinning") is None
    assert tiny_onnx.parallel_forwards == 1
    if (os.cpu_count() or 1) > 1:
        assert served.parallel_forwards == os.cpu_count()
        runtime = served._runtime
        assert runtime.lane_session is not None and runtime.session is not runtime.lane_session
    texts = corpus(12, seed=4)
    lane = served.run(served.request(texts, sparse=True, multivector=True), threads=1)
    whole = tiny_onnx.embed(texts, sparse=True, multivector=True)
    np.testing.assert_allclose(lane.dense, whole.dense, atol=1e-5)
    for a, b in zip(lane.multivector, whole.multivector, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_server_takes_onnx_requests_by_length(tiny_m3_dir, minilm):
    """Where a batch costs its padding (ONNX Runtime on a CPU), the embedder cuts texts by
    cost and the server's batcher takes waiting requests by that same cut; torch, which
    runs its batches packed, fills them in queue order."""
    import asyncio

    from hybridembed.config import Settings
    from hybridembed.server.models import ModelConfig, ModelRegistry

    settings = Settings(model=str(tiny_m3_dir), runtime="onnx", device="cpu")
    registry = ModelRegistry(settings, [ModelConfig("m", str(tiny_m3_dir))])
    slot = registry.slots["m"]
    served = registry._construct(slot)

    async def attached():
        await registry._attach(slot, served)
        try:
            return slot.batcher.by_length
        finally:
            await registry._stop_batchers(slot)

    assert served.cuts_by_cost and asyncio.run(attached()) == served.batch_cut
    # long and short texts in runs of one length, as a call of them is encoded
    assert served.batch_cut([40, 5, 40, 5, 40, 5]) == [[0, 2, 4], [1, 3, 5]]
    assert not minilm.cuts_by_cost
