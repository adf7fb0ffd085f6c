"""`hybridembed index` and `search` from the command line, on a fresh data directory."""

import json
import os
import subprocess
import sys

import pytest

from hybridembed.ingest import chunk_text, iter_chunks

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(cwd, *args):
    env = {**ENV, "HYBRIDEMBED_DATA_DIR": str(cwd / ".hybridembed")}
    return subprocess.run([sys.executable, "-m", "hybridembed", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def run_here(capsys, cwd, *args):
    """The CLI in this process (no model start-up per call); returns (status, out, err)."""
    from hybridembed.cli import main

    status = main([*args, "--data-dir", str(cwd / ".hybridembed")])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_index_then_search_idempotently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hybrid.md").write_text("# Hybrid search\n\nDense vectors find meaning; BM25 "
                                    "finds exact keywords. " * 60)
    (docs / "facts.jsonl").write_text(
        json.dumps({"id": "f1", "text": "Cats are small carnivorous mammals.", "lang": "en"})
        + "\n" + json.dumps({"id": "f2", "text": "Le Rhin coule vers la mer du Nord.",
                             "lang": "fr"}) + "\n")
    first = run(tmp_path, "index", "docs", "--collection", "kb", "--chunk-tokens", "64")
    assert first.returncode == 0, first.stderr
    status, again, _ = run_here(capsys, tmp_path, "index", "docs", "--collection", "kb",
                                "--chunk-tokens", "64")
    count = int(first.stdout.split("holds ")[1].split()[0])
    assert status == 0 and count > 3 and f"holds {count}" in again  # re-run: no duplicates
    status, out, _ = run_here(capsys, tmp_path, "search", "small carnivorous mammals",
                              "--collection", "kb", "-k", "3")
    assert status == 0 and "f1" in out.splitlines()[1]
    status, out, _ = run_here(capsys, tmp_path, "search", "mer", "--collection", "kb",
                              "--filter", "lang=fr", "--json")
    hits = json.loads(out)
    assert [h["id"] for h in hits] == ["f2"] and hits[0]["payload"]["lang"] == "fr"
    status, _, err = run_here(capsys, tmp_path, "search", "x", "--collection", "missing")
    assert status == 2 and "does not exist in " + str(tmp_path / ".hybridembed") in err
    assert len(err.strip().splitlines()) == 1
    status, out, _ = run_here(capsys, tmp_path, "collections", "--json")
    assert json.loads(out)[0]["count"] == count


def test_chunks_overlap_at_token_boundaries():
    text = " ".join(f"w{i}" for i in range(10))
    spans = [(text.index(f"w{i}"), text.index(f"w{i}") + len(f"w{i}")) for i in range(10)]
    assert chunk_text(text, spans, 4, 1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunk_text("short", [(0, 5)], 4, 1) == ["short"]
    with pytest.raises(ValueError):
        chunk_text(text, spans, 4, 4)


def test_streamed_chunks_equal_chunks_of_the_whole_text(minilm, monkeypatch):
    """Files are tokenized in segments (a 2.1 MB single-line file peaked at 5 GB RSS as one
    token list); the chunks must be those of the whole text."""
    from hybridembed.engine import tokenizer

    text = "Hybrid search finds meaning and exact keywords alike; " * 40
    whole = chunk_text(text, minilm.tokenizer.content(text)[1].tolist(), 16, 4)  # one call
    monkeypatch.setattr(tokenizer, "SEGMENT_CHARS", 200)
    assert len(whole) > 10
    assert list(iter_chunks(text, minilm.tokenizer, 16, 4)) == whole


def _corpus(root):
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("Dense vectors find meaning; BM25 finds keywords. " * 40)
    (docs / "sub" / "b.txt").write_text("The Rhine flows to the North Sea.")
    (docs / "c.jsonl").write_text(json.dumps({"id": "c1", "text": "Cats are mammals."}) + "\n")
    return docs


def test_ids_do_not_depend_on_how_the_path_was_spelled(tmp_path, capsys, monkeypatch):
    """Indexing a folder by a relative then an absolute path duplicated every chunk
    (146 became 287)."""
    docs = _corpus(tmp_path)
    data = str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    counts = []
    for cwd, spelling in [(tmp_path, "docs"), (tmp_path, str(docs)), (tmp_path, "./docs/"),
                          (tmp_path / "elsewhere", "../docs"), (docs, "."),
                          (tmp_path, "docs/a.md")]:
        monkeypatch.chdir(cwd)
        from hybridembed.cli import main

        assert main(["index", spelling, "--collection", "kb", "--chunk-tokens", "32",
                     "--overlap", "8", "--data-dir", data]) == 0
        counts.append(int(capsys.readouterr().out.split("holds ")[1].split()[0]))
    assert counts[0] > 5 and set(counts) == {counts[0]}, counts


def test_a_bad_file_is_reported_and_skipped_the_rest_is_indexed(tmp_path, capsys):
    docs = _corpus(tmp_path)
    (docs / "latin.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "nul.md").write_text("a NUL \x00 byte")
    (docs / "lines.jsonl").write_text('{"id": "ok", "text": "fine"}\nnot json\n'
                                      '{"id": "s", "text": "\\ud800"}\n{"text": 5}\n')
    status, out, err = run_here(capsys, tmp_path, "index", str(docs), "--collection", "kb")
    assert status == 1
    lines = err.strip().splitlines()
    assert any("latin.txt: not valid utf-8 at byte 3 (0xe9)" in x for x in lines)
    assert any("nul.md holds a NUL character" in x for x in lines)
    assert any("lines.jsonl:2: not JSON" in x for x in lines)
    assert any("lines.jsonl record 's' holds an unpaired surrogate" in x for x in lines)
    assert any("lines.jsonl:4: each line needs a string 'text'" in x for x in lines)
    assert lines[-1].startswith("hybridembed: 5 file(s) or record(s) skipped")
    status, out, _ = run_here(capsys, tmp_path, "search", "Cats", "--collection", "kb",
                              "--json")
    ids = {h["id"] for h in json.loads(out)}
    assert {"c1", "ok"} <= ids and not any("latin" in i or "nul" in i for i in ids)
    status, _, err = run_here(capsys, tmp_path, "index", str(docs / "latin.txt"),
                              "--collection", "kb", "--encoding", "latin-1")
    assert status == 0, err
    status, _, err = run_here(capsys, tmp_path, "index", str(docs), "--collection", "kb",
                              "--encoding", "klingon")
    assert status == 2 and "unknown encoding 'klingon'" in err and len(err.splitlines()) == 1


def test_a_failed_run_leaves_no_empty_collection(tmp_path, capsys):
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    status, out, err = run_here(capsys, tmp_path, "index", str(tmp_path / "bad.txt"),
                                "--collection", "kb")
    assert status == 1 and "was not created" in out
    status, _, err = run_here(capsys, tmp_path, "index", "missing-folder", "--collection",
                              "kb")
    assert status == 2 and err == "hybridembed: error: no such file or folder: " \
        "missing-folder\n"
    status, out, _ = run_here(capsys, tmp_path, "collections", "--json")
    assert json.loads(out) == []


def test_a_store_failure_is_one_line_and_a_new_collection_is_dropped(tmp_path, capsys,
                                                                    monkeypatch):
    from hybridembed.stores.qdrant_edge import QdrantEdgeBackend

    def broken(self, name, records):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(QdrantEdgeBackend, "write", broken)
    docs = _corpus(tmp_path)
    status, _, err = run_here(capsys, tmp_path, "index", str(docs), "--collection", "kb")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "No space left on device" in err and "0 chunks were written" in err
    monkeypatch.undo()
    status, out, _ = run_here(capsys, tmp_path, "collections", "--json")
    assert json.loads(out) == []


def test_ctrl_c_stops_after_a_whole_batch_with_one_line(tmp_path, capsys, monkeypatch):
    from hybridembed.stores import VectorStore

    upsert, calls = VectorStore.upsert, []

    def interrupted(self, name, docs, progress=None):
        calls.append(len(docs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return upsert(self, name, docs, progress)

    monkeypatch.setattr(VectorStore, "upsert", interrupted)
    docs = _corpus(tmp_path)
    status, _, err = run_here(capsys, tmp_path, "index", str(docs), "--collection", "kb",
                              "--batch", "4", "--chunk-tokens", "32", "--overlap", "8")
    assert status == 130
    assert err.strip().splitlines()[-1].startswith("hybridembed: interrupted; 4 chunks were "
                                                   "written to 'kb'")
    monkeypatch.undo()
    status, out, _ = run_here(capsys, tmp_path, "collections", "--json")
    assert json.loads(out)[0]["count"] == 4


def test_collections_list_and_drop(tmp_path, capsys):
    docs = _corpus(tmp_path)
    for name in ("kb", "other"):
        assert run_here(capsys, tmp_path, "index", str(docs / "c.jsonl"), "--collection",
                        name)[0] == 0
    status, out, _ = run_here(capsys, tmp_path, "collections", "list")
    assert status == 0 and out.startswith("kb ") and "other" in out
    status, out, _ = run_here(capsys, tmp_path, "collections", "drop", "kb")
    assert status == 0 and "dropped 'kb'" in out
    status, out, _ = run_here(capsys, tmp_path, "collections", "--json")
    assert [c["name"] for c in json.loads(out)] == ["other"]
    status, _, err = run_here(capsys, tmp_path, "collections", "drop", "kb")
    assert status == 2 and "'kb' does not exist" in err and len(err.splitlines()) == 1
    status, _, err = run_here(capsys, tmp_path, "collections", "drop")
    assert status == 2 and "needs the collection's name" in err


def test_read_only_commands_create_nothing_and_name_the_folder(tmp_path, capsys, monkeypatch):
    """A search from another folder answered "collection does not exist; existing: none"
    and left a ./.hybridembed behind."""
    monkeypatch.chdir(tmp_path)
    from hybridembed.cli import main

    nowhere = tmp_path / "no-such-data"
    assert main(["search", "q", "--collection", "kb", "--data-dir", str(nowhere)]) == 2
    assert f"does not exist in {nowhere}" in capsys.readouterr().err
    assert main(["collections", "--data-dir", str(nowhere)]) == 0
    assert f"no collections in the edge store in {nowhere}" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_the_default_data_dir_is_per_user_not_per_folder(tmp_path, capsys, monkeypatch):
    """index in one folder, search from another, no --data-dir: the same collections."""
    from hybridembed.cli import main

    docs = _corpus(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("HYBRIDEMBED_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert main(["index", "docs", "--collection", "kb"]) == 0
    assert (tmp_path / "xdg" / "hybridembed" / "collections" / "kb").is_dir()
    assert not (tmp_path / ".hybridembed").exists()
    monkeypatch.chdir(docs / "sub")
    capsys.readouterr()
    assert main(["search", "Cats are mammals", "--collection", "kb", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "c1"
