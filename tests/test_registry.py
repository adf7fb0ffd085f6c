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
    folder = tmp_path / "lstm"
    shutil.copytree(tiny_m3_dir, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_LSTM",
                    "type": "sentence_transformers.models.LSTM"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="'LSTM' module.*Dense, Normalize"):
        registry.resolve(str(folder))


def _edited(family_dir, tmp_path, name, edit):
    """A copy of the ``name`` fixture with ``edit(folder)`` applied."""
    folder = tmp_path / f"{name}-edited"
    shutil.copytree(family_dir(name), folder)
    edit(folder)
    return folder


def _write(path, value):
    path.write_text(json.dumps(value))


def test_current_sentence_transformers_pooling_form_loads(family_dir):
    """sentence-transformers 6 writes ``"pooling_mode": "cls"``: once refused with
    "asks for pooling []"."""
    folder = family_dir("dense")
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "cls"
    spec = registry.resolve(str(folder))
    assert (spec.family, spec.pooling, spec.dim, spec.hidden_size) == \
        ("sentence-transformers", "cls", 16, 32)


@pytest.mark.parametrize("pooling, message", [
    ({"pooling_mode": "max"}, r"pooling \['max'\]"),
    ({"pooling_mode": ["cls", "mean"]}, r"pooling \['cls', 'mean'\]"),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}, r"\['cls', 'mean'\]"),
    ({"pooling_mode_weightedmean_tokens": True}, "weightedmean"),
    ({"pooling_mode": "mean", "include_prompt": False}, "include_prompt"),
])
def test_pooling_hybridembed_cannot_run_is_refused_by_name(family_dir, tmp_path, pooling, message):
    folder = _edited(family_dir, tmp_path, "dense",
                     lambda f: _write(f / "1_Pooling" / "config.json", pooling))
    with pytest.raises(UnsupportedModelError, match=message):
        registry.resolve(str(folder))


def test_legacy_pooling_without_flags_means_mean(family_dir, tmp_path):
    folder = _edited(family_dir, tmp_path, "dense",
                     lambda f: _write(f / "1_Pooling" / "config.json",
                                      {"word_embedding_dimension": 32}))
    assert registry.resolve(str(folder)).pooling == "mean"


@pytest.mark.parametrize("change, message", [
    ({"activation_function": "mypackage.Swoosh"}, "activation 'mypackage.Swoosh'"),
    ({"activation_function": "torch.nn.modules.linear.Bilinear"}, "Bilinear"),
    ({"use_residual": True}, "residual"),
    ({"in_features": 31}, "takes 31 features but gets 32"),
])
def test_dense_modules_hybridembed_cannot_run_are_refused(family_dir, tmp_path, change, message):
    def edit(folder):
        cfg = json.loads((folder / "2_Dense" / "config.json").read_text())
        _write(folder / "2_Dense" / "config.json", {**cfg, **change})

    with pytest.raises(UnsupportedModelError, match=message):
        registry.resolve(str(_edited(family_dir, tmp_path, "dense", edit)))


def test_families_read_from_the_checkpoint_files(family_dir):
    families = {name: registry.resolve(str(family_dir(name))) for name in
                ("splade", "inference-free-splade", "colbert", "qwen3", "modernbert", "mpnet")}
    assert {n: s.family for n, s in families.items()} == {
        "splade": "splade", "inference-free-splade": "inference-free-splade",
        "colbert": "colbert", "qwen3": "decoder", "modernbert": "sentence-transformers",
        "mpnet": "sentence-transformers"}
    splade = families["splade"]
    assert splade.sparse_kind == "learned" and splade.vocab_size == 30522
    colbert = families["colbert"].late_interaction
    assert (colbert.expansion_length, colbert.expansion_attend, families["colbert"].max_length,
            families["colbert"].multivector_dim) == (12, False, 48, 8)
    assert "!" in colbert.skiplist and families["colbert"].prompts["query"] == "[unused0] "
    assert families["qwen3"].prompts["query"].startswith("Instruct:")
    for spec in families.values():
        assert set(spec.outputs()) == {"dense", "sparse", "multivector", "query"}


def test_bare_masked_lm_checkpoint_is_read_as_splade():
    from tests.models import splade_checkpoint

    spec = registry.resolve(str(splade_checkpoint()))
    assert spec.family == "splade" and spec.splade.pooling == "max"


def test_stanford_colbert_and_other_routers_are_refused(family_dir, tmp_path):
    def stanford(folder):
        cfg = json.loads((folder / "config.json").read_text())
        _write(folder / "config.json", {**cfg, "architectures": ["HF_ColBERT"]})

    with pytest.raises(UnsupportedModelError, match="Stanford-NLP ColBERT"):
        registry.resolve(str(_edited(family_dir, tmp_path, "colbert", stanford)))

    def other_routes(folder):
        cfg = json.loads((folder / "router_config.json").read_text())
        cfg["structure"] = {"text": cfg["structure"]["document"]}
        _write(folder / "router_config.json", cfg)

    with pytest.raises(UnsupportedModelError, match="query/document routers"):
        registry.resolve(str(_edited(family_dir, tmp_path, "inference-free-splade", other_routes)))


def test_pylate_v3_layout_reads_its_flat_settings(family_dir, tmp_path):
    """PyLate <= 3: [Transformer, Dense] only, markers and query length at the top level."""
    def pylate(folder):
        modules = json.loads((folder / "modules.json").read_text())[:2]
        modules[1]["type"] = "pylate.models.Dense.Dense"
        _write(folder / "modules.json", modules)
        dense = json.loads((folder / "1_Dense" / "config.json").read_text())
        dense.pop("module_input_name"), dense.pop("module_output_name")
        _write(folder / "1_Dense" / "config.json", dense)
        _write(folder / "config_sentence_transformers.json", {
            "model_type": "ColBERT", "query_prefix": "[Q] ", "document_prefix": "[D] ",
            "query_length": 24, "attend_to_expansion_tokens": True, "prompts": {}})
        shutil.rmtree(folder / "2_MultiVectorMask"), shutil.rmtree(folder / "3_Normalize")
        _write(folder / "sentence_bert_config.json", {"max_seq_length": 48})

    spec = registry.resolve(str(_edited(family_dir, tmp_path, "colbert", pylate)))
    late = spec.late_interaction
    assert spec.family == "colbert" and spec.multivector_dim == 8
    assert (late.expansion_length, late.expansion_attend, late.normalize) == (24, True, True)
    assert "." in late.skiplist and spec.prompts == {"query": "[Q] ", "document": "[D] "}


def test_pull_without_network_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkUnavailableError, match="HF_HUB_OFFLINE"):
        registry.pull("bge-m3")
    assert registry.pull("minilm").is_dir()  # ships inside a package: nothing to download


def test_available_lists_aliases():
    rows = {row["name"]: row for row in registry.available()}
    assert rows["minilm"]["dim"] == 384
    assert "error" in rows["bge-m3"] or rows["bge-m3"]["sparse"] == "learned"
