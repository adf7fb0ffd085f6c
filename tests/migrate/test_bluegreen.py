"""Blue-green re-embedding of Qdrant collections (embedded Edge and qdrant-client)."""

import pytest

from hybridembed.migrate.qdrant import BlueGreenError, reembed
from hybridembed.stores import (
    CollectionExistsError,
    SchemaMismatchError,
    VectorStore,
    open_backend,
)

DOCS = [{"id": f"d{i}", "text": t, "payload": {"n": i}} for i, t in enumerate(
    ["search the hybrid vector index", "cat dog house tree", "river city forest",
     "the model ranks documents", "batch memory fusion score"])]


@pytest.fixture(params=["edge", "qdrant"])
def backend(request, tmp_path):
    b = open_backend(request.param, url=":memory:" if request.param == "qdrant" else None,
                     data_dir=tmp_path)
    yield b
    b.close()


def test_reembed_switches_the_alias_and_keeps_the_old(backend, minilm, tiny_m3):
    old = VectorStore(backend, minilm)
    old.create_collection("kb_v1")
    old.upsert("kb_v1", DOCS)
    backend.set_alias("kb", "kb_v1")
    assert old.search("kb", "hybrid vector search", k=1)[0].id == "d0"  # apps use the alias
    result = reembed(backend, tiny_m3, source="kb", alias="kb")
    assert result == {"alias": "kb", "from": "kb_v1", "to": "kb_v2", "documents": 5}
    new = VectorStore(backend, tiny_m3)
    assert new.count("kb") == 5 and new.schema("kb").dense_dim == 32
    hits = new.search("kb", "river city forest", mode="dense", k=5)
    assert {h.id: h.payload for h in hits} == {d["id"]: d["payload"] for d in DOCS}
    assert {h.id: h.text for h in hits} == {d["id"]: d["text"] for d in DOCS}
    with pytest.raises(SchemaMismatchError):  # the alias now means the new model
        old.search("kb", "anything")
    assert old.search("kb_v1", "hybrid vector search", k=1)[0].id == "d0"  # old kept
    backend.set_alias("kb", "kb_v1")  # switching back is one step
    assert old.search("kb", "hybrid vector search", k=1)[0].id == "d0"
    with pytest.raises(CollectionExistsError):
        backend.set_alias("kb_v2", "kb_v1")  # an alias never shadows a collection


def test_pgvector_has_no_aliases(minilm, pg_dsn):
    with pytest.raises(BlueGreenError, match="column swaps"):
        reembed(open_backend("pgvector", url=pg_dsn), minilm, source="x", alias="y")
