"""Where the time of one large embed call goes, stage by stage (torch runtime):

- tokenise: the fast tokenizer over every text;
- pad: length-sorted packing and padding into batches (NumPy);
- device only: the forward pass over batches already on the device, outputs left there
  (the ceiling for this model and batch budget in this implementation);
- forward: ``runtime.forward`` as the encoder calls it (host-to-device copy, forward pass,
  outputs back to NumPy);
- finish: turning padded outputs into per-text rows (slices, learned sparse weights);
- embed: ``Embedder.embed`` end to end, with the pipeline (tokenise ahead, finish on a
  helper thread) on and off.

On a CPU the stages add up; on a GPU the pipeline hides tokenising and finishing behind
the forward pass, so the whole call should approach "forward". The gap between
"forward" and "device only" is the transfers.

    python -m hybridembed.bench.stages --model /tmp/bge-m3-shaped --corpus short \
        --texts 20000 --budget 131072 --outputs dense,sparse,multivector
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

from . import corpus


def _best(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - began)
    return best


def measure(model: str, texts: Sequence[str], budget: int | None = None,
            outputs: Sequence[str] = ("dense",), device: str = "auto",
            dtype: str | None = None, repeats: int = 3) -> dict:
    """Seconds of each stage (best of ``repeats``) for embedding ``texts`` once."""
    import torch

    from ..engine.encoder import Outputs, RawRow, fill_rows, pad_batch
    from ..engine.packing import pack_by_token_budget
    from ..service import Embedder

    emb = Embedder(model, device=device, dtype=dtype, cache_size=0, max_batch_tokens=budget)
    if emb.runtime_name != "torch":
        raise ValueError("stages measures the torch runtime")
    runtime, tok = emb._runtime, emb.tokenizer
    want = Outputs(dense="dense" in outputs,
                   sparse="sparse" in outputs and emb.spec.has_learned_sparse,
                   multivector="multivector" in outputs)
    flags = {o: o in outputs for o in ("dense", "sparse", "multivector")}
    cuda = runtime.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    texts = list(texts)
    stages: dict[str, float] = {}

    stages["tokenise"] = _best(lambda: tok.encode(texts), repeats, sync)
    ids = tok.encode_truncated(texts)
    batches = pack_by_token_budget([len(x) for x in ids], emb.max_batch_tokens)
    padded: list = []
    stages["pad"] = _best(lambda: padded.__setitem__(
        slice(None), [pad_batch(ids, b, tok.pad_id) for b in batches]), repeats, sync)
    on_device = [(torch.from_numpy(i).to(runtime.device), torch.from_numpy(m).to(runtime.device))
                 for i, m in padded]

    def device_only() -> None:
        with torch.inference_mode():
            for i, m in on_device:
                runtime.module(i, m, want.dense, want.sparse, want.multivector)

    device_only()  # warm-up: kernels chosen for these shapes
    stages["device only"] = _best(device_only, repeats, sync)
    on_device.clear()  # free the device copies before the timed transfers
    outs: list = []
    stages["forward"] = _best(lambda: outs.__setitem__(slice(None), [
        runtime.forward(i, m, dense=want.dense, sparse=want.sparse,
                        multivector=want.multivector) for i, m in padded]), repeats, sync)
    rows = [RawRow() for _ in ids]

    def finish() -> None:
        for b, (i, _), out in zip(batches, padded, outs, strict=True):
            fill_rows(rows, b, [len(ids[j]) for j in b], i, out, tok.special_ids)

    stages["finish"] = _best(finish, repeats, sync)
    outs.clear()
    padded.clear()
    for pipeline in (True, False):
        emb.pipeline = emb._encoder.overlap = pipeline
        name = "embed, pipeline " + ("on" if pipeline else "off")
        stages[name] = _best(lambda: emb.embed(texts, **flags), repeats, sync)
    tokens = sum(len(x) for x in ids)
    padded_tokens = sum(len(b) * max(len(ids[j]) for j in b) for b in batches)
    report = {"model": model, "device": runtime.device, "dtype": runtime.dtype,
              "texts": len(texts), "tokens": tokens, "mean_tokens": tokens / len(texts),
              "budget": emb.max_batch_tokens, "batches": len(batches),
              "fill": tokens / padded_tokens, "outputs": list(outputs),
              "stages": {k: {"seconds": v, "texts_per_s": len(texts) / v}
                         for k, v in stages.items()}}
    if cuda:
        report["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        report["gpu"] = torch.cuda.get_device_name()
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['model']} on {report.get('gpu', report['device'])} ({report['dtype']}): "
             f"{report['texts']} texts, ~{report['mean_tokens']:.0f} tokens, budget "
             f"{report['budget']}, {report['batches']} batches, fill {report['fill']:.0%}, "
             f"outputs {'+'.join(report['outputs'])}",
             f"{'stage':<24} {'seconds':>8} {'texts/s':>9}"]
    lines += [f"{name:<24} {s['seconds']:>8.3f} {s['texts_per_s']:>9.0f}"
              for name, s in report["stages"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridembed.bench.stages",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--corpus", default="short", help="short, long, mixed or a file of lines")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=None,
                        help="padded tokens per batch (default: the device's)")
    parser.add_argument("--outputs", default="dense")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = measure(args.model, corpus.load(args.corpus, args.texts), args.budget,
                     tuple(args.outputs.split(",")), args.device, args.dtype, args.repeats)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
