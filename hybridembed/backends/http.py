"""HTTP client backends with the same ``embed()`` as :class:`~hybridembed.Embedder`.
A backend that cannot return sparse or multi-vector outputs says so with
:class:`UnsupportedOutputError` rather than returning something else."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import httpx
import numpy as np

from ..errors import HybridEmbedError, UnsupportedOutputError
from ..sparse import SparseVector
from ..textcheck import check_texts
from ..types import Embedding, EmbedResult, Usage


class RemoteError(HybridEmbedError):
    """The server answered with an error; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(f"{message} (HTTP {status})")
        self.status = status


class _HTTPBackend:
    name = "http"
    path = ""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0):
        self.url = url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: dict) -> dict | list:
        try:
            response = self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.url}{path}: {exc}", 0) from exc
        if response.status_code >= 400:
            try:
                err = response.json().get("error", response.text)
                err = err.get("message", err) if isinstance(err, dict) else err
            except (ValueError, AttributeError):
                err = response.text
            raise RemoteError(f"{self.name} server error: {err}", response.status_code)
        return response.json()

    def _dense_only(self, sparse: bool, multivector: bool) -> None:
        if sparse or multivector:
            asked = " and ".join(k for k, v in (("sparse", sparse), ("multivector", multivector))
                                 if v)
            raise UnsupportedOutputError(
                f"the {self.name} backend returns dense vectors only; {asked} needs the local "
                "or remote (hybridembed) backend")

    def embed_query(self, text: str, **options) -> Embedding:
        return self.embed([text], kind="query", **options)[0]


class RemoteBackend(_HTTPBackend):
    """A hybridembed server's native API: every output is available."""

    name = "remote"

    def embed(self, texts: Sequence[str] | str, *, dense: bool = True, sparse: bool = False,
              multivector: bool = False, kind: str = "document", truncate: bool = True,
              dimensions: int | None = None, normalize: bool = True) -> EmbedResult:
        texts = check_texts(texts)
        body = {"inputs": texts, "dense": dense, "sparse": sparse, "multivector": multivector,
                "kind": kind, "truncate": truncate, "dimensions": dimensions,
                "normalize": normalize}
        if self.model:
            body["model"] = self.model
        if not texts:
            return _result(self.model or "", [], dense, sparse, multivector, [])
        out = self._post("/v1/embed", body)
        rows = out["data"]
        return EmbedResult(
            model=out["model"],
            dense=np.asarray([r["dense"] for r in rows], np.float32) if dense else None,
            sparse=[SparseVector(r["sparse"]["indices"], r["sparse"]["values"]) for r in rows]
            if sparse else None,
            multivector=[np.asarray(r["multivector"], np.float32).reshape(-1, _width(r))
                         for r in rows] if multivector else None,
            usage=Usage(out["usage"]["tokens"]))


class _DenseOnlyBackend(_HTTPBackend):
    """Servers that return dense vectors only; subclasses make the one request."""

    default_model = ""

    def _request(self, texts: list[str], model: str, truncate: bool,
                 dimensions: int | None) -> tuple[str, np.ndarray, int]:
        """(model name echoed, (n, dim) vectors in input order, total tokens)."""
        raise NotImplementedError

    def embed(self, texts: Sequence[str] | str, *, dense: bool = True, sparse: bool = False,
              multivector: bool = False, kind: str = "document", truncate: bool = True,
              dimensions: int | None = None, normalize: bool = True) -> EmbedResult:
        self._dense_only(sparse, multivector)
        texts = check_texts(texts)
        if not texts:
            return _result(self.model or "", [], dense, False, False, [])
        model, vectors, tokens = self._request(texts, self.model or self.default_model,
                                               truncate, dimensions)
        return _result(model, vectors, dense, False, False, _spread(tokens, len(texts)),
                       normalize)


class OllamaBackend(_DenseOnlyBackend):
    name = "ollama"
    default_model = "bge-m3"

    def _request(self, texts, model, truncate, dimensions):
        body = {"model": model, "input": texts, "truncate": truncate}
        if dimensions:
            body["dimensions"] = dimensions
        out = self._post("/api/embed", body)
        return (out.get("model", model), np.asarray(out["embeddings"], np.float32),
                int(out.get("prompt_eval_count") or 0))


class OpenAIBackend(_DenseOnlyBackend):
    name = "openai"
    default_model = "text-embedding-3-small"

    def _request(self, texts, model, truncate, dimensions):
        body = {"model": model, "input": texts, "encoding_format": "base64"}
        if dimensions:
            body["dimensions"] = dimensions
        out = self._post("/embeddings", body)
        rows = sorted(out["data"], key=lambda r: r["index"])
        return (out.get("model", model), np.stack([_vector(r["embedding"]) for r in rows]),
                int(out.get("usage", {}).get("prompt_tokens") or 0))


def _vector(value) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, np.float32)


def _width(row: dict) -> int:
    matrix = row["multivector"]
    return len(matrix[0]) if matrix else 0


def _spread(total: int, n: int) -> list[int]:
    """These protocols report only a total token count; spread it over the texts."""
    base, extra = divmod(total, n) if n else (0, 0)
    return [base + (1 if i < extra else 0) for i in range(n)]


def _result(model, vectors, dense, sparse, multivector, tokens, normalize=True) -> EmbedResult:
    vectors = np.asarray(vectors, np.float32).reshape(len(tokens), -1)
    if normalize and len(vectors):
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return EmbedResult(model=model, dense=vectors if dense else None,
                       sparse=[] if sparse else None, multivector=[] if multivector else None,
                       usage=Usage(tokens))
