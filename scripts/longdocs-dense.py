"""Dense-only nDCG@10 of naive, overlap and late chunking on stdlib-longdocs, scored in
NumPy (exact cosine search over all chunks), with each method's encode time."""
import json
import math
import time

import numpy as np

from hybridembed import Embedder
from hybridembed.engine.windows import windows
from hybridembed.evaluate.longdocs import stdlib_long_documents

emb = Embedder("minilm", device="cpu", cache_size=0)
docs, queries = stdlib_long_documents()
size, ov = 128, 32
q = emb.embed([x["text"] for x in queries], kind="query").dense
out = {}
for method in ("naive", "late", "overlap"):
    vecs, spans_of = [], []
    enc = 0.0
    for d in docs:
        ids, off = emb.tokenizer.content(d["text"])
        spans = windows(len(ids), size, ov if method == "overlap" else 0)
        texts = [d["text"][off[a, 0]:off[b - 1, 1]] for a, b in spans]
        t = time.perf_counter()
        v = (emb.embed_chunks(d["text"], every=size).result.dense if method == "late"
             else emb.embed(texts).dense)
        enc += time.perf_counter() - t
        vecs.append(v)
        spans_of += [(d["id"], int(off[a, 0]), int(off[b - 1, 1])) for a, b in spans]
    m = np.concatenate(vecs)
    scores = q @ m.T
    ndcg = []
    for i, x in enumerate(queries):
        rel = {j for j, (doc, a, b) in enumerate(spans_of)
               if doc == x["doc"] and a < x["end"] and x["start"] < b}
        top = np.argsort(-scores[i])[:10]
        dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(top) if j in rel)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), 10)))
        ndcg.append(dcg / idcg)
    out[method] = {"ndcg@10": float(np.mean(ndcg)), "encode_s": enc, "chunks": len(spans_of)}
    print(method, out[method], flush=True)
print(json.dumps(out, indent=1))
