"""The ``hybridembed`` command line: parse flags into settings, call the library, print.
Errors from the library become one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import registry
from .config import ENV_DOC, Settings
from .errors import HybridEmbedError, InvalidOptionError


def _add_model_flags(p: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        p.add_argument("--model", action="append",
                       help="SOURCE or NAME=SOURCE (alias, folder or Hugging Face id); repeat to "
                       "serve several models, the first is the default (env HYBRIDEMBED_MODEL, "
                       "HYBRIDEMBED_MODELS)")
    else:
        p.add_argument("--model", help="alias, folder or Hugging Face id (env HYBRIDEMBED_MODEL)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", help="auto, fp32, fp16, bf16")
    p.add_argument("--max-batch-tokens", type=int, help="padded tokens per forward pass")
    p.add_argument("--runtime", help="torch (default) or onnx (env HYBRIDEMBED_RUNTIME)")


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="edge (default), qdrant or pgvector (env HYBRIDEMBED_STORE)")
    p.add_argument("--url", help="Qdrant URL or PostgreSQL DSN (env HYBRIDEMBED_STORE_URL)")
    p.add_argument("--data-dir", help="data directory of the embedded store (env "
                   "HYBRIDEMBED_DATA_DIR; default $XDG_DATA_HOME/hybridembed, i.e. "
                   "~/.local/share/hybridembed)")


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def _size(text: str) -> int:
    """A memory size: bytes, or a number with a unit (6GiB, 512MB, 2g)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use bytes or a number with "
                                         "a unit such as 6GiB, 512MB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


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
    embed.add_argument("--max-active-dims", type=int, metavar="K",
                       help="keep only the K heaviest entries of each sparse vector")
    embed.add_argument("--no-truncate", action="store_true",
                       help="fail on texts over the model's limit (same as --overflow error)")
    embed.add_argument("--overflow", help="texts over the model's limit: error, truncate "
                       "(default) or chunk (windows of the limit, pooled into one result)")
    embed.add_argument("--truncation-side", default="right",
                       help="right (keep the start, default) or left (keep the end)")
    embed.add_argument("--chunk-pooling", default="mean", help="mean (default) or max")
    embed.add_argument("--chunk-overlap", type=int, default=0,
                       help="tokens shared by neighbouring windows of --overflow chunk")
    embed.add_argument("--top", type=int, default=8, help="sparse tokens to show per text")
    embed.add_argument("--json", action="store_true", help="print JSON (full vectors)")
    embed.add_argument("--encoding", default="utf-8",
                       help="encoding of texts read from stdin (default utf-8)")
    _add_model_flags(embed)

    models = sub.add_parser("models", help="list the models resolvable on this machine, or "
                            "show how a model computes each output")
    models.add_argument("model", nargs="*", help="alias, folder or Hugging Face id to describe "
                        "(its family and how each output is computed)")
    models.add_argument("--families", action="store_true",
                        help="list the model families hybridembed recognises")
    models.add_argument("--json", action="store_true")

    pull = sub.add_parser("pull", help="download a model into the Hugging Face cache")
    pull.add_argument("model")

    serve = sub.add_parser("serve", help="run the HTTP server (native, OpenAI, Ollama, TEI, "
                           "Cohere, vLLM)")
    _add_model_flags(serve, many=True)
    serve.add_argument("--models-file", help="JSON or TOML file listing more models: "
                       "{\"models\": [{\"name\", \"source\", \"lazy\", \"fallback\"}]}")
    serve.add_argument("--lazy", action="store_true", default=None,
                       help="load the models after the first on first use, not at start")
    serve.add_argument("--max-memory", type=_size,
                       help="memory for model weights, e.g. 6GiB; past it the least recently "
                       "used idle model is unloaded")
    serve.add_argument("--keep-alive", help="how long a model stays loaded after a request "
                       "(5m, 30s, -1 = forever; default forever); Ollama's keep_alive overrides")
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
    index.add_argument("--multivector", action="store_true",
                       help="also store per-token vectors for --rerank multivector (a new "
                       "collection only; costs 4 x dim bytes per token: 1.5 KB with MiniLM)")
    index.add_argument("--no-multivector", action="store_true", help=argparse.SUPPRESS)
    index.add_argument("--encoding", default="utf-8", help="text encoding of the files")
    index.add_argument("--batch", type=int, default=256,
                       help="documents per write; each write is all or nothing")
    index.add_argument("--late-chunking", action="store_true",
                       help="embed each file whole (in windows of the model's limit) and pool "
                       "each chunk from token states that saw its context")
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

    cols = sub.add_parser("collections", help="list collections with their size and model, "
                          "or drop one")
    cols.add_argument("action", nargs="?", choices=["list", "drop"], default="list")
    cols.add_argument("name", nargs="?", help="the collection to drop")
    _add_store_flags(cols)
    cols.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="speed and memory of several engines in one run "
                           "(--suite stores: store latency; --suite migrate: backfill speed)")
    bench.add_argument("--suite", choices=["engines", "stores", "migrate", "rerank",
                                           "rerank-mixed"],
                       default="engines",
                       help="engines (default), stores (100k synthetic documents in Qdrant "
                       "Edge and pgvector), migrate (pgvector backfill vs pure embedding) or "
                       "rerank (pairs/s: sentence-transformers vs in process vs HTTP), "
                       "rerank-mixed (embed latency alone and beside rerank clients)")
    bench.add_argument("--seconds", type=float, default=30.0,
                       help="seconds per phase (--suite rerank-mixed)")
    bench.add_argument("--docs", type=int, default=100_000, help="documents (--suite stores)")
    bench.add_argument("--rows", type=int, default=20_000, help="rows (--suite migrate)")
    bench.add_argument("--ray-workers", type=int, default=2,
                       help="Ray actors for --suite migrate (0: skip the Ray run)")
    bench.add_argument("--model", default="minilm",
                       help="model; with --suite rerank a cross-encoder (default: MiniLM-L6 "
                       "with a one-logit head, built on the fly)")
    bench.add_argument("--passages", type=int, default=100, help="passages (--suite rerank)")
    bench.add_argument("--words", type=int, default=150,
                       help="words per passage (--suite rerank; 150 words ~ 200 tokens)")
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
                    "summaries -> explanations of Python's standard library: larger, natural), "
                    "'stdlib-longdocs' (one long document per stdlib module: compares naive, "
                    "overlap and late chunking) or a BEIR folder (corpus.jsonl, queries.jsonl, "
                    "qrels/SPLIT.tsv)")
    ev.add_argument("--chunk-tokens", type=int, default=128,
                    help="tokens per chunk (--dataset stdlib-longdocs)")
    ev.add_argument("--chunk-overlap", type=int, default=32,
                    help="tokens shared by neighbours in the overlap method (stdlib-longdocs)")
    ev.add_argument("--methods", default="naive,overlap,late",
                    help="chunking methods to compare (stdlib-longdocs)")
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
                                      "status", "failures"])
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
    mig.add_argument("--retry-failed", action="store_true",
                     help="backfill: also retry the rows recorded as failed")
    mig.add_argument("--force", action="store_true",
                     help="swap although rows are remaining or failed (they get NULL vectors)")
    mig.add_argument("--yes", action="store_true", help="confirm drop-old")
    mig.add_argument("--ray", action="store_true", help="backfill as a Ray Data pipeline")
    mig.add_argument("--address", help="Ray cluster address (default: a local instance)")
    mig.add_argument("--workers", type=int, default=2, help="Ray actors (one Embedder each)")
    mig.add_argument("--gpus-per-worker", type=float, default=0)
    mig.add_argument("--json", action="store_true")
    _add_model_flags(mig)

    pg = sub.add_parser("postgres", help="run an embedded PostgreSQL with pgvector (needs "
                        "hybridembed[postgres]); `start` prints its DSN")
    pg.add_argument("action", choices=["start", "stop", "status"])
    pg.add_argument("--dir", help="its data folder, kept across restarts (default "
                    "$HYBRIDEMBED_POSTGRES_DIR or ~/.local/share/hybridembed/postgres)")
    pg.add_argument("--json", action="store_true")

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
                          "server's per-stage times, in rounds; each server load is paired "
                          "with an in-process run taken right after it")
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
                      help="rounds of paired measurements, each with a fresh server and "
                           "in-process worker (report the spread)")
    load.add_argument("--floor", action="store_true",
                      help="also time the one-client load on a bare uvicorn app embedding "
                           "inline (no framework, no validation), against the same "
                           "in-process worker: the least any server on uvicorn adds here")
    load.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"embed": cmd_embed, "models": cmd_models, "pull": cmd_pull,
                    "serve": cmd_serve, "loadtest": cmd_loadtest, "index": cmd_index,
                    "search": cmd_search, "collections": cmd_collections, "bench": cmd_bench,
                    "migrate": cmd_migrate, "evaluate": cmd_evaluate, "reembed": cmd_reembed,
                    "alias": cmd_alias, "postgres": cmd_postgres}
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
             "served_model_name", "token_ids", "cors_allow_origin", "models_file", "lazy",
             "max_memory", "keep_alive")
    given = list(args.model or [])
    args.model = given[0] if given else None
    more = {"models": ",".join(given[1:])} if len(given) > 1 else {}
    settings = _settings(args, **{n: getattr(args, n) for n in names}, **more)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    served = ", ".join([settings.model, *filter(None, settings.models.split(","))])
    print(f"hybridembed serving {served} on http://{settings.host}:{settings.port} "
          f"(docs at /docs)", flush=True)
    uvicorn.run(create_app(settings, gc_freeze=True), host=settings.host, port=settings.port,
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
                            truncate=False if args.no_truncate else None,
                            dimensions=args.dimensions, overflow=args.overflow,
                            truncation_side=args.truncation_side,
                            chunk_pooling=args.chunk_pooling, chunk_overlap=args.chunk_overlap,
                            max_active_dims=args.max_active_dims)
    if args.json:
        rows = []
        for i, (text, item) in enumerate(zip(texts, result, strict=True)):
            row = {"text": text, **result.usage.row(i)}
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
        done = result.usage.row(i)
        how = (f", {done['dropped_tokens']} of {done['input_tokens']} cut off"
               if done["dropped_tokens"] else
               f", {done['input_tokens']} in {done['chunks']} windows" if done["chunks"] > 1
               else "")
        print(f"\n[{i}] {text[:70]!r} ({item.tokens} tokens{how})")
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


