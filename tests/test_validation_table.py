"""One table of bad and edge inputs, sent through every way in — the Python API, each HTTP
protocol (native, OpenAI, Ollama, TEI) and the CLI — each checked against its documented
answer: the status, the protocol's error shape, the field named, and nothing half-done.

Each row of :data:`CASES` is one input *kind* (taken from public bug reports against our
peers) spelled in each entry point's terms; ``None`` where an entry point cannot express
it. README's "Wire rules" section documents the same answers."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from hybridembed import cli
from hybridembed.errors import (
    InputTooLongError,
    InvalidInputError,
    InvalidOptionError,
    NonFiniteOutputError,
)
from tests.models import POISONED_WORD
from tests.server.conftest import running_server

LONG = "a " * 255  # 257 tokens with [CLS]/[SEP]: one over MiniLM's 256
SURROGATE = "a\ud800b"  # legal JSON ("a\\ud800b"), not valid Unicode

# name -> entry point -> spelling of the input and its expected answer.
#   python: (texts, options, exception or None, what the message names)
#   HTTP:   (body, status, what the message names)  -- status 200 rows are edge cases
#   cli:    (argv, stdin bytes or None, exit code, what stderr names)
CASES: dict[str, dict] = {
    "unpaired surrogate": {
        "python": (["ok", SURROGATE], {}, InvalidInputError, "#1"),
        "native": ({"inputs": ["ok", SURROGATE]}, 400, "#1"),
        "openai": ({"model": "minilm", "input": ["ok", SURROGATE]}, 400, "#1"),
        "ollama": ({"model": "minilm", "input": ["ok", SURROGATE]}, 400, "#1"),
        "tei": ({"inputs": ["ok", SURROGATE]}, 422, "#1"),
        "cli": (["embed", "ok", "a\udcffb"], None, 2, "#1"),  # a non-UTF-8 argv byte
    },
    "non-UTF-8 stdin": {
        "cli": (["embed", "-"], b"fine\ncaf\xe9\n", 2, "byte 8"),
    },
    "JSON true as a number": {
        "python": (["x"], {"dimensions": True}, InvalidOptionError, "dimensions"),
        "native": ({"inputs": "x", "dimensions": True}, 400, "dimensions"),
        "openai": ({"model": "minilm", "input": "x", "dimensions": True}, 400, "dimensions"),
        "ollama": ({"model": "minilm", "input": "x", "dimensions": True}, 400, "dimensions"),
        "tei": ({"inputs": "x", "dimensions": True}, 422, "dimensions"),
    },
    "sparse pruning below one entry": {
        "python": (["x"], {"sparse": True, "max_active_dims": 0}, InvalidOptionError,
                   "max_active_dims"),
        "native": ({"inputs": "x", "sparse": True, "max_active_dims": 0}, 400,
                   "max_active_dims"),
        "tei": ({"inputs": "x", "max_active_dims": True}, 422, "max_active_dims"),
        "cli": (["embed", "--sparse", "--max-active-dims", "0", "x"], None, 2,
                "max_active_dims"),
    },
    "a string as a boolean": {
        "python": (["x"], {"normalize": "no"}, InvalidOptionError, "normalize"),
        "native": ({"inputs": "x", "normalize": "no"}, 400, "normalize"),
        "ollama": ({"model": "minilm", "input": "x", "truncate": "off"}, 400, "truncate"),
        "tei": ({"inputs": "x", "normalize": "yes"}, 422, "normalize"),
    },
    "a number as a boolean": {
        "python": (["x"], {"sparse": 0}, InvalidOptionError, "sparse"),
        "native": ({"inputs": "x", "sparse": 0}, 400, "sparse"),
        "ollama": ({"model": "minilm", "input": "x", "truncate": 0}, 400, "truncate"),
        "tei": ({"inputs": "x", "truncate": 1}, 422, "truncate"),
    },
    "a boolean as an input": {
        "python": ([True], {}, InvalidInputError, "#0"),
        "native": ({"inputs": [True]}, 400, "inputs"),
        "openai": ({"model": "minilm", "input": [True]}, 400, "input"),
        "ollama": ({"model": "minilm", "input": [True]}, 400, "input"),
        "tei": ({"inputs": [True]}, 422, "inputs"),
    },
    "an empty token list": {
        "openai": ({"model": "minilm", "input": [[]]}, 400, "input[0]"),
    },
    "[false] as token ids": {
        "openai": ({"model": "minilm", "input": [False]}, 400, "input"),
    },
    "a string as a number": {
        "python": (["x"], {"dimensions": "64"}, InvalidOptionError, "dimensions"),
        "native": ({"inputs": "x", "dimensions": "64"}, 400, "dimensions"),
        "openai": ({"model": "minilm", "input": "x", "dimensions": "64"}, 400, "dimensions"),
        "tei": ({"inputs": "x", "dimensions": "64"}, 422, "dimensions"),
    },
    "an enum value outside the list": {
        "python": (["x"], {"truncation_side": "middle"}, InvalidOptionError, "right, left"),
        "native": ({"inputs": "x", "truncation_side": "middle"}, 400, "truncation_side"),
        "openai": ({"model": "minilm", "input": "x", "encoding_format": "hex"}, 400,
                   "encoding_format"),
        "tei": ({"inputs": "x", "truncation_direction": "Middle"}, 422, "truncation_direction"),
    },
    "an unknown prompt name": {
        "python": (["x"], {"prompt_name": "nope"}, InvalidOptionError, "prompt_name"),
        "native": ({"inputs": "x", "prompt_name": "nope"}, 400, "prompt_name"),
        "tei": ({"inputs": "x", "prompt_name": "nope"}, 422, "prompt_name"),
    },
    "an over-long text with truncation off": {
        "python": ([LONG], {"truncate": False}, InputTooLongError, "#0 has 257 tokens"),
        "native": ({"inputs": LONG, "truncate": False}, 400, "257"),
        "ollama": ({"model": "minilm", "input": LONG, "truncate": False}, 400, "257"),
        "tei": ({"inputs": LONG, "truncate": False}, 413, "257"),
        "cli": (["embed", LONG, "--no-truncate"], None, 2, "257 tokens"),
    },
    "an unknown overflow policy": {
        "python": (["x"], {"overflow": "squeeze"}, InvalidOptionError, "error, truncate, chunk"),
        "native": ({"inputs": "x", "overflow": "squeeze"}, 400, "overflow"),
        "openai": ({"model": "minilm", "input": "x", "overflow": "squeeze"}, 400, "overflow"),
        "ollama": ({"model": "minilm", "input": "x", "overflow": "squeeze"}, 400, "overflow"),
        "tei": ({"inputs": "x", "overflow": "squeeze"}, 422, "overflow"),
        "cli": (["embed", "x", "--overflow", "squeeze"], None, 2, "error, truncate, chunk"),
    },
    "a boolean as the overflow policy": {
        "python": (["x"], {"overflow": True}, InvalidOptionError, "overflow"),
        "native": ({"inputs": "x", "overflow": True}, 400, "overflow"),
        "openai": ({"model": "minilm", "input": "x", "overflow": True}, 400, "overflow"),
        "ollama": ({"model": "minilm", "input": "x", "overflow": True}, 400, "overflow"),
        "tei": ({"inputs": "x", "overflow": True}, 422, "overflow"),
    },
    "an unknown chunk pooling": {
        "python": (["x"], {"chunk_pooling": "median"}, InvalidOptionError, "mean, max"),
        "native": ({"inputs": "x", "chunk_pooling": "median"}, 400, "chunk_pooling"),
        "openai": ({"model": "minilm", "input": "x", "chunk_pooling": "median"}, 400,
                   "chunk_pooling"),
        "ollama": ({"model": "minilm", "input": "x", "chunk_pooling": "median"}, 400,
                   "chunk_pooling"),
        "tei": ({"inputs": "x", "chunk_pooling": "median"}, 422, "chunk_pooling"),
        "cli": (["embed", "x", "--chunk-pooling", "median"], None, 2, "mean, max"),
    },
    "a chunk overlap beyond half the limit": {
        "python": (["x"], {"chunk_overlap": 200}, InvalidOptionError, "0 to 128"),
        "native": ({"inputs": "x", "chunk_overlap": 200}, 400, "0 to 128"),
        "openai": ({"model": "minilm", "input": "x", "chunk_overlap": -1}, 400, "0 to 128"),
        "ollama": ({"model": "minilm", "input": "x", "chunk_overlap": 200}, 400, "0 to 128"),
        "tei": ({"inputs": "x", "chunk_overlap": 200}, 422, "0 to 128"),
        "cli": (["embed", "x", "--chunk-overlap", "200"], None, 2, "0 to 128"),
    },
    "a string as the chunk overlap": {
        "python": (["x"], {"chunk_overlap": "8"}, InvalidOptionError, "chunk_overlap"),
        "native": ({"inputs": "x", "chunk_overlap": "8"}, 400, "chunk_overlap"),
        "openai": ({"model": "minilm", "input": "x", "chunk_overlap": True}, 400,
                   "chunk_overlap"),
        "tei": ({"inputs": "x", "chunk_overlap": "8"}, 422, "chunk_overlap"),
    },
    "truncation off with overflow chunk": {
        "python": ([LONG], {"truncate": False, "overflow": "chunk"}, InvalidOptionError,
                   "contradicts"),
        "native": ({"inputs": LONG, "truncate": False, "overflow": "chunk"}, 400, "contradicts"),
        "ollama": ({"model": "minilm", "input": LONG, "truncate": False, "overflow": "chunk"},
                   400, "contradicts"),
        "tei": ({"inputs": LONG, "truncate": False, "overflow": "chunk"}, 422, "contradicts"),
        "cli": (["embed", LONG, "--no-truncate", "--overflow", "chunk"], None, 2, "contradicts"),
    },
    "an over-long text with overflow error": {
        "python": ([LONG], {"overflow": "error"}, InputTooLongError, "#0 has 257 tokens"),
        "native": ({"inputs": LONG, "overflow": "error"}, 400, "257"),
        "openai": ({"model": "minilm", "input": LONG, "overflow": "error"}, 400, "257"),
        "ollama": ({"model": "minilm", "input": LONG, "overflow": "error"}, 400, "257"),
        "tei": ({"inputs": LONG, "overflow": "error"}, 413, "257"),
        "cli": (["embed", LONG, "--overflow", "error"], None, 2, "257 tokens"),
    },
    # Edge inputs that must succeed, each as its peer answers it.
    "an empty string": {
        "python": ([""], {}, None, 1),
        "native": ({"inputs": [""]}, 200, 1),
        "openai": ({"model": "minilm", "input": ""}, 400, "empty"),
        "ollama": ({"model": "minilm", "input": [""]}, 200, 1),  # one vector, as Ollama
        "tei": ({"inputs": ""}, 413, "empty"),
    },
    "an empty string in a list": {
        "openai": ({"model": "minilm", "input": ["a", ""]}, 400, "input[1]"),
        "tei": ({"inputs": ["a", ""]}, 413, "input 1"),
    },
    "no input at all": {
        "python": ([], {}, None, 0),
        "native": ({"inputs": []}, 400, "empty"),
        "openai": ({"model": "minilm", "input": []}, 400, "empty"),
        "ollama": ({"model": "minilm", "input": []}, 200, 0),  # a preload: no embeddings
        "tei": ({"inputs": []}, 400, "empty"),
    },
    "an empty Ollama input string": {
        "ollama": ({"model": "minilm", "input": ""}, 200, 0),
    },
}

ROUTES = {"native": "/v1/embed", "openai": "/v1/embeddings", "ollama": "/api/embed",
          "tei": "/embed"}


def _rows(entry: str):
    return [pytest.param(name, case[entry], id=name) for name, case in CASES.items()
            if entry in case]


def _vectors(entry: str, body) -> int:
    """How many vectors a successful answer holds, in each protocol's shape."""
    return {"native": lambda b: len(b["data"]), "openai": lambda b: len(b["data"]),
            "ollama": lambda b: len(b["embeddings"]), "tei": len}[entry](body)


