"""Nightly: ingest the day's data (optional), then redo the last backfill's selection; only what changed runs."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from flows.backfill import backfill
from flows.ingest import ingest
from warehouse.db import connect_writer
from warehouse.ledger import sql

REPEATED = ("targets", "movies", "users_file", "limit_users", "candidates", "alpha", "steps", "height", "width",
            "guidance", "seed", "chunk_size")


def last_backfill_parameters(warehouse) -> dict:
    with connect_writer(Path(warehouse)) as con:
        row = con.execute(sql("pipeline_last_backfill")).fetchall()
    if not row:
        raise ValueError(f"no finished backfill in {warehouse}; run `pmg backfill` (or `pmg demo`) once first")
    params = json.loads(row[0][0])
    return {k: params.get(k) for k in REPEATED}


@flow(name="nightly")
def nightly(warehouse: str, source: str | None = None, config: str | None = None) -> dict:
    """Ingest `source` if given; regenerate for users whose history (or anything else) changed."""
    report = ingest(warehouse, source) if source else None
    result = backfill(warehouse, **last_backfill_parameters(warehouse), config=config, run_name="nightly")
    return {**result, "ingest": report}
