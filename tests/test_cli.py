"""The command line, run as a user runs it (a subprocess) where output matters."""

import json
import os
import subprocess
import sys

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "hybridembed", *args], capture_output=True,
                          text=True, env=ENV, input=stdin, timeout=300)


def test_embed_shows_dims_and_sparse_tokens():
    out = run("embed", "Hybrid search keeps dense and sparse vectors", "--sparse",
              "--multivector", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "dense       384-d" in out.stdout and "sparse" in out.stdout
    assert "hybrid:" in out.stdout and "multivector 8 x 384" in out.stdout


def test_embed_json_from_stdin():
    out = run("embed", "-", "--json", "--sparse", stdin="first line\nsecond line\n")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [row["text"] for row in data["data"]] == ["first line", "second line"]
    assert len(data["data"][0]["dense"]) == 384 and "line" in data["data"][0]["sparse_tokens"]


def test_errors_are_one_line_and_exit_2():
    out = run("embed", "x", "--model", "nope/nothing")
    assert out.returncode == 2 and out.stderr.startswith("hybridembed: error: model")
    out = run("pull", "bge-m3")
    assert out.returncode == 2 and "HF_HUB_OFFLINE" in out.stderr
    out = run("bench", "--outputs", "dense,colour")
    assert out.returncode == 2 and "dense, sparse, multivector" in out.stderr


def test_models_lists_minilm():
    out = run("models", "--json")
    assert out.returncode == 0
    assert any(row["name"] == "minilm" and row["dim"] == 384 for row in json.loads(out.stdout))


def test_models_shows_how_each_output_of_a_family_is_computed(family_dir):
    out = run("models", str(family_dir("colbert")), str(family_dir("splade")), "--json")
    assert out.returncode == 0, out.stderr
    colbert, splade = json.loads(out.stdout)
    assert colbert["family"] == "colbert" and "Dense 32->8" in colbert["outputs"]["multivector"]
    assert "expansion token to 12 tokens" in colbert["outputs"]["query"]
    assert splade["family"] == "splade" and "SPLADE" in splade["outputs"]["sparse"]
    out = run("embed", "Hello, sparse world.", "--sparse", "--multivector", "--device", "cpu",
              "--model", str(family_dir("splade")))
    assert out.returncode == 0, out.stderr
    assert "sparse learned" in out.stdout and "world:" in out.stdout


def test_serve_runs_on_uvicorns_c_parser_and_libuv_loop(monkeypatch):
    """What `hybridembed serve` hands uvicorn resolves, with the package's dependencies
    installed, to httptools and uvloop: h11 on asyncio's loop, uvicorn's fallback, costs
    every request ~0.25 ms more (docs/BENCHMARKS.md, issue 18)."""
    import asyncio

    import uvicorn
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from hybridembed import cli

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["serve", "--model", "minilm", "--port", "8999"]) == 0
    config = uvicorn.Config(**served)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    loop = config.get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop) and isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
