"""SPLADE's extra cost per token on the CPU: process CPU time (1 compute thread) of the
real SPLADE-tiny for dense only and for dense + sparse, interleaved, best of 5 each."""
import json
import time

from hybridembed import Embedder
from hybridembed.bench import corpus
from tests.models import splade_checkpoint

texts = corpus.named("short", 300)
e = Embedder(str(splade_checkpoint()), device="cpu", threads=1, cache_size=0)
tokens = sum(e.embed(texts, dense=True).usage.tokens)
best = {"dense": float("inf"), "dense+sparse": float("inf")}
for _ in range(5):
    for name, sparse in (("dense", False), ("dense+sparse", True)):
        t0 = time.process_time()
        e.embed(texts, dense=True, sparse=sparse)
        best[name] = min(best[name], time.process_time() - t0)
us = {k: v / tokens * 1e6 for k, v in best.items()}
print(json.dumps({"tokens": tokens, "cpu_us_per_token": us,
                  "sparse_extra_us_per_token": us["dense+sparse"] - us["dense"]}))
