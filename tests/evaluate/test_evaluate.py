"""Evaluation: metrics against hand-computed values, the BEIR loader, evaluate() through
the real store, and the parity check."""

import json
import math

import numpy as np
import pytest

from hybridembed.errors import InvalidInputError, InvalidOptionError
from hybridembed.evaluate import (
    compare,
    evaluate,
    format_report,
    generated,
    load_beir,
    mean_metrics,
    mrr_at,
    ndcg_at,
    recall_at,
)
from hybridembed.evaluate.run import open_embedder, parse_embedder_spec, parse_mode
from hybridembed.types import EmbedResult, Usage

L2, L3, L5 = math.log2(2), math.log2(3), math.log2(5)


# -- metrics ---------------------------------------------------------------------------------
def test_binary_relevance():
    ranked, rel = ["a", "b", "c", "d"], {"b": 1, "d": 1}
    assert ndcg_at(ranked, rel, 10) == pytest.approx((1 / L3 + 1 / L5) / (1 + 1 / L3))
    assert mrr_at(ranked, rel, 10) == pytest.approx(0.5)
    assert mrr_at(ranked, rel, 1) == 0.0
    assert recall_at(ranked, rel, 100) == 1.0
    assert recall_at(ranked, rel, 2) == 0.5
    assert ndcg_at(["b", "d", "a"], rel) == pytest.approx(1.0)


def test_graded_relevance():
    # grades: a 1, b 0 (judged not relevant), c 2, x 3 (relevant but never retrieved)
    ranked, rel = ["a", "b", "c"], {"a": 1, "b": 0, "c": 2, "x": 3}
    ideal3 = 3 / 1 + 2 / L3 + 1 / math.log2(4)
    assert ndcg_at(ranked, rel, 3) == pytest.approx((1 + 0 + 2 / math.log2(4)) / ideal3)
    assert ndcg_at(ranked, rel, 2) == pytest.approx(1 / (3 + 2 / L3))
    assert ndcg_at(ranked, rel, 3) == pytest.approx(0.42001, abs=1e-5)
    assert mrr_at(ranked, rel) == 1.0
    assert mrr_at(["b", "c"], rel) == 0.5  # grade 0 is not a hit
    assert recall_at(ranked, rel) == pytest.approx(2 / 3)
    assert ndcg_at(["x", "c", "a"], rel) == pytest.approx(1.0)


def test_no_relevant_and_edge_cases():
    assert ndcg_at(["a"], {}) == mrr_at(["a"], {}) == recall_at(["a"], {}) == 0.0
    assert ndcg_at(["a"], {"a": 0}) == 0.0
    assert ndcg_at([], {"a": 1}) == 0.0
    assert mrr_at(["a", "a", "b"], {"b": 1}) == 0.5  # a repeated id counts once
    with pytest.raises(ValueError):
        ndcg_at(["a"], {"a": 1}, 0)


def test_mean_metrics_skips_queries_without_relevant_docs():
    run = {"q1": ["a", "b"], "q2": ["c"], "q3": ["x"]}
    qrels = {"q1": {"a": 1}, "q2": {"d": 1, "c": 0}, "q3": {}, "q4": {"e": 1}}  # q4: not run
    out = mean_metrics(run, qrels)
    assert out["queries"] == 3  # q1, q2, q4
    assert out["ndcg@10"] == pytest.approx(1 / 3)
    assert out["mrr@10"] == pytest.approx(1 / 3)
    assert out["recall@100"] == pytest.approx(1 / 3)
    assert mean_metrics({}, {"q": {}}) == {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@100": 0.0,
                                            "queries": 0}
    assert set(mean_metrics(run, qrels, k=5, recall_k=20)) == {"ndcg@5", "mrr@5", "recall@20",
                                                               "queries"}