def _error_message(entry: str, body) -> str:
    """The message of an error answer, after checking the protocol's error shape."""
    if entry in ("native", "openai"):
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return body["error"]["message"] + f" param={body['error']['param']}"
    if entry == "ollama":
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return body["error"]
    assert set(body) == {"error", "error_type"}, body
    return body["error"]


@pytest.fixture(scope="module")
def url(minilm):
    with running_server(minilm) as u:
        yield u


@pytest.mark.parametrize("name, row", _rows("python"))
def test_python_api(minilm, name, row):
    texts, options, error, named = row
    if error is None:
        assert len(minilm.embed(texts, **options)) == named
        return
    with pytest.raises(error) as info:
        minilm.embed(texts, **options)
    assert named in str(info.value)


@pytest.mark.parametrize("entry", list(ROUTES))
def test_http(url, entry):
    """Every row of the table for one protocol, against one real server."""
    rows = [(name, case[entry]) for name, case in CASES.items() if entry in case]
    assert rows
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, (body, status, named) in rows:
            r = client.post(ROUTES[entry], content=json.dumps(body).encode(),
                            headers={"content-type": "application/json"})
            assert r.status_code == status, (name, r.text[:300])
            if status == 200:
                assert _vectors(entry, r.json()) == named, name
            else:
                message = _error_message(entry, r.json())
                assert named in message, (name, message)


