"""One store fixture per adapter, so a single contract suite runs against all of them."""

import itertools

import pytest

from hybridembed.stores import VectorStore, open_backend

KINDS = ["edge", "qdrant", "pgvector"]
_names = itertools.count()


@pytest.fixture(params=KINDS)
def backend(request, tmp_path):
    kind = request.param
    if kind == "pgvector":
        b = open_backend("pgvector", url=request.getfixturevalue("pg_dsn"))
    elif kind == "qdrant":
        b = open_backend("qdrant", url=":memory:")
    else:
        b = open_backend("edge", data_dir=tmp_path)
    yield b
    for name in b.list():
        b.drop(name)
    b.close()


@pytest.fixture
def store(backend, minilm):
    return VectorStore(backend, minilm)


@pytest.fixture
def name():
    """A fresh collection name (pgvector's database outlives one test)."""
    return f"c{next(_names)}"