# -- data sets -------------------------------------------------------------------------------
def write_beir(folder, corpus=None, queries=None, qrels=None):
    corpus = corpus if corpus is not None else [
        {"_id": "d1", "title": "Cats", "text": "A cat sat on the mat."},
        {"_id": "d2", "title": "", "text": "Dogs bark at night."},
        {"_id": "d3", "text": "The stock market fell sharply today."},
        {"_id": 4, "title": "Weather", "text": "Heavy rain is expected tomorrow."},
    ]
    queries = queries if queries is not None else [
        {"_id": "q1", "text": "where did the cat sit"},
        {"_id": "q2", "text": "will it rain"},
        {"_id": "q3", "text": "an unjudged query"},
    ]
    qrels = qrels if qrels is not None else (
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t4\t2\nq2\td3\t0\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


def test_load_beir(tmp_path):
    docs, queries, qrels = load_beir(write_beir(tmp_path / "beir"))
    assert docs == [{"id": "d1", "text": "Cats A cat sat on the mat."},
                    {"id": "d2", "text": "Dogs bark at night."},
                    {"id": "d3", "text": "The stock market fell sharply today."},
                    {"id": "4", "text": "Weather Heavy rain is expected tomorrow."}]
    assert queries == [{"id": "q1", "text": "where did the cat sit"},
                       {"id": "q2", "text": "will it rain"}]  # only judged queries
    assert qrels == {"q1": {"d1": 1}, "q2": {"4": 2, "d3": 0}}
    (tmp_path / "beir" / "qrels" / "dev.tsv").write_text("q3 d2 1\n")  # spaces, no header
    _, queries, qrels = load_beir(tmp_path / "beir", split="dev")
    assert [q["id"] for q in queries] == ["q3"] and qrels == {"q3": {"d2": 1}}


@pytest.mark.parametrize("change, message", [
    ({"corpus": None, "missing": "corpus.jsonl"}, "corpus.jsonl: file not found"),
    ({"missing": "qrels/test.tsv"}, "test.tsv: file not found"),
    ({"corpus_text": '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n'},
     "corpus.jsonl:2: not valid JSON"),
    ({"corpus_text": '{"_id": "d1", "text": "ok"}\n\n{"text": "no id"}\n'},
     "corpus.jsonl:3: document has no '_id'"),
    ({"corpus_text": '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'},
     "corpus.jsonl:2: document id 'd1' already appeared on line 1"),
    ({"corpus_text": '{"_id": "d1", "text": 5}\n'}, "corpus.jsonl:1: document 'd1': 'text'"),
    ({"corpus_text": '["d1", "text"]\n'}, "corpus.jsonl:1: each line must be a JSON object"),
    ({"queries_text": '{"_id": "q1", "text": "ok"}\n{"_id": "q2"}\n'},
     "queries.jsonl:2: query 'q2' has no 'text'"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\n"}, "test.tsv:2: expected 3"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"},
     "test.tsv:2: score must be a whole number"),
    ({"qrels": "q1\td1\t1\nq9\td1\t1\n"}, "test.tsv:2: query 'q9' is not in queries.jsonl"),
    ({"qrels": "query-id\tcorpus-id\tscore\n"}, "test.tsv: no judgements"),
])
def test_load_beir_errors(tmp_path, change, message):
    folder = write_beir(tmp_path / "beir", qrels=change.get("qrels"))
    if "corpus_text" in change:
        (folder / "corpus.jsonl").write_text(change["corpus_text"])
    if "queries_text" in change:
        (folder / "queries.jsonl").write_text(change["queries_text"])
    if "missing" in change:
        (folder / change["missing"]).unlink()
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")) as info:
        load_beir(folder)
    assert str(folder) in str(info.value)


def test_load_beir_not_a_folder(tmp_path):
    with pytest.raises(InvalidInputError, match="not a folder"):
        load_beir(tmp_path / "nowhere")


def test_generated_shape():
    docs, queries, qrels = generated()
    assert len(docs) == 162 and len(queries) == 32
    assert {q["kind"] for q in queries} == {"semantic", "lexical"}
    ids = {d["id"] for d in docs}
    assert all(set(qrels[q["id"]]) <= ids and set(qrels[q["id"]].values()) == {1}
               for q in queries)


def test_stdlib_docstrings_shape():
    from hybridembed.evaluate.datasets import stdlib_docstrings

    docs, queries, qrels = stdlib_docstrings()
    assert len(docs) > 400 and len(queries) > 300  # 576 / 509 on Python 3.11
    texts = [d["text"] for d in docs]
    assert len(set(texts)) == len(texts) and len({d["id"] for d in docs}) == len(docs)
    by_id = {d["id"]: d["text"] for d in docs}
    for q in queries:
        (relevant, grade), = qrels[q["id"]].items()
        assert grade == 1 and relevant in by_id
        assert q["text"] not in by_id[relevant]  # the summary is not part of the answer
    assert stdlib_docstrings() == (docs, queries, qrels)  # the same set every time
    import logging

    def patched_in(self):
        """A method another package adds to a standard-library class.

        Documented at length, so that it would pass every length rule of the set if it
        were counted as the standard library's own (transformers does this to logging)."""

    logging.Logger.patched_in = patched_in
    try:
        assert stdlib_docstrings() == (docs, queries, qrels)  # patched-in methods ignored
    finally:
        del logging.Logger.patched_in


def test_evaluate_stdlib_through_the_cli_name(minilm, tmp_path):
    """The larger natural set through the name the CLI passes: dense retrieval finds many,
    not all, answers (a set that moves when an embedder changes a little)."""
    from hybridembed.evaluate.run import load

    name, data = load("stdlib")
    assert name.startswith("stdlib (Python 3.")
    docs, queries, qrels = data
    subset = (docs, queries[:60], {q["id"]: qrels[q["id"]] for q in queries[:60]})
    report = evaluate(minilm, subset, modes=["dense", "sparse"], data_dir=tmp_path,
                      progress=None)
    dense = report["modes"]["dense"]
    assert dense["queries"] == 60 and 0.2 < dense["ndcg@10"] < 0.95, dense


