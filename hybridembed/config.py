"""Settings parsed at the edges (environment ``HYBRIDEMBED_*``, CLI flags) into one
object and passed down explicitly. Nothing here holds a model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import InvalidOptionError

ENV_PREFIX = "HYBRIDEMBED_"


def default_data_dir() -> Path:
    """Where hybridembed keeps its data unless told (``HYBRIDEMBED_DATA_DIR``,
    ``--data-dir``): one folder per user, ``$XDG_DATA_HOME/hybridembed`` or
    ``~/.local/share/hybridembed`` — never a folder that depends on the working directory,
    so ``index`` and ``search`` run from different folders see the same collections."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "hybridembed"


@dataclass(frozen=True)
class Settings:
    """Every setting, its default, and (in ``ENV_DOC``) what it means."""

    model: str = "minilm"
    device: str = "auto"
    dtype: str = "auto"
    runtime: str = "torch"
    max_batch_tokens: int = 0  # 0: pick by device
    max_batch_size: int = 0  # 0: no cap beyond the token budget
    cache_size: int = 10_000
    threads: int = 0  # 0: torch's default (all cores)
    data_dir: Path = field(default_factory=default_data_dir)
    store: str = "edge"  # edge | qdrant | pgvector
    store_url: str = ""  # Qdrant URL or PostgreSQL DSN
    # server
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str = ""
    max_queued_requests: int = 4096  # texts waiting; a request of k inputs counts k
    max_queued_tokens: int = 0  # 0: no token cap on the queue
    max_batch_requests: int = 0  # 0: no cap on requests merged into one batch
    max_inputs: int = 0  # inputs per request; 0: each protocol's own (OpenAI 2048, else none)
    max_body_bytes: int = 64 * 1024 * 1024
    request_timeout: float = 60.0
    served_model_name: str = ""  # extra name clients may use for the model
    token_ids: str = "cl100k"  # how OpenAI token-id inputs are read: cl100k | model | refuse
    cors_allow_origin: str = ""  # comma-separated origins (or *) allowed by CORS; "" = off

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> Settings:
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, type(getattr(cls(), f.name)))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def store_options(self) -> dict:
        return {"kind": self.store, "url": self.store_url or None, "data_dir": self.data_dir}

    def embedder_options(self) -> dict:
        return {"model": self.model, "device": self.device, "dtype": self.dtype,
                "runtime": self.runtime, "max_batch_tokens": self.max_batch_tokens or None,
                "max_batch_size": self.max_batch_size or None, "cache_size": self.cache_size,
                "threads": self.threads or None}


def _convert(name: str, raw: str, kind: type):
    if kind is int:
        try:
            value = int(raw)
        except ValueError:
            raise InvalidOptionError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a whole number",
                                     name) from None
        if value < 0:
            raise InvalidOptionError(f"{ENV_PREFIX}{name.upper()} must be >= 0, got {value}", name)
        return value
    if kind is float:
        try:
            value = float(raw)
        except ValueError:
            raise InvalidOptionError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number",
                                     name) from None
        if value <= 0:
            raise InvalidOptionError(f"{ENV_PREFIX}{name.upper()} must be > 0, got {value}", name)
        return value
    if issubclass(kind, Path):
        return Path(raw).expanduser()
    return raw


ENV_DOC: dict[str, str] = {
    "HYBRIDEMBED_MODEL": "model alias, folder or Hugging Face id (default minilm)",
    "HYBRIDEMBED_DEVICE": "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps",
    "HYBRIDEMBED_DTYPE": "auto (bf16/fp16 on GPU, fp32 on CPU), fp32, fp16, bf16; int8 with onnx",
    "HYBRIDEMBED_RUNTIME": "compute runtime: torch, or onnx (exported once, cached by hash)",
    "HYBRIDEMBED_MAX_BATCH_TOKENS": "padded tokens per forward pass (0 = by device)",
    "HYBRIDEMBED_MAX_BATCH_SIZE": "texts per forward pass cap (0 = none)",
    "HYBRIDEMBED_CACHE_SIZE": "entries in the result cache (0 disables it)",
    "HYBRIDEMBED_THREADS": "CPU threads for torch (0 = all cores)",
    "HYBRIDEMBED_DATA_DIR": "where hybridembed keeps its data (default "
                            "$XDG_DATA_HOME/hybridembed, i.e. ~/.local/share/hybridembed)",
    "HYBRIDEMBED_STORE": "vector store: edge (embedded Qdrant Edge, default), qdrant, pgvector",
    "HYBRIDEMBED_STORE_URL": "Qdrant server URL or PostgreSQL DSN for the store",
    "HYBRIDEMBED_HOST": "server bind address (default 127.0.0.1)",
    "HYBRIDEMBED_PORT": "server port (default 8080)",
    "HYBRIDEMBED_API_KEY": "if set, every route but /health needs 'Authorization: Bearer KEY'",
    "HYBRIDEMBED_MAX_QUEUED_REQUESTS": "texts allowed to wait (a list of k counts k; default 4096)",
    "HYBRIDEMBED_MAX_QUEUED_TOKENS": "tokens allowed to wait (0 = no cap)",
    "HYBRIDEMBED_MAX_BATCH_REQUESTS": "requests merged into one batch at most (0 = no cap)",
    "HYBRIDEMBED_MAX_INPUTS": "inputs per request (0 = per protocol: OpenAI 2048 as OpenAI, "
                              "Ollama/TEI/native no cap)",
    "HYBRIDEMBED_MAX_BODY_BYTES": "request body size limit (default 64 MiB: 20,000 chunks of "
                                  "~250 tokens fit)",
    "HYBRIDEMBED_REQUEST_TIMEOUT": "seconds a request may wait without progress before 503 "
                                   "(default 60)",
    "HYBRIDEMBED_SERVED_MODEL_NAME": "another model name clients may send (e.g. nomic-embed-text)",
    "HYBRIDEMBED_TOKEN_IDS": "OpenAI token-id inputs read as cl100k (default: what OpenAI's "
                             "clients and langchain-openai send), model (the served model's "
                             "own ids, as sent) or refuse",
    "HYBRIDEMBED_CORS_ALLOW_ORIGIN": "origins browsers may call from (comma-separated, or *); "
                                     "empty = CORS off (default)",
}
