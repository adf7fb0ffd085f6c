"""Acknowledged writes survive kill -9 (Qdrant Edge after flush, PostgreSQL after commit),
and an Edge shard refuses a second process instead of being corrupted by it."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hybridembed.stores import StoreLockedError, VectorStore, open_backend

WRITER = textwrap.dedent("""
    import sys, time
    from hybridembed import Embedder
    from hybridembed.stores import open_store
    kind, url, data_dir = sys.argv[1], sys.argv[2] or None, sys.argv[3]
    store = open_store(Embedder("minilm", device="cpu"), kind, url=url, data_dir=data_dir)
    store.ensure_collection("durable")
    for batch in range(3):
        docs = [{"id": f"d{batch}-{i}", "text": f"document {i} of batch {batch}"}
                for i in range(20)]
        store.upsert("durable", docs)
        print(f"ACK {batch}", flush=True)
    time.sleep(600)  # still holding everything when the kill comes
""")


def _kill_after_acks(args, acks=3):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        for n in range(acks):
            assert child.stdout.readline().strip() == f"ACK {n}"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)


@pytest.mark.parametrize("kind", ["edge", "pgvector"])
def test_acknowledged_writes_survive_kill_9(kind, tmp_path, request, minilm):
    url = request.getfixturevalue("pg_dsn") if kind == "pgvector" else ""
    _kill_after_acks([kind, url, str(tmp_path)])
    backend = open_backend(kind, url=url or None, data_dir=tmp_path)
    try:
        store = VectorStore(backend, minilm)
        assert store.count("durable") == 60
        assert store.search("durable", "document 7 of batch 2", k=1)[0].id == "d2-7"
    finally:
        backend.drop("durable")
        backend.close()


def test_edge_shard_refuses_a_second_process(tmp_path, minilm):
    store = VectorStore(open_backend("edge", data_dir=tmp_path), minilm)
    store.create_collection("owned")
    store.upsert("owned", [{"id": "a", "text": "held by this process"}])
    probe = textwrap.dedent("""
        import sys
        from hybridembed.stores import StoreLockedError, open_backend
        try:
            open_backend("edge", data_dir=sys.argv[1]).count("owned")
        except StoreLockedError as exc:
            print("LOCKED", exc)
    """)
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.startswith("LOCKED") and "another process" in out.stdout
    assert store.count("owned") == 1
    store.close()
    assert open_backend("edge", data_dir=tmp_path).count("owned") == 1  # free once closed
    with pytest.raises(StoreLockedError):  # a second handle in one process is refused too
        other = open_backend("edge", data_dir=tmp_path)
        other.count("owned")
        open_backend("edge", data_dir=tmp_path).count("owned")
