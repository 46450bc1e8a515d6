"""Nightly: ingest the day's data (optional), then redo the last backfill's selection; only what changed runs."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.backfill import backfill
from flows.ingest import ingest
from flows.status import require_backfill
from warehouse.db import connect_writer


def last_backfill_parameters(warehouse) -> dict:
    with connect_writer(Path(warehouse)) as con:
        return require_backfill(con, warehouse)


@flow(name="nightly")
def nightly(warehouse: str, source: str | None = None, config: str | None = None) -> dict:
    """Ingest `source` if given; regenerate for users whose history (or anything else) changed."""
    report = ingest(warehouse, source) if source else None
    result = backfill(warehouse, **last_backfill_parameters(warehouse), config=config, run_name="nightly")
    return {**result, "ingest": report}
