"""``hybridembed loadtest`` end to end on a tiny model: every load paired with an
in-process measurement of the same round, the server's stages read from ``/metrics``."""


def test_each_load_is_paired_with_in_process_in_the_same_round(tiny_m3_dir):
    from hybridembed.bench import loadtest

    report = loadtest.run(str(tiny_m3_dir), n=24, concurrency=4, single=12, rounds=1,
                          list_clients=2, list_size=4, progress=lambda m: None, floor=True)
    rnd = report["rounds"][0]
    for load in ("concurrent", "lists"):
        server, pair = rnd["server"][load], rnd["in_process"][load]
        assert server["vs_in_process"] == server["texts_per_s"] / pair["texts_per_s"] > 0
        assert server["mean_texts_per_batch"] >= 1 and server["batches"] >= 1
        assert {"tokenize", "queue", "inference"} <= set(server["stage_ms"])
        assert server["p50_ms"] <= server["p95_ms"] <= server["p99_ms"]
    single = rnd["server"]["single"]
    assert single["p50_over_in_process_ms"] == single["p50_ms"] - single["in_process_p50_ms"]
    assert single["in_process_p50_ms"] > 0 and single["mean_texts_per_batch"] == 1
    assert report["summary"]["concurrent"]["median"] == rnd["server"]["concurrent"][
        "vs_in_process"]
    # the bare uvicorn app, timed against the same worker
    assert single["floor_p50_over_in_process_ms"] == (single["floor_p50_ms"]
                                                      - single["in_process_p50_ms"])
    assert single["floor_p50_ms"] > 0
    assert report["summary"]["single"]["floor_median"] == single[
        "floor_p50_over_in_process_ms"]
    text = loadtest.format_report(report)
    assert "x in-process" in text and "over in-process" in text
    assert "a bare uvicorn app" in text


def test_serve_and_load_measures_the_server_alone(tiny_m3_dir, monkeypatch):
    """``hybridembed bench``'s server engine measures in-process its own way: no worker."""
    from hybridembed.bench import loadtest

    def no_worker(*args, **kwargs):
        raise AssertionError("an in-process worker was started")

    monkeypatch.setattr(loadtest, "InProcess", no_worker)
    texts = [f"text number {i} about hybrid search" for i in range(12)]
    reports = loadtest.serve_and_load(str(tiny_m3_dir), texts, concurrency=4, single=4,
                                      list_clients=2, list_size=4, progress=lambda m: None)
    assert set(reports) == {"concurrent", "lists", "single"}
    assert all("vs_in_process" not in r for r in reports.values())
    assert reports["single"]["p50_ms"] > 0 and "in_process_p50_ms" not in reports["single"]
