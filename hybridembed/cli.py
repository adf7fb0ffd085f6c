"""The ``hybridembed`` command line: parse flags into settings, call the library, print.
Errors from the library become one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import registry
from .config import ENV_DOC, Settings
from .errors import HybridEmbedError, InvalidOptionError


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="alias, folder or Hugging Face id (env HYBRIDEMBED_MODEL)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", help="auto, fp32, fp16, bf16")
    p.add_argument("--max-batch-tokens", type=int, help="padded tokens per forward pass")
    p.add_argument("--runtime", help="torch (default) or onnx (env HYBRIDEMBED_RUNTIME)")


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="edge (default), qdrant or pgvector (env HYBRIDEMBED_STORE)")
    p.add_argument("--url", help="Qdrant URL or PostgreSQL DSN (env HYBRIDEMBED_STORE_URL)")
    p.add_argument("--data-dir", help="data directory of the embedded store (default "
                   "./.hybridembed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridembed", description="Dense, sparse and ColBERT embeddings from one pass.",
        epilog="Environment: " + "; ".join(f"{k}: {v}" for k, v in ENV_DOC.items()))
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed texts and show what came out")
    embed.add_argument("texts", nargs="+", help="texts to embed ('-' reads lines from stdin)")
    embed.add_argument("--sparse", action="store_true", help="also the sparse lexical vector")
    embed.add_argument("--multivector", action="store_true", help="also per-token vectors")
    embed.add_argument("--no-dense", action="store_true", help="skip the dense vector")
    embed.add_argument("--query", action="store_true", help="embed as queries, not documents")
    embed.add_argument("--dimensions", type=int, help="truncate dense vectors (Matryoshka)")
    embed.add_argument("--no-truncate", action="store_true",
                       help="fail on texts over the model's limit instead of cutting them")
    embed.add_argument("--top", type=int, default=8, help="sparse tokens to show per text")
    embed.add_argument("--json", action="store_true", help="print JSON (full vectors)")
    embed.add_argument("--encoding", default="utf-8",
                       help="encoding of texts read from stdin (default utf-8)")
    _add_model_flags(embed)

    models = sub.add_parser("models", help="list the models resolvable on this machine")
    models.add_argument("--json", action="store_true")

    pull = sub.add_parser("pull", help="download a model into the Hugging Face cache")
    pull.add_argument("model")

    serve = sub.add_parser("serve", help="run the HTTP server (native, OpenAI, Ollama, TEI)")
    _add_model_flags(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1: loopback only)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route "
                       "but /health (env HYBRIDEMBED_API_KEY)")
    serve.add_argument("--max-queued-requests", type=int,
                       help="texts allowed to wait; a list of k inputs counts k")
    serve.add_argument("--max-queued-tokens", type=int, help="tokens allowed to wait")
    serve.add_argument("--max-batch-requests", type=int, help="requests merged per batch")
    serve.add_argument("--max-inputs", type=int, help="inputs per request")
    serve.add_argument("--max-body-bytes", type=int, help="request body size limit")
    serve.add_argument("--request-timeout", type=float, help="seconds before a 503")
    serve.add_argument("--served-model-name", help="another model name clients may send")
    serve.add_argument("--token-ids", choices=["cl100k", "model", "refuse"],
                       help="how OpenAI token-id inputs are read: cl100k (default; what "
                            "OpenAI's clients and langchain-openai send), model (the served "
                            "model's own ids, as sent) or refuse")
    serve.add_argument("--cors-allow-origin",
                       help="origins browsers may call from (comma-separated, or *); off "
                            "by default")
    serve.add_argument("--log-level", default="info")

    index = sub.add_parser("index", help="chunk, embed and store files (.txt, .md, .jsonl)")
    index.add_argument("paths", nargs="+", help="files or folders")
    index.add_argument("--collection", required=True)
    _add_store_flags(index)
    index.add_argument("--chunk-tokens", type=int, default=256, help="tokens per chunk")
    index.add_argument("--overlap", type=int, default=32, help="tokens shared by neighbours")
    index.add_argument("--no-multivector", action="store_true",
                       help="store no per-token vectors (smaller; no multivector rerank)")
    index.add_argument("--batch", type=int, default=256, help="documents per write")
    _add_model_flags(index)

    search = sub.add_parser("search", help="search a collection")
    search.add_argument("query")
    search.add_argument("--collection", required=True)
    _add_store_flags(search)
    search.add_argument("--mode", default="hybrid", help="dense, sparse or hybrid")
    search.add_argument("--fusion", default="rrf", help="rrf, dbsf or weighted")
    search.add_argument("--weights", type=float, nargs=2, default=(1.0, 1.0),
                        metavar=("DENSE", "SPARSE"), help="weights for --fusion weighted")
    search.add_argument("--rerank", help="multivector or cross-encoder")
    search.add_argument("--reranker-model", default="bge-reranker-base")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                        help="payload filter (repeat for AND; VALUE may be a,b,c for any-of)")
    search.add_argument("--json", action="store_true")
    _add_model_flags(search)

    cols = sub.add_parser("collections", help="list collections with their size and model")
    _add_store_flags(cols)
    cols.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="speed and memory of several engines in one run "
                           "(--suite stores: store latency; --suite migrate: backfill speed)")
    bench.add_argument("--suite", choices=["engines", "stores", "migrate"], default="engines",
                       help="engines (default), stores (100k synthetic documents in Qdrant "
                       "Edge and pgvector) or migrate (pgvector backfill vs pure embedding)")
    bench.add_argument("--docs", type=int, default=100_000, help="documents (--suite stores)")
    bench.add_argument("--rows", type=int, default=20_000, help="rows (--suite migrate)")
    bench.add_argument("--ray-workers", type=int, default=2,
                       help="Ray actors for --suite migrate (0: skip the Ray run)")
    bench.add_argument("--model", default="minilm")
    bench.add_argument("--corpus", default="short",
                       help="short (~35 tokens), long (~400), mixed, or a file of lines")
    bench.add_argument("--texts", type=int, default=300)
    bench.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048, 8192],
                       help="batch budgets (padded tokens) to sweep")
    bench.add_argument("--outputs", default="dense",
                       help="what our engines compute in one pass: comma-separated dense, "
                       "sparse, multivector (sentence-transformers: dense only)")
    bench.add_argument("--repeats", type=int, default=3,
                       help="passes per setting; the best is reported, the median beside it")
    bench.add_argument("--engines", nargs="+", default=None,
                       help="sentence-transformers torch onnx onnx-int8 server (default: all)")
    bench.add_argument("--concurrency", type=int, default=64)
    bench.add_argument("--out", default="bench-results", help="folder for JSON and chart")
    bench.add_argument("--json", action="store_true")

    ev = sub.add_parser("evaluate", help="nDCG@10, MRR@10 and Recall@100 of each search mode "
                        "(or, with --compare, the parity of two embedders)")
    ev.add_argument("--dataset", default="generated",
                    help="'generated' (the built-in labelled corpus), 'stdlib' (docstring "
                    "summaries -> explanations of Python's standard library: larger, natural) "
                    "or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
    ev.add_argument("--split", default="test", help="qrels file of a BEIR folder")
    ev.add_argument("--modes", default="dense,sparse,hybrid,hybrid+rerank",
                    help="comma-separated: dense, sparse, hybrid, each optionally +rerank "
                    "(multivector MaxSim) or +cross-encoder")
    ev.add_argument("--fusion", default="rrf", help="rrf, dbsf or weighted")
    ev.add_argument("-k", type=int, default=10, help="cut-off of nDCG and MRR")
    ev.add_argument("--recall-k", type=int, default=100, help="hits retrieved per query")
    ev.add_argument("--data-dir", help="where the temporary store goes (default: system temp)")
    ev.add_argument("--compare", nargs=2, metavar=("A", "B"),
                    help="instead, compare two embedders' dense vectors on the same texts; "
                    "each is local|torch|onnx|onnx-int8[:MODEL], or remote|ollama|openai"
                    "[:URL]")
    ev.add_argument("--json", action="store_true")
    _add_model_flags(ev)

    mig = sub.add_parser("migrate", help="re-embed a PostgreSQL table into new vector columns")
    mig.add_argument("step", choices=["plan", "add", "backfill", "swap", "rollback", "drop-old",
                                      "status"])
    mig.add_argument("--dsn", required=True, help="postgresql://...")
    mig.add_argument("--table", required=True)
    mig.add_argument("--id-col", default="id")
    mig.add_argument("--text-col", default="text")
    mig.add_argument("--column", default="embedding", help="the live vector column")
    mig.add_argument("--schema", help="the table's schema (default: search_path)")
    mig.add_argument("--sparse", action="store_true", help="also a sparse column")
    mig.add_argument("--batch", type=int, default=256, help="rows per transaction")
    mig.add_argument("--too-long", choices=["truncate", "skip"], default="truncate",
                     help="texts over the model's limit: cut them, or skip and report them")
    mig.add_argument("--force", action="store_true", help="swap with rows still missing")
    mig.add_argument("--yes", action="store_true", help="confirm drop-old")
    mig.add_argument("--ray", action="store_true", help="backfill as a Ray Data pipeline")
    mig.add_argument("--address", help="Ray cluster address (default: a local instance)")
    mig.add_argument("--workers", type=int, default=2, help="Ray actors (one Embedder each)")
    mig.add_argument("--gpus-per-worker", type=float, default=0)
    mig.add_argument("--json", action="store_true")
    _add_model_flags(mig)

    bg = sub.add_parser("reembed", help="blue-green: rebuild a Qdrant collection with another "
                        "model, verify, switch an alias to it (the old one is kept)")
    bg.add_argument("--source", required=True, help="collection (or alias) to copy from")
    bg.add_argument("--alias", required=True, help="the alias applications use")
    bg.add_argument("--target", help="new collection name (default ALIAS_vN)")
    _add_store_flags(bg)
    _add_model_flags(bg)

    al = sub.add_parser("alias", help="point an alias at a collection (switch back, or first "
                        "set-up of a blue-green pair)")
    al.add_argument("alias")
    al.add_argument("collection")
    _add_store_flags(al)

    load = sub.add_parser("loadtest", help="server vs in-process throughput under 64 single-"
                          "text clients and 8 list clients, latency, batch fill and the "
                          "server's per-stage times, in rounds")
    load.add_argument("--model", default="minilm")
    load.add_argument("--runtime", help="torch (default) or onnx, for server and in-process")
    load.add_argument("--texts", type=int, default=600)
    load.add_argument("--concurrency", type=int, default=64,
                      help="clients sending one text per request")
    load.add_argument("--list-clients", type=int, default=8,
                      help="clients sending --list-size texts per request")
    load.add_argument("--list-size", type=int, default=32)
    load.add_argument("--single", type=int, default=100,
                      help="requests of the one-client latency load")
    load.add_argument("--rounds", type=int, default=3,
                      help="server then in-process, this many times (report the spread)")
    load.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"embed": cmd_embed, "models": cmd_models, "pull": cmd_pull,
                    "serve": cmd_serve, "loadtest": cmd_loadtest, "index": cmd_index,
                    "search": cmd_search, "collections": cmd_collections, "bench": cmd_bench,
                    "migrate": cmd_migrate, "evaluate": cmd_evaluate, "reembed": cmd_reembed,
                    "alias": cmd_alias}
        return commands[args.command](args)
    except HybridEmbedError as exc:
        print(f"hybridembed: error: {exc}", file=sys.stderr)
        return 2


def _settings(args, **more) -> Settings:
    return Settings.from_env(model=args.model, device=args.device, dtype=args.dtype,
                             max_batch_tokens=args.max_batch_tokens,
                             runtime=getattr(args, "runtime", None), **more)


def cmd_serve(args) -> int:
    import logging

    import uvicorn

    from .server import create_app

    names = ("host", "port", "api_key", "max_queued_requests", "max_queued_tokens",
             "max_batch_requests", "max_inputs", "max_body_bytes", "request_timeout",
             "served_model_name", "token_ids", "cors_allow_origin")
    settings = _settings(args, **{n: getattr(args, n) for n in names})
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    print(f"hybridembed serving {settings.model} on http://{settings.host}:{settings.port} "
          f"(docs at /docs)", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=args.log_level, access_log=False)
    return 0


def cmd_embed(args) -> int:
    from .service import Embedder
    from .textcheck import check_texts, decode

    if args.texts == ["-"]:
        data = decode(sys.stdin.buffer.read(), "<stdin>", args.encoding).replace("\r\n", "\n")
        texts = data.removesuffix("\n").split("\n") if data else []
    else:
        texts = args.texts
    check_texts(texts)  # before the model loads: a bad text costs nothing
    embedder = Embedder(**_settings(args).embedder_options())
    result = embedder.embed(texts, dense=not args.no_dense, sparse=args.sparse,
                            multivector=args.multivector,
                            kind="query" if args.query else "document",
                            truncate=not args.no_truncate, dimensions=args.dimensions)
    if args.json:
        rows = []
        for text, item in zip(texts, result, strict=True):
            row = {"text": text, "tokens": item.tokens}
            if item.dense is not None:
                row["dense"] = item.dense.tolist()
            if item.sparse is not None:
                row["sparse"] = item.sparse.to_json()
                row["sparse_tokens"] = embedder.sparse_tokens(item.sparse, text)
            if item.multivector is not None:
                row["multivector"] = item.multivector.tolist()
            rows.append(row)
        json.dump({"model": result.model, "data": rows}, sys.stdout)
        print()
        return 0
    spec = embedder.spec
    print(f"model {spec.name} ({spec.model_type}, {embedder.device}/{embedder.dtype}), "
          f"dense {result.dense.shape[1] if result.dense is not None else '-'}-d, "
          f"sparse {spec.sparse_kind}, multivector {spec.multivector_dim}-d")
    for i, (text, item) in enumerate(zip(texts, result, strict=True)):
        print(f"\n[{i}] {text[:70]!r} ({item.tokens} tokens)")
        if item.dense is not None:
            head = ", ".join(f"{v:+.4f}" for v in item.dense[:6])
            print(f"  dense       {len(item.dense)}-d  [{head}, ...]")
        if item.sparse is not None:
            top = list(embedder.sparse_tokens(item.sparse, text).items())[:args.top]
            shown = "  ".join(f"{tok}:{w:.3f}" for tok, w in top)
            print(f"  sparse      {len(item.sparse)} terms  {shown}")
        if item.multivector is not None:
            print(f"  multivector {item.multivector.shape[0]} x {item.multivector.shape[1]}")
    return 0


def _store(args, embedder=None):
    from .stores import open_store

    settings = Settings.from_env(store=args.store, store_url=args.url, data_dir=args.data_dir)
    if embedder is None:
        from .service import Embedder

        embedder = Embedder(**_settings(args).embedder_options())
    options = settings.store_options()
    options["reranker_model"] = getattr(args, "reranker_model", "bge-reranker-base")
    return open_store(embedder, **options)


def cmd_index(args) -> int:
    import time

    from tqdm import tqdm

    from .ingest import read_documents

    store = _store(args)
    store.batch_size = args.batch
    store.ensure_collection(args.collection, multivector=not args.no_multivector)
    docs = list(read_documents(args.paths, store.embedder.tokenizer, args.chunk_tokens,
                               args.overlap))
    began = time.perf_counter()
    with tqdm(total=len(docs), unit="doc", desc=f"indexing into {args.collection}",
              disable=None) as bar:
        store.upsert(args.collection, docs, progress=bar.update)
    store.optimize(args.collection)  # new segments (Edge), indexes a killed run left out (pg)
    took = time.perf_counter() - began
    print(f"{len(docs)} chunks from {len(args.paths)} path(s) in {took:.1f} s "
          f"({len(docs) / took if took else 0:.1f} docs/s); collection {args.collection!r} "
          f"({store.kind}) holds {store.count(args.collection)}")
    store.close()
    return 0


def _parse_filter(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise InvalidOptionError(f"--filter {item!r} is not FIELD=VALUE", "filter")
        key, value = item.split("=", 1)
        values = [int(v) if v.lstrip("-").isdigit() else v for v in value.split(",")]
        out[key] = values if len(values) > 1 else values[0]
    return out


def cmd_search(args) -> int:
    store = _store(args)
    hits = store.search(args.collection, args.query, mode=args.mode, fusion=args.fusion,
                        k=args.k, filter=_parse_filter(args.filter), rerank=args.rerank,
                        weights=tuple(args.weights))
    store.close()
    if args.json:
        json.dump([h.to_dict() for h in hits], sys.stdout, indent=2)
        print()
        return 0
    if not hits:
        print("no hits")
        return 0
    print(f"{'rank':>4} {'score':>9}  {'why (retriever:rank)':<26} {'id':<24} text")
    for rank, hit in enumerate(hits, 1):
        why = " ".join(f"{r[0]}:{v['rank']}" for r, v in hit.retrievers.items())
        snippet = " ".join(hit.text.split())[:70]
        print(f"{rank:>4} {hit.score:>9.4f}  {why:<26} {hit.id[:24]:<24} {snippet}")
    return 0


def cmd_collections(args) -> int:
    settings = Settings.from_env(store=args.store, store_url=args.url, data_dir=args.data_dir)
    backend = _backend(args)
    rows = []
    for name in backend.list():
        schema = backend.meta(name)["schema"]
        rows.append({"name": name, "count": backend.count(name), **schema})
    backend.close()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for row in rows:
        print(f"{row['name']:<24} {row['count']:>8} docs  {row['model']} ({row['dense_dim']}-d, "
              f"sparse {row['sparse_kind']}, multivector {row['multivector_dim'] or 'no'})")
    if not rows:
        print(f"no collections in the {settings.store} store")
    return 0


def _outputs(text: str) -> tuple[str, ...]:
    outputs = tuple(o.strip() for o in text.split(",") if o.strip())
    bad = [o for o in outputs if o not in ("dense", "sparse", "multivector")]
    if bad or not outputs:
        raise InvalidOptionError(f"--outputs {text!r}: give a comma-separated subset of dense, "
                                 "sparse, multivector", "outputs")
    return outputs


def cmd_bench(args) -> int:
    from tqdm import tqdm

    from .bench import throughput

    if args.suite == "stores":
        from .bench import stores

        report = stores.run(n_docs=args.docs, progress=lambda m: print(m, file=sys.stderr))
        print(json.dumps(report, indent=2) if args.json else stores.format_report(report))
        return 0
    if args.suite == "migrate":
        from .bench import migrate

        report = migrate.run(args.model, rows=args.rows, ray_workers=args.ray_workers,
                             progress=lambda m: print(m, file=sys.stderr))
        print(json.dumps(report, indent=2) if args.json else migrate.format_report(report))
        return 0

    outputs = _outputs(args.outputs)
    engines = tuple(args.engines or throughput.ENGINES)
    unknown = [e for e in engines if e not in throughput.ENGINES]
    if unknown:
        raise InvalidOptionError(f"unknown engine(s) {unknown}; valid: "
                                 + ", ".join(throughput.ENGINES), "engines")
    with tqdm(total=len(engines), unit="engine", desc="bench") as bar:
        def started(engine: str) -> None:  # the bar counts engines begun, names the current
            bar.set_postfix_str(engine)
            bar.update(1)

        report = throughput.run(args.model, args.corpus, args.texts, tuple(args.budgets),
                                engines, concurrency=args.concurrency, out_dir=args.out,
                                progress=started, repeats=args.repeats, outputs=outputs)
    print(json.dumps(report, indent=2) if args.json else throughput.format_report(report))
    return 0


def _backend(args):
    from .stores import open_backend

    settings = Settings.from_env(store=args.store, store_url=args.url, data_dir=args.data_dir)
    return open_backend(**settings.store_options())


def cmd_reembed(args) -> int:
    from .migrate.qdrant import reembed
    from .service import Embedder

    backend = _backend(args)
    embedder = Embedder(**_settings(args).embedder_options())
    result = reembed(backend, embedder, args.source, args.alias, args.target,
                     progress=lambda n: print(f"copied {n}", file=sys.stderr, flush=True))
    backend.close()
    print(json.dumps(result, indent=2))
    return 0


def cmd_alias(args) -> int:
    backend = _backend(args)
    if not hasattr(backend, "set_alias"):
        raise InvalidOptionError(f"the {backend.kind} store has no aliases", "store")
    backend.set_alias(args.alias, args.collection)
    backend.close()
    print(f"{args.alias} -> {args.collection}")
    return 0


def cmd_evaluate(args) -> int:
    from . import evaluate as ev

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    local = {"device": args.device, "dtype": args.dtype,
             "max_batch_tokens": args.max_batch_tokens, "runtime": args.runtime}
    if args.compare:
        a, b = (ev.open_embedder(spec, model=args.model, **local) for spec in args.compare)
        report = ev.compare(a, b)
    else:
        embedder = ev.open_embedder("local", model=args.model, **local)
        report = ev.evaluate(embedder, args.dataset, modes=args.modes.split(","), k=args.k,
                             recall_k=args.recall_k, fusion=args.fusion, split=args.split,
                             data_dir=args.data_dir, progress=progress)
    print(json.dumps(report, indent=2) if args.json else ev.format_report(report))
    return 0


def cmd_migrate(args) -> int:
    from .migrate.pgvector import PgMigration, Target

    target = Target(args.table, args.id_col, args.text_col, args.column, args.sparse, args.schema)
    if args.step == "backfill" and args.ray:
        from .migrate.ray_backfill import backfill_with_ray

        settings = _settings(args)
        result = backfill_with_ray(args.dsn, target, settings.model, address=args.address,
                                   workers=args.workers, batch_size=args.batch,
                                   too_long=args.too_long,
                                   gpus_per_worker=args.gpus_per_worker,
                                   embedder_options={"device": settings.device,
                                                     "dtype": settings.dtype})
        print(json.dumps(result, indent=None if args.json else 2))
        return 0
    needs_model = args.step in ("plan", "add", "backfill")
    embedder = None
    if needs_model:
        from .service import Embedder

        embedder = Embedder(**_settings(args).embedder_options())
    m = PgMigration(args.dsn, target, embedder, batch_size=args.batch, too_long=args.too_long)
    if args.step == "backfill":
        from tqdm import tqdm

        total = m.status().get("remaining")
        with tqdm(total=total, unit="row", desc=f"backfill {args.table}") as bar:
            stats = m.backfill(progress=bar.update)
        result = {"embedded": stats.embedded, "skipped": stats.skipped,
                  "skipped_ids": stats.skipped_ids[:100], "batches": stats.batches,
                  "retries": stats.retries, "seconds": round(stats.seconds, 2),
                  "rows_per_s": round((stats.embedded + stats.skipped) / stats.seconds, 1)
                  if stats.seconds else 0}
    else:
        result = {"plan": m.plan, "add": lambda: {"added": m.add()}, "status": m.status,
                  "swap": lambda: m.swap(force=args.force), "rollback": m.rollback,
                  "drop-old": lambda: {"dropped": m.drop_old(yes=args.yes)}}[args.step]()
    print(json.dumps(result, indent=None if args.json else 2, default=str))
    return 0


def cmd_loadtest(args) -> int:
    from .bench import loadtest

    report = loadtest.run(args.model, args.texts, args.concurrency, args.single, args.rounds,
                          args.runtime, args.list_clients, args.list_size,
                          progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(report, indent=2) if args.json else loadtest.format_report(report))
    return 0


def cmd_models(args) -> int:
    rows = registry.available()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'name':<22} {'dim':>5} {'max_len':>7} {'pooling':<9} {'sparse':<8} {'colbert':<7} "
          "where / why not")
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<22} {'-':>5} {'-':>7} {'-':<9} {'-':<8} {'-':<7} "
                  f"not here: {row['error'][:90]}")
            continue
        print(f"{row['name']:<22} {row['dim']:>5} {row['max_length']:>7} {row['pooling']:<9} "
              f"{row['sparse']:<8} {'yes' if row['colbert_head'] else 'no':<7} {row['path']}")
    return 0


def cmd_pull(args) -> int:
    path = registry.pull(args.model)
    print(f"{args.model}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
