"""How fast per-token vectors reach host memory on this machine, by route (issue 6's GPU
path). One batch of BGE-M3 ColBERT output at ~50 tokens: 2520 texts x 51 tokens x 1024.

    python scripts/gpu-transfer-probe.py
"""

import time

import numpy as np
import torch

SHAPE = (2520, 51, 1024)


def best(fn, repeats=5):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return min(times)


def pinned_half():
    host = torch.empty(SHAPE, dtype=torch.float16, pin_memory=True)
    host.copy_(half)
    return host.numpy()


vectors = torch.randn(SHAPE, device="cuda")
half = vectors.half()
fp32_bytes = vectors.numel() * 4
routes = {
    "float32 .cpu() (before)": lambda: vectors.cpu().numpy(),
    "float16 .cpu()": lambda: half.cpu().numpy(),
    "float16 via pinned": pinned_half,
    "float16 via pinned, widened to float32": lambda: pinned_half().astype(np.float32),
    "host only: fresh float32 array written": lambda: np.ones(SHAPE, np.float32),
    "host only: float16 -> float32 widening": None,
}
src16 = pinned_half()
routes["host only: float16 -> float32 widening"] = lambda: src16.astype(np.float32)
print(f"{'route':<42} {'ms':>8} {'GB/s of float32 result':>24}")
for name, fn in routes.items():
    seconds = best(fn)
    print(f"{name:<42} {seconds * 1e3:>8.1f} {fp32_bytes / seconds / 1e9:>24.1f}")
