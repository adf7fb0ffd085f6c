"""Client backends: one ``embed()`` whichever way the embeddings are made — in process
(``local``), by a hybridembed server (``remote``), by Ollama (``ollama``) or by an
OpenAI-compatible server (``openai``). Chosen by configuration with :func:`get_embedder`.
"""

from __future__ import annotations

import os

from ..errors import InvalidOptionError
from .http import OllamaBackend, OpenAIBackend, RemoteBackend

BACKENDS: tuple[str, ...] = ("local", "remote", "ollama", "openai")
DEFAULT_URLS = {"remote": "http://127.0.0.1:8080", "ollama": "http://127.0.0.1:11434",
                "openai": "https://api.openai.com/v1"}


def get_embedder(backend: str | None = None, *, url: str | None = None,
                 model: str | None = None, api_key: str | None = None, **options):
    """An embedder for ``backend`` (default ``$HYBRIDEMBED_BACKEND`` or ``local``).

    ``url``, ``model`` and ``api_key`` default to ``$HYBRIDEMBED_URL``,
    ``$HYBRIDEMBED_MODEL`` and ``$HYBRIDEMBED_API_KEY``; other options go to the local
    :class:`~hybridembed.Embedder`.
    """
    env = os.environ
    backend = backend or env.get("HYBRIDEMBED_BACKEND") or "local"
    model = model or env.get("HYBRIDEMBED_MODEL") or None
    if backend == "local":
        from ..service import Embedder

        return Embedder(model or "minilm", **options)
    if backend not in BACKENDS:
        raise InvalidOptionError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}",
                                 "backend")
    url = url or env.get("HYBRIDEMBED_URL") or DEFAULT_URLS[backend]
    api_key = api_key or env.get("HYBRIDEMBED_API_KEY") or None
    cls = {"remote": RemoteBackend, "ollama": OllamaBackend, "openai": OpenAIBackend}[backend]
    return cls(url, model=model, api_key=api_key, **options)


__all__ = ["BACKENDS", "OllamaBackend", "OpenAIBackend", "RemoteBackend", "get_embedder"]