@pytest.mark.parametrize("name, row", _rows("cli"))
def test_cli(monkeypatch, capsys, name, row):
    argv, stdin, code, named = row
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    assert cli.main([*argv, "--device", "cpu"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hybridembed: error:") and named in err, err


def test_search_k_true_is_refused_not_one_hit(url):
    with httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/v1/collections/anything/search", json={"query": "x", "k": True})
        assert r.status_code == 400 and "k" in r.json()["error"]["message"]


# -- the truncate option is part of the cache key ------------------------------------------
def test_truncate_is_part_of_the_cache_key(minilm, url):
    text = LONG + " cache"
    assert minilm.embed([text]).usage.tokens == [256]
    with pytest.raises(InputTooLongError):
        minilm.embed([text], truncate=False)
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/embed", json={"inputs": text + " http"}).status_code == 200
        r = client.post("/v1/embed", json={"inputs": text + " http", "truncate": False})
        assert r.status_code == 400


# -- the request decides the truncation side, not the folder -------------------------------
@pytest.fixture(scope="module")
def left_folder_model(minilm, tmp_path_factory):
    """MiniLM copied into a folder whose tokenizer_config says truncation_side=left and
    whose sentence-transformers config names two prompts."""
    from hybridembed import Embedder

    folder = tmp_path_factory.mktemp("minilm-left") / "model"
    shutil.copytree(minilm.spec.path, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "truncation_side": "left"}))
    st = folder / "config_sentence_transformers.json"
    st.write_text(json.dumps({**json.loads(st.read_text()),
                              "prompts": {"classification": "classify: ", "clustering": ""}}))
    return Embedder(str(folder), device="cpu")


