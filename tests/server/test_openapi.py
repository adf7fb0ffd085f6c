"""The OpenAPI document tells the truth: schemathesis, with all of its default checks
(no 5xx, documented statuses, response bodies matching their schemas, schema-valid
requests accepted, schema-violating ones refused, Allow headers), run against a real
server over every route — bounded (a fixed seed, a few examples per route) and offline."""

import os
import subprocess
import sys
from pathlib import Path

from tests.server.conftest import running_server

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure(minilm, tmp_path):
    st = Path(sys.executable).with_name("st")
    with running_server(minilm, data_dir=tmp_path / "data") as url:
        run = subprocess.run(
            [str(st), "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
             "--max-examples", os.environ.get("HYBRIDEMBED_SCHEMATHESIS_EXAMPLES", "8"),
             "--seed", "1", "--workers", "1", "--max-failures", "20"],
            capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    selected = next(line for line in run.stdout.splitlines() if "Selected:" in line)
    tested = next(line for line in run.stdout.splitlines() if "Tested:" in line)
    assert selected.split("/")[-1].strip() == tested.split(":")[-1].strip(), run.stdout[-2000:]
