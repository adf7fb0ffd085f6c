"""The HTTP edge: one FastAPI app speaking native, OpenAI, Ollama and TEI protocols over
one dynamic batcher and cache."""

from .app import create_app

__all__ = ["create_app"]
