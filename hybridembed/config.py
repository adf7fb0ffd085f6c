"""Settings parsed at the edges (environment ``HYBRIDEMBED_*``, CLI flags) into one
object and passed down explicitly. Nothing here holds a model."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import InvalidOptionError

ENV_PREFIX = "HYBRIDEMBED_"


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
    data_dir: Path = Path(".hybridembed")

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
    if issubclass(kind, Path):
        return Path(raw).expanduser()
    return raw


ENV_DOC: dict[str, str] = {
    "HYBRIDEMBED_MODEL": "model alias, folder or Hugging Face id (default minilm)",
    "HYBRIDEMBED_DEVICE": "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps",
    "HYBRIDEMBED_DTYPE": "auto (bf16/fp16 on GPU, fp32 on CPU), fp32, fp16, bf16",
    "HYBRIDEMBED_RUNTIME": "compute runtime: torch",
    "HYBRIDEMBED_MAX_BATCH_TOKENS": "padded tokens per forward pass (0 = by device)",
    "HYBRIDEMBED_MAX_BATCH_SIZE": "texts per forward pass cap (0 = none)",
    "HYBRIDEMBED_CACHE_SIZE": "entries in the result cache (0 disables it)",
    "HYBRIDEMBED_THREADS": "CPU threads for torch (0 = all cores)",
    "HYBRIDEMBED_DATA_DIR": "where hybridembed keeps its data (default ./.hybridembed)",
}
