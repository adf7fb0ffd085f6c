"""`hybridembed migrate` at the command line: every failure is one line on stderr with
exit status 2, Ctrl-C stops with a one-line note of how to resume (issue 14, item 8)."""

import os
import signal
import subprocess
import sys

import psycopg

from tests.migrate.helpers import make_table, migration, wait_for


def cli(*args, timeout=180):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "hybridembed", "migrate", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def one_line_error(out, *needles):
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybridembed: error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_failures_are_one_line_exit_2(pg, tiny_m3, tiny_m3_dir):
    dsn = pg.get_uri()
    make_table(dsn, "cli_errors", n=12)
    common = ["--dsn", dsn, "--table", "cli_errors", "--text-col", "body"]
    one_line_error(cli("add", "--dsn", dsn, "--table", "no_such_table", "--text-col", "body",
                       "--model", str(tiny_m3_dir)), "no_such_table", "not found")
    one_line_error(cli("swap", *common), "nothing to swap")
    migration(dsn, "cli_errors", tiny_m3).add()
    one_line_error(cli("swap", *common), "12 rows are not embedded yet", "--force")
    one_line_error(cli("status", "--dsn", "postgresql://nobody@/nowhere?host=/nonexistent",
                       "--table", "t"), "migrate status", "database")
    with psycopg.connect(dsn, autocommit=True) as c:  # a type the new column cannot take
        c.execute("ALTER TABLE cli_errors DROP COLUMN embedding_model__new")
        c.execute("ALTER TABLE cli_errors ADD COLUMN embedding_model__new int")
    one_line_error(cli("add", *common, "--model", str(tiny_m3_dir)), "another migration")


def test_ctrl_c_stops_with_a_note_and_the_run_resumes(pg, tiny_m3, tiny_m3_dir):
    dsn = pg.get_uri()
    make_table(dsn, "cli_interrupt", n=200)
    m = migration(dsn, "cli_interrupt", tiny_m3)
    m.add()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "hybridembed", "migrate", "backfill", "--dsn", dsn, "--table",
         "cli_interrupt", "--text-col", "body", "--batch", "1", "--model", str(tiny_m3_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: m.status()["done"] >= 5, timeout=120, what="the backfill to start")
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "interrupted during `migrate backfill`" in last and "resume" in last
    status = m.status()
    assert status["remaining"] > 0 and status["done"] + status["remaining"] == 200
    assert m.backfill().rows == status["remaining"]