def test_parse_mode():
    assert parse_mode("hybrid+rerank") == ("hybrid", "multivector")
    assert parse_mode("dense+cross-encoder") == ("dense", "cross-encoder")
    assert parse_mode("sparse") == ("sparse", None)
    with pytest.raises(InvalidOptionError, match="unknown mode"):
        parse_mode("hybrid+magic")


# -- evaluate, through the store ---------------------------------------------------------------
def test_evaluate_generated(minilm, tmp_path):
    messages = []
    report = evaluate(minilm, "generated", data_dir=tmp_path, progress=messages.append)
    assert list(report["modes"]) == ["dense", "sparse", "hybrid", "hybrid+rerank"]
    for row in report["modes"].values():
        assert row["queries"] == 32
        for metric in ("ndcg@10", "mrr@10", "recall@100"):
            assert 0.0 <= row[metric] <= 1.0
        assert set(row["by_kind"]) == {"semantic", "lexical"}
    recall = {mode: row["recall@100"] for mode, row in report["modes"].items()}
    assert recall["hybrid"] >= max(recall["dense"], recall["sparse"]), recall
    # the corpus is built so that each retriever alone misses what the other finds
    by = {mode: row["by_kind"] for mode, row in report["modes"].items()}
    assert by["sparse"]["lexical"]["ndcg@10"] > by["dense"]["lexical"]["ndcg@10"]
    assert by["dense"]["semantic"]["ndcg@10"] > by["sparse"]["semantic"]["ndcg@10"]
    assert report["modes"]["hybrid"]["ndcg@10"] > max(report["modes"]["dense"]["ndcg@10"],
                                                      report["modes"]["sparse"]["ndcg@10"])
    assert report["timings"]["index_s"] > 0 and messages
    assert list(tmp_path.iterdir()) == []  # the temporary store is gone
    text = format_report(report)
    assert "nDCG@10" in text and "Recall@100" in text and "hybrid+rerank" in text


def test_evaluate_beir_folder(minilm, tmp_path):
    folder = write_beir(tmp_path / "beir", corpus=[
        {"_id": "d1", "title": "Cats", "text": "A cat sat on the mat."},
        {"_id": "d2", "text": "Heavy rain is expected tomorrow."},
        {"_id": "d3", "title": "", "text": ""},  # empty documents exist in BEIR sets
    ], qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq2\tgone\t1\n")
    report = evaluate(minilm, folder, modes=("dense", "hybrid"), k=2, recall_k=3,
                      progress=None)
    assert report["dataset"] == str(folder) and report["missing_relevant_docs"] == 1
    assert report["metrics"] == ["ndcg@2", "mrr@2", "recall@3"]
    dense = report["modes"]["dense"]
    assert dense["mrr@2"] == 1.0
    assert dense["recall@3"] == pytest.approx(0.75)  # q2's "gone" can never be found
    assert "not in the corpus" in format_report(report)


def test_evaluate_refuses_bad_input(minilm):
    with pytest.raises(InvalidOptionError, match="unknown mode"):
        evaluate(minilm, modes=("dense", "colour"), progress=None)
    with pytest.raises(InvalidOptionError, match="recall_k"):
        evaluate(minilm, recall_k=5000, progress=None)
    with pytest.raises(InvalidOptionError, match="in-process Embedder"):
        evaluate(FakeEmbedder(np.eye(2, dtype=np.float32)), progress=None)


# -- parity ------------------------------------------------------------------------------------
class FakeEmbedder:
    """Returns fixed vectors by text position; no model spec (like an HTTP backend)."""

    def __init__(self, vectors, url="http://fake"):
        self.vectors, self.url, self.name, self.model = vectors, url, "fake", None
        self.kinds = []

    def embed(self, texts, *, dense=True, kind="document", **_):
        self.kinds.append(kind)
        return EmbedResult(model="fake", dense=self.vectors[:len(texts)], sparse=None,
                           multivector=None, usage=Usage(0))


def test_compare_same_embedder(minilm):
    report = compare(minilm, minilm, texts=["a cat on a mat", "stock prices fell", "rain"])
    assert report["texts"] == 3 and report["dim"] == 384
    assert report["cosine"]["min"] == pytest.approx(1.0, abs=1e-5)
    assert report["ok"]
    assert "min" in format_report(report)


def test_compare_distribution_and_kinds():
    n = 194  # the generated corpus: 162 documents + 32 queries
    angles = np.linspace(0.0, 0.5, 162)
    a = np.stack([np.ones(162), np.zeros(162)], 1).astype(np.float32)
    b = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32) * 3  # norms differ
    fake_a = FakeEmbedder(np.concatenate([a, a[:32]]))
    fake_b = FakeEmbedder(np.concatenate([b, b[:32]]))
    report = compare(fake_a, fake_b)
    assert report["texts"] == n and set(report["by_kind"]) == {"document", "query"}
    assert fake_a.kinds == ["document", "query"]
    assert report["by_kind"]["document"]["min"] == pytest.approx(math.cos(0.5), abs=1e-6)
    assert report["by_kind"]["document"]["median"] == pytest.approx(
        float(np.median(np.cos(angles))), abs=1e-6)
    assert report["cosine"]["min"] == pytest.approx(math.cos(0.5), abs=1e-6)
    assert report["worst"][0]["cosine"] == pytest.approx(math.cos(0.5), abs=1e-6)
    assert report["cosine"]["p1"] <= report["cosine"]["p5"] <= report["cosine"]["median"]
    assert not report["ok"] and "DIFFERENT" in format_report(report)


