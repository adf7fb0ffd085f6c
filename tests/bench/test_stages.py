"""The stage breakdown of one large call (``python -m hybridembed.bench.stages``) on the
tiny BGE-M3-layout model: every stage runs and the report adds up (no timing thresholds)."""

from __future__ import annotations

import json

from hybridembed.bench import corpus, stages


def test_every_stage_is_measured_on_a_model_with_all_heads(tiny_m3_dir):
    texts = corpus.named("mixed", 40)
    report = stages.measure(str(tiny_m3_dir), texts, budget=512,
                            outputs=("dense", "sparse", "multivector"), device="cpu", repeats=1)
    assert list(report["stages"]) == ["tokenise", "pad", "device only", "forward", "finish",
                                      "embed, pipeline on", "embed, pipeline off"]
    assert all(s["seconds"] > 0 for s in report["stages"].values())
    assert report["texts"] == 40 and report["batches"] > 1 and 0.5 < report["fill"] <= 1
    assert report["tokens"] > 40 * 3 and report["device"] == "cpu"
    assert "finish" in stages.format_report(report)


def test_command_line_json(tiny_m3_dir, tmp_path, capsys):
    lines = tmp_path / "texts.txt"
    lines.write_text("first text here\n\nsecond one\nthird\n")
    assert stages.main(["--model", str(tiny_m3_dir), "--corpus", str(lines), "--texts", "2",
                        "--device", "cpu", "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["texts"] == 2 and report["outputs"] == ["dense"]