def _store_settings(args) -> Settings:
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
    return Settings.from_env(store=args.store, store_url=args.url, data_dir=data_dir)


def _store(args, embedder=None):
    from .stores import open_store

    settings = _store_settings(args)
    if embedder is None:
        from .service import Embedder

        embedder = Embedder(**_settings(args).embedder_options())
    options = settings.store_options()
    options["reranker_model"] = getattr(args, "reranker_model", "bge-reranker-base")
    return open_store(embedder, **options)


def cmd_index(args) -> int:
    """Index ``args.paths`` in batches of ``--batch`` documents, each one all-or-nothing
    upsert, so memory is bounded by a batch. A bad file is reported and skipped (exit 1
    at the end); an error that stops the run is one line (exit 2); Ctrl-C stops after the
    batch being written (exit 130). A collection this run created and left empty is
    dropped again."""
    import time

    from tqdm import tqdm

    from .ingest import late_chunked, read_documents, source_files
    from .stores import StoreError

    files = source_files(args.paths)  # a missing path: exit 2 before anything is opened
    store = _store(args)
    store.batch_size = args.batch
    name = args.collection
    skipped: list[str] = []
    written = 0
    began = time.perf_counter()
    existed = None

    def skip(message: str) -> None:
        skipped.append(message)
        tqdm.write(f"hybridembed: skipped {message}", file=sys.stderr)

    bar = tqdm(unit="doc", desc=f"indexing into {name}", disable=None)
    try:
        with contextlib.ExitStack() as loading:
            multivector = args.multivector and not args.no_multivector
            if name in store.list_collections():  # an existing collection keeps its schema
                multivector = bool(store.schema(name).multivector_dim)
            if args.late_chunking:  # parts of (documents, their vectors)
                parts = late_chunked(files, store.embedder, args.chunk_tokens, args.overlap,
                                     multivector, encoding=args.encoding, on_skip=skip)
            else:
                docs = read_documents(files, store.embedder.tokenizer, args.chunk_tokens,
                                      args.overlap, encoding=args.encoding, on_skip=skip)
                parts = ((batch, None) for batch in _batches(docs, args.batch))
            for batch, result in parts:
                if existed is None:  # created with the first batch: a failed run leaves none
                    existed = name in store.list_collections()
                    store.ensure_collection(name, multivector=multivector)
                    if not existed:  # a new collection: build its indexes once, at the end
                        loading.enter_context(store.bulk(name))
                if result is None:
                    store.upsert(name, batch)
                else:
                    store.upsert_embedded(name, batch, result)
                written += len(batch)
                bar.update(len(batch))
        bar.close()
        if existed is not None:
            store.optimize(name)  # new segments (Edge), indexes a killed run left out (pg)
            held = store.count(name)
    except KeyboardInterrupt:
        bar.close()
        print(f"hybridembed: interrupted; {written} chunks were written to {name!r}, none "
              "half-way; run the same command again to finish (written chunks are updated "
              "in place, not duplicated)", file=sys.stderr)
        _drop_if_new_and_empty(store, name, existed)
        return 130
    except Exception as exc:
        bar.close()
        _drop_if_new_and_empty(store, name, existed)
        if isinstance(exc, HybridEmbedError):
            raise
        raise StoreError(f"indexing into {name!r} stopped: {type(exc).__name__}: {exc}; "
                         f"{written} chunks were written, none half-way") from exc
    finally:
        store.close()
    took = time.perf_counter() - began
    where = f"collection {name!r} ({store.kind})"
    print(f"{written} chunks from {len(files)} file(s) in {took:.1f} s "
          f"({written / took if took else 0:.1f} docs/s); "
          + (f"{where} holds {held}" if existed is not None
             else f"nothing to index: {where} was not created"))
    if skipped:
        print(f"hybridembed: {len(skipped)} file(s) or record(s) skipped (listed above); "
              "the rest was indexed", file=sys.stderr)
        return 1
    return 0


