"""The same backfill as :meth:`PgMigration.backfill`, as a Ray Data pipeline for many
GPUs (or CPU slots): the driver splits the pending primary keys into ranges, an actor
pool (one ``Embedder`` per actor) embeds each range and writes it back with the same
claim-embed-update transaction, so the column contents equal the single-process path and
a rerun after any failure picks up only what is left."""

from __future__ import annotations

from typing import Any

from .pgvector import PgMigration, Target


class _RangeWorker:
    """A Ray actor: one embedder, many id ranges."""

    def __init__(self, dsn: str, target: dict, model: str, embedder_options: dict,
                 batch_size: int, too_long: str, retry_failed: bool = False):
        from ..service import Embedder

        self.migration = PgMigration(dsn, Target(**target),
                                     Embedder(model, cache_size=0, **embedder_options),
                                     batch_size=batch_size, too_long=too_long)
        self.retry_failed = retry_failed

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        embedded, skipped, failed = [], [], []
        for ids in batch["ids"]:
            stats = self.migration.process_ids(list(ids), retry_failed=self.retry_failed)
            embedded.append(stats.embedded)
            skipped.append(stats.skipped)
            failed.append(stats.failed)
        return {"embedded": embedded, "skipped": skipped, "failed": failed}


def backfill_with_ray(dsn: str, target: Target, model: str, *, address: str | None = None,
                      workers: int = 2, batch_size: int = 256, too_long: str = "truncate",
                      embedder_options: dict | None = None, gpus_per_worker: float = 0,
                      progress=None, retry_failed: bool = False) -> dict[str, Any]:
    import ray

    from ..registry import resolve

    ids = PgMigration(dsn, target, None).pending_ids(retry_failed=retry_failed)
    if not ids:
        return {"embedded": 0, "skipped": 0, "failed": 0, "ranges": 0, "workers": 0}
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    resolve(model)  # fail here, with the driver's message, if the model is missing
    ranges = [{"ids": ids[i:i + batch_size]} for i in range(0, len(ids), batch_size)]
    options = {"threads": 1, **(embedder_options or {})} if not gpus_per_worker else \
        dict(embedder_options or {})
    resources = {"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 1}
    dataset = ray.data.from_items(ranges).map_batches(
        _RangeWorker, batch_size=1, concurrency=workers, **resources,
        fn_constructor_kwargs={"dsn": dsn, "target": vars(target), "model": model,
                               "embedder_options": options, "batch_size": batch_size,
                               "too_long": too_long, "retry_failed": retry_failed})
    totals = {"embedded": 0, "skipped": 0, "failed": 0}
    for row in dataset.iter_rows():
        for name in totals:
            totals[name] += int(row[name])
        if progress:
            progress(sum(int(row[name]) for name in totals))
    return {**totals, "ranges": len(ranges), "workers": workers}
