"""Ingest: load a MovieLens directory or zip into the warehouse (see warehouse.ingest)."""
from __future__ import annotations

from prefect import flow

from warehouse.ingest import ingest as ingest_source


@flow(name="ingest")
def ingest(warehouse: str, source: str) -> dict:
    """Returns the ingest's counts and the users whose ratings or tags changed."""
    r = ingest_source(source, warehouse)
    return {"ingest_id": r.ingest_id, "rows_read": r.rows_read, "rows_loaded": r.rows_loaded,
            "rows_rejected": r.rows_rejected, "changed_users": len(r.changed_users),
            "skipped_same_source": r.skipped_same_source}