def _batches(docs, size: int):
    """Lists of at most ``size`` documents, a new list before a repeated id (a JSONL file
    may hold one id twice: the later record wins, as two upserts would)."""
    batch, keys = [], set()
    for doc in docs:
        if len(batch) >= size or doc.key in keys:
            yield batch
            batch, keys = [], set()
        batch.append(doc)
        keys.add(doc.key)
    if batch:
        yield batch


def _drop_if_new_and_empty(store, name: str, existed: bool | None) -> None:
    if existed is False:
        with contextlib.suppress(Exception):
            if store.count(name) == 0:
                store.drop_collection(name)


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
    from .stores import CollectionNotFoundError

    store = _store(args)
    try:
        hits = store.search(args.collection, args.query, mode=args.mode, fusion=args.fusion,
                            k=args.k, filter=_parse_filter(args.filter), rerank=args.rerank,
                            weights=tuple(args.weights))
    except CollectionNotFoundError as exc:
        raise CollectionNotFoundError(f"{exc}{_old_default_hint(args)}") from None
    finally:
        store.close()
    if args.json:
        return _print_json([h.to_dict() for h in hits])
    if not hits:
        print("no hits")
        return 0
    print(f"{'rank':>4} {'score':>9}  {'why (retriever:rank)':<26} {'id':<24} text")
    for rank, hit in enumerate(hits, 1):
        why = " ".join(f"{r[0]}:{v['rank']}" for r, v in hit.retrievers.items())
        snippet = " ".join(hit.text.split())[:70]
        shown = hit.id if len(hit.id) <= 24 else "…" + hit.id[-23:]  # a path's end tells
        print(f"{rank:>4} {hit.score:>9.4f}  {why:<26} {shown:<24} {snippet}")
    return 0