def test_compare_refuses_different_sizes():
    with pytest.raises(InvalidOptionError, match="different sizes"):
        compare(FakeEmbedder(np.ones((4, 2), np.float32)),
                FakeEmbedder(np.ones((4, 3), np.float32)), texts=["a", "b"])


def test_embedder_specs():
    assert parse_embedder_spec("local:minilm") == ("local", "minilm")
    assert parse_embedder_spec("remote:http://h:8080") == ("remote", "http://h:8080")
    assert parse_embedder_spec("ollama") == ("ollama", None)
    assert parse_embedder_spec("onnx-int8:minilm") == ("onnx-int8", "minilm")
    with pytest.raises(InvalidOptionError, match="unknown embedder"):
        parse_embedder_spec("tei:http://h")
    remote = open_embedder("remote:http://127.0.0.1:9", model="minilm")  # connects lazily
    try:
        assert (remote.url, remote.model) == ("http://127.0.0.1:9", "minilm")
    finally:
        remote.close()


def test_engine_specs_open_local_runtimes(tiny_m3_dir, tmp_path, monkeypatch):
    """`--compare torch onnx` compares two local engines of one model."""
    monkeypatch.setenv("HYBRIDEMBED_ONNX_CACHE", str(tmp_path))
    torch_ = open_embedder("torch", model=str(tiny_m3_dir))
    onnx = open_embedder(f"onnx:{tiny_m3_dir}")
    assert (torch_.runtime_name, onnx.runtime_name) == ("torch", "onnx")
    report = compare(torch_, onnx, texts=["a short text", "another, somewhat longer text"])
    assert report["ok"] and report["cosine"]["min"] > 0.9999


def test_evaluate_reports_splade_next_to_bm25(family_dir, tmp_path):
    """The real SPLADE checkpoint's sparse retrieval and BM25's, same data, same store."""
    from hybridembed import Embedder

    splade = Embedder(str(family_dir("splade")), device="cpu")
    report = evaluate(splade, "generated", modes=["sparse", "bm25"], data_dir=tmp_path,
                      progress=None)
    assert list(report["modes"]) == ["sparse", "bm25"]
    sparse, bm25 = report["modes"]["sparse"], report["modes"]["bm25"]
    assert sparse["queries"] == bm25["queries"] == 32
    assert sparse["ndcg@10"] != bm25["ndcg@10"]  # two retrievers, not one searched twice
    # BM25 finds the random codes of the lexical queries; the SPLADE vocabulary splits them
    assert bm25["by_kind"]["lexical"]["recall@100"] == 1.0
    assert "bm25" in format_report(report)
    with pytest.raises(InvalidOptionError, match="already are BM25"):
        evaluate(Embedder("minilm", device="cpu"), "generated", modes=["bm25"],
                 data_dir=tmp_path, progress=None)


def test_store_rerank_with_a_colbert_checkpoint(family_dir, tmp_path):
    """The store's multi-vector rerank runs on a ColBERT layout's 8-d per-token vectors
    (the tiny model is random: only that it runs end to end is checked here; its MaxSim
    equals the reference in tests/runtimes/test_families.py)."""
    from hybridembed import Embedder

    colbert = Embedder(str(family_dir("colbert")), device="cpu")
    report = evaluate(colbert, "generated", modes=["hybrid", "hybrid+rerank"],
                      data_dir=tmp_path, progress=None)
    rerank = report["modes"]["hybrid+rerank"]
    assert rerank["queries"] == 32 and 0.0 <= rerank["ndcg@10"] <= 1.0
    assert rerank["ndcg@10"] != report["modes"]["hybrid"]["ndcg@10"]
