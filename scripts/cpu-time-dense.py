"""Dense-only MiniLM CPU time per text (process CPU seconds, 1 compute thread): less
sensitive than wall time to other processes on a loaded machine."""
import json
import time

import hybridembed
from hybridembed import Embedder
from hybridembed.bench import corpus

texts = corpus.named("short", 400)
e = Embedder("minilm", device="cpu", threads=1, cache_size=0)
e.embed(texts[:50])
best = float("inf")
for _ in range(5):
    t0 = time.process_time()
    e.embed(texts)
    best = min(best, time.process_time() - t0)
print(json.dumps({"code": hybridembed.__file__, "cpu_ms_per_text": best / len(texts) * 1000}))