def cmd_collections(args) -> int:
    settings = _store_settings(args)
    backend = _backend(args)
    try:
        if args.action == "drop":
            if not args.name:
                raise InvalidOptionError("collections drop needs the collection's name", "name")
            backend.drop(args.name)
            print(f"dropped {args.name!r} from the {settings.store} store")
            return 0
        if args.name:
            raise InvalidOptionError(f"collections list takes no name (got {args.name!r})",
                                     "name")
        rows = []
        for name in backend.list():
            schema = backend.meta(name)["schema"]
            rows.append({"name": name, "count": backend.count(name), **schema})
    finally:
        backend.close()
    if args.json:
        return _print_json(rows)
    for row in rows:
        print(f"{row['name']:<24} {row['count']:>8} docs  {row['model']} ({row['dense_dim']}-d, "
              f"sparse {row['sparse_kind']}, multivector {row['multivector_dim'] or 'no'})")
    if not rows:
        where = f" in {settings.data_dir.absolute()}" if settings.store == "edge" else ""
        print(f"no collections in the {settings.store} store{where}"
              f"{_old_default_hint(args)}")
    return 0


def _old_default_hint(args) -> str:
    """Collections indexed before the data directory moved out of the working directory
    (./.hybridembed) are not lost: say where they are."""
    settings = _store_settings(args)
    old = Path(".hybridembed")
    if (settings.store != "edge" or not (old / "collections").is_dir()
            or old.resolve() == Path(settings.data_dir).resolve()):
        return ""
    return (f"; note: {old.absolute()} holds an older data directory, use it with "
            "--data-dir .hybridembed")


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
    if args.suite == "rerank":
        from .bench import rerank

        report = rerank.run(None if args.model == "minilm" else args.model,
                            passages=args.passages, words=args.words, rounds=args.repeats,
                            progress=lambda m: print(m, file=sys.stderr))
        print(json.dumps(report, indent=2) if args.json else rerank.format_report(report))
        return 0
    if args.suite == "rerank-mixed":
        from .bench import rerank

        report = rerank.mixed_load(args.seconds, embed_clients=args.concurrency,
                                   progress=lambda m: print(m, file=sys.stderr))
        print(json.dumps(report, indent=2) if args.json else rerank.format_mixed(report))
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

    return open_backend(**_store_settings(args).store_options())


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
    elif args.dataset == "stdlib-longdocs":
        from .evaluate.longdocs import check_methods, compare_chunking, format_chunking

        check_methods(args.methods.split(","))  # before the model loads
        embedder = ev.open_embedder("local", model=args.model, **local)
        report = compare_chunking(embedder, args.methods.split(","), args.modes.split(","),
                                  chunk_tokens=args.chunk_tokens, overlap=args.chunk_overlap,
                                  k=args.k, recall_k=args.recall_k, fusion=args.fusion,
                                  data_dir=args.data_dir, progress=progress)
        print(json.dumps(report, indent=2) if args.json else format_chunking(report))
        return 0
    else:
        embedder = ev.open_embedder("local", model=args.model, **local)
        report = ev.evaluate(embedder, args.dataset, modes=args.modes.split(","), k=args.k,
                             recall_k=args.recall_k, fusion=args.fusion, split=args.split,
                             data_dir=args.data_dir, progress=progress)
    print(json.dumps(report, indent=2) if args.json else ev.format_report(report))
    return 0