def test_truncation_side_is_the_requests(left_folder_model, minilm):
    text = "alpha " * 300 + "omega"
    right = left_folder_model.tokenize([text])[0]
    left = left_folder_model.tokenize([text], truncation_side="left")[0]
    tok = left_folder_model.tokenizer
    assert tok.id_to_token(right[1]) == "alpha" and tok.id_to_token(right[-2]) == "alpha"
    assert tok.id_to_token(left[-2]) == "omega" and len(left) == len(right) == 256
    with running_server(left_folder_model) as u, httpx.Client(base_url=u, timeout=60) as c:
        keep_start = c.post("/embed", json={"inputs": text, "truncation_direction": "Right"})
        keep_end = c.post("/embed", json={"inputs": text, "truncation_direction": "Left"})
        native_end = c.post("/v1/embed", json={"inputs": text, "truncation_side": "left"})
        classified = c.post("/embed", json={"inputs": "hello", "prompt_name": "classification"})
        clustered = c.post("/embed", json={"inputs": "hello", "prompt_name": "clustering"})
    expected_start = minilm.embed(["alpha " * 254]).dense[0]
    np.testing.assert_allclose(keep_start.json()[0], expected_start, atol=1e-5)
    expected_end = minilm.embed(["alpha " * 253 + "omega"]).dense[0]
    np.testing.assert_allclose(keep_end.json()[0], expected_end, atol=1e-5)
    np.testing.assert_allclose(native_end.json()["data"][0]["dense"], expected_end, atol=1e-5)
    # any key of the model's prompts is a valid TEI prompt_name, and its prefix is used
    np.testing.assert_allclose(classified.json()[0], minilm.embed(["classify: hello"]).dense[0],
                               atol=1e-5)
    np.testing.assert_allclose(clustered.json()[0], minilm.embed(["hello"]).dense[0], atol=1e-5)


# -- non-finite outputs: never returned, never served, a 5xx in the protocol's shape -------
def test_nonfinite_output_raises_with_the_others_results(nan_model):
    texts = ["search river", f"{POISONED_WORD} index", "dense"]
    for outputs in ({"dense": True}, {"dense": False, "sparse": True},
                    {"dense": False, "multivector": True}):
        with pytest.raises(NonFiniteOutputError) as info:
            nan_model.embed(texts, **outputs)
        assert info.value.indices == [1] and info.value.partial_indices == [0, 2]
        assert len(info.value.partial) == 2
    good = nan_model.embed([texts[0], texts[2]], sparse=True, multivector=True)
    np.testing.assert_allclose(info.value.partial.multivector[1], good.multivector[1], atol=1e-5)


