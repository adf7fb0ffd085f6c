"""Model resolution and ModelSpec reading."""

import json
import shutil

import pytest

from hybridembed import ModelNotFoundError, UnsupportedModelError, registry
from hybridembed.errors import NetworkUnavailableError


def test_minilm_alias_reads_sentence_transformers_files():
    spec = registry.resolve("minilm")
    assert (spec.dim, spec.pooling, spec.max_length, spec.normalize) == (384, "mean", 256, True)
    assert spec.sparse_kind == "bm25" and spec.hf_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_bge_m3_layout(tiny_m3_dir):
    spec = registry.resolve(str(tiny_m3_dir))
    assert spec.pooling == "cls" and spec.has_learned_sparse and spec.colbert_head
    assert spec.max_length == 128 and spec.multivector_dim == 32 and spec.vocab_size == 300


def test_bge_m3_layout_without_sentence_transformers_files(tiny_m3_dir, tmp_path):
    folder = tmp_path / "m3"
    shutil.copytree(tiny_m3_dir, folder)
    for name in ("modules.json", "sentence_bert_config.json"):
        (folder / name).unlink()
    shutil.rmtree(folder / "1_Pooling")
    spec = registry.resolve(str(folder))
    assert spec.pooling == "cls" and spec.max_length == 128  # XLM-R positions minus padding


def test_unknown_model_says_where_it_looked():
    with pytest.raises(ModelNotFoundError) as err:
        registry.resolve("acme/not-a-model")
    message = str(err.value)
    assert "local folder" in message and "Hugging Face cache" in message
    assert "hybridembed pull" in message and "minilm" in message


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        registry.resolve(str(tmp_path))


def test_unsupported_module_is_named(tiny_m3_dir, tmp_path):
    folder = tmp_path / "dense-head"
    shutil.copytree(tiny_m3_dir, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense",
                    "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="'Dense' module"):
        registry.resolve(str(folder))


def test_pull_without_network_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkUnavailableError, match="HF_HUB_OFFLINE"):
        registry.pull("bge-m3")
    assert registry.pull("minilm").is_dir()  # ships inside a package: nothing to download


def test_available_lists_aliases():
    rows = {row["name"]: row for row in registry.available()}
    assert rows["minilm"]["dim"] == 384
    assert "error" in rows["bge-m3"] or rows["bge-m3"]["sparse"] == "learned"