def cmd_migrate(args) -> int:
    """A migration step; a database error is one line and exit 2 like any other, and
    Ctrl-C stops with a one-line note of how to resume (exit 130)."""
    import psycopg

    from .migrate.pgvector import MigrationError

    try:
        return _migrate_step(args)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MigrationError(f"migrate {args.step}: database error: {first}") from None
    except KeyboardInterrupt:
        kept = {"backfill": "every committed batch is kept",
                "swap": "the columns are renamed only if the swap finished (`migrate status` "
                        "says); an unfinished index is rebuilt"}.get(args.step, "nothing was "
                                                                    "half-written")
        print(f"hybridembed: interrupted during `migrate {args.step}`; {kept}; run the same "
              "command again to resume", file=sys.stderr)
        return 130


def _migrate_step(args) -> int:
    from .migrate.pgvector import MigrationError, PgMigration, Target

    target = Target(args.table, args.id_col, args.text_col, args.column, args.sparse, args.schema)
    if args.step == "backfill" and args.ray:
        from .migrate.ray_backfill import backfill_with_ray

        settings = _settings(args)
        result = backfill_with_ray(args.dsn, target, settings.model, address=args.address,
                                   workers=args.workers, batch_size=args.batch,
                                   too_long=args.too_long,
                                   gpus_per_worker=args.gpus_per_worker,
                                   embedder_options={"device": settings.device,
                                                     "dtype": settings.dtype},
                                   retry_failed=args.retry_failed)
        print(json.dumps(result, indent=None if args.json else 2))
        return 0
    embedder = None
    if args.step == "backfill":
        from .service import Embedder

        embedder = Embedder(**_settings(args).embedder_options())
    elif args.step in ("plan", "add"):  # the model's spec (dimension, sparse space) will do
        from types import SimpleNamespace

        spec = registry.resolve(_settings(args).model)
        embedder = SimpleNamespace(spec=spec, model=spec.name)
    m = PgMigration(args.dsn, target, embedder, batch_size=args.batch, too_long=args.too_long)
    if args.step == "failures":
        for key, reason in m.failures():
            print(f"{key}\t{reason}")
        return 0
    if args.step == "backfill":
        from tqdm import tqdm

        status = m.status()
        if "remaining" not in status:
            raise MigrationError("no new columns: run `migrate add` first")
        total = status["remaining"] + (status["failed"] if args.retry_failed else 0)
        with tqdm(total=total, unit="row", desc=f"backfill {args.table}", disable=None) as bar:
            stats = m.backfill(progress=bar.update, retry_failed=args.retry_failed)
        result = {"embedded": stats.embedded, "skipped": stats.skipped, "failed": stats.failed,
                  "skipped_ids": stats.skipped_ids[:100],
                  "failures": [{"key": k, "reason": r} for k, r in stats.failed_rows[:100]],
                  "batches": stats.batches, "retries": stats.retries,
                  "seconds": round(stats.seconds, 2),
                  "rows_per_s": round(stats.rows / stats.seconds, 1) if stats.seconds else 0}
    else:
        result = {"plan": m.plan, "add": lambda: {"added": m.add()}, "status": m.status,
                  "swap": lambda: m.swap(force=args.force), "rollback": m.rollback,
                  "drop-old": lambda: {"dropped": m.drop_old(yes=args.yes)}}[args.step]()
    print(json.dumps(result, indent=None if args.json else 2, default=str))
    return 0


