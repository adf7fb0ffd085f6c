"""The ``stdlib-longdocs`` set and the chunking comparison of ``evaluate``."""

from __future__ import annotations

from hybridembed import cli
from hybridembed.evaluate.longdocs import compare_chunking, format_chunking, stdlib_long_documents


def test_every_query_is_answered_far_from_its_topic():
    docs, queries = stdlib_long_documents()
    assert len(docs) >= 20 and len(queries) >= 300
    assert (docs, queries) == stdlib_long_documents()  # deterministic
    text = {d["id"]: d["text"] for d in docs}
    for q in queries:
        doc = text[q["doc"]]
        answer = doc[q["start"]:q["end"]]
        topic = q["topic"]
        assert answer and "\n\n" not in answer and doc[q["start"] - 2:q["start"]] == "\n\n"
        assert q["text"].endswith(f" ({topic})") and doc.startswith(topic)
        assert topic not in answer  # the topic is said elsewhere in the document


def test_compare_chunking_reports_each_method(tiny_m3, tmp_path):
    report = compare_chunking(tiny_m3, modes=["sparse", "hybrid+rerank"],
                              chunk_tokens=24, overlap=8, max_documents=1,
                              data_dir=tmp_path, progress=None)
    assert list(report["methods"]) == ["naive", "overlap", "late"]
    naive, overlap, late = (report["methods"][m] for m in ("naive", "overlap", "late"))
    assert naive["chunks"] == late["chunks"] < overlap["chunks"]
    for row in report["methods"].values():
        assert set(row["modes"]) == {"sparse", "hybrid+rerank"}
        for scores in row["modes"].values():
            assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert "late / naive encode time" in format_chunking(report)


def test_cli_refuses_unknown_method(capsys):
    assert cli.main(["evaluate", "--dataset", "stdlib-longdocs", "--methods", "naive,lazy",
                     "--device", "cpu"]) == 2
    assert "lazy" in capsys.readouterr().err