@pytest.mark.parametrize("entry, body", [
    ("native", {"inputs": ["ok", f"{POISONED_WORD} x"]}),
    ("native", {"inputs": [f"{POISONED_WORD} x"], "dense": False, "sparse": True}),
    ("openai", {"model": "tiny", "input": ["ok", f"{POISONED_WORD} x"]}),
    ("openai", {"model": "tiny", "input": [f"{POISONED_WORD} x"], "encoding_format": "base64"}),
    ("ollama", {"model": "tiny", "input": f"{POISONED_WORD} x"}),
    ("tei", {"inputs": f"{POISONED_WORD} x"}),
])
def test_nonfinite_output_is_a_5xx_in_the_protocols_shape(nan_server, entry, body):
    r = httpx.post(nan_server + ROUTES[entry], json=body, timeout=60)
    assert r.status_code == 500, r.text
    assert "non-finite" in _error_message(entry, r.json())


@pytest.fixture(scope="module")
def nan_server(nan_model):
    with running_server(nan_model, served_model_name="tiny") as u:
        yield u


def test_a_poisoned_text_fails_only_its_own_request_in_a_merged_batch(nan_server):
    import asyncio

    async def main():
        async with httpx.AsyncClient(base_url=nan_server, timeout=60) as client:
            bodies = [{"inputs": [f"text {i}"]} for i in range(12)]
            bodies[5] = {"inputs": ["fine", f"{POISONED_WORD} here"]}
            return await asyncio.gather(*(client.post("/v1/embed", json=b) for b in bodies))

    answers = asyncio.run(main())
    assert [r.status_code for r in answers] == [500 if i == 5 else 200 for i in range(12)]
    assert "#1" in answers[5].json()["error"]["message"]


def test_cli_encoding_option_reads_other_encodings(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("café\n".encode("latin-1"))))
    assert cli.main(["embed", "-", "--encoding", "latin-1", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["data"][0]["text"] == "café"


def test_one_definition_of_the_embed_options():
    """Grepping the package finds the options defined once (types.EmbedOptions) and built
    once (service.request.build_request)."""
    package = Path(cli.__file__).parent
    defined = [p for p in package.rglob("*.py") if "class EmbedOptions" in p.read_text()]
    built = [p for p in package.rglob("*.py") if "EmbedOptions(" in p.read_text()
             and "class EmbedOptions" not in p.read_text()]
    assert [p.name for p in defined] == ["types.py"]
    assert [p.relative_to(package).as_posix() for p in built] == ["service/request.py"]


def test_max_active_dims_keeps_the_heaviest_entries_everywhere(minilm, url, capsys):
    """Per-request sparse pruning: the Python API, the native and TEI routes and the CLI
    keep each sparse vector's k heaviest entries — the same ones."""
    texts = ["sparse vectors keep their heaviest lexical weights only", "one two"]
    full = minilm.embed(texts, dense=False, sparse=True).sparse
    got = minilm.embed(texts, dense=False, sparse=True, max_active_dims=3).sparse
    for whole, cut in zip(full, got, strict=True):
        assert len(cut) == min(3, len(whole))
        assert set(cut.to_dict().values()) <= set(whole.to_dict().values())
        assert min(cut.values) >= np.sort(whole.values)[-len(cut)]
    with httpx.Client(base_url=url, timeout=60) as client:
        native = client.post("/v1/embed", json={"inputs": texts, "dense": False,
                                                "sparse": True, "max_active_dims": 3}).json()
        tei = client.post("/embed_sparse", json={"inputs": texts, "max_active_dims": 3}).json()
    for i, cut in enumerate(got):
        assert native["data"][i]["sparse"]["indices"] == cut.indices.tolist()
        assert [e["index"] for e in tei[i]] == cut.indices.tolist()
    assert cli.main(["embed", "--sparse", "--no-dense", "--max-active-dims", "3", "--json",
                     "--device", "cpu", *texts]) == 0
    rows = json.loads(capsys.readouterr().out)["data"]
    assert [len(r["sparse"]["indices"]) for r in rows] == [len(v) for v in got]