def cmd_postgres(args) -> int:
    from . import postgres

    result = {"start": postgres.start, "stop": postgres.stop,
              "status": postgres.status}[args.action](args.dir)
    if args.json:
        print(json.dumps(result))
    elif args.action == "start":
        print(result["dsn"])  # alone on stdout: DSN=$(hybridembed postgres start)
        print(f"PostgreSQL with pgvector runs from {result['dir']} (pid {result['pid']}); "
              "`hybridembed postgres stop` stops it", file=sys.stderr)
    elif args.action == "stop":
        print(f"stopped; its data stays in {result['dir']}")
    elif result["running"]:
        print(f"running from {result['dir']} (pid {result['pid']}): {result['dsn']}")
    else:
        print(f"not running ({result['dir']}"
              f"{'' if result['initialized'] else ', no data yet'})")
    return 0


def cmd_loadtest(args) -> int:
    from .bench import loadtest

    report = loadtest.run(args.model, args.texts, args.concurrency, args.single, args.rounds,
                          args.runtime, args.list_clients, args.list_size,
                          progress=lambda m: print(m, file=sys.stderr, flush=True),
                          floor=args.floor)
    print(json.dumps(report, indent=2) if args.json else loadtest.format_report(report))
    return 0


def _print_json(value) -> int:
    json.dump(value, sys.stdout, indent=2)
    print()
    return 0


def cmd_models(args) -> int:
    if args.families:
        for family in registry.FAMILIES.values():
            print(f"{family.name:<22} {family.about}")
        return 0
    if args.model:
        specs = [registry.resolve(name).describe() for name in args.model]
        if args.json:
            return _print_json(specs)
        for row in specs:
            print(f"{row['name']}  ({row['family']}, {row['type']}, max {row['max_length']} "
                  f"tokens)\n  path         {row['path']}")
            for output, how in row["outputs"].items():
                print(f"  {output:<12} {how}")
        return 0
    rows = registry.available()
    if args.json:
        return _print_json(rows)
    print(f"{'name':<22} {'family':<22} {'dim':>5} {'max_len':>7} {'pooling':<9} {'sparse':<8} "
          f"{'colbert':<7} where / why not")
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<22} {'-':<22} {'-':>5} {'-':>7} {'-':<9} {'-':<8} {'-':<7} "
                  f"not here: {row['error'][:90]}")
            continue
        print(f"{row['name']:<22} {row['family']:<22} {row['dim']:>5} {row['max_length']:>7} "
              f"{row['pooling']:<9} {row['sparse']:<8} {'yes' if row['colbert_head'] else 'no':<7} "
              f"{row['path']}")
    print("\n`hybridembed models NAME` shows how each output of a model is computed.")
    return 0


def cmd_pull(args) -> int:
    path = registry.pull(args.model)
    print(f"{args.model}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
