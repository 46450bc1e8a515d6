"""The work ledger: per (stage, item) the fingerprint of the inputs it was last done with.

A stage runs only for items whose fingerprint changed or whose last attempt failed; re-running a
finished job therefore finds nothing to do. Prefect's own database is never consulted for this.
"""
from __future__ import annotations

import hashlib
import json
import pandas as pd

from warehouse import queries

OUTCOME_COLUMNS = ("item_key", "fingerprint", "status", "error")


def fingerprint(*parts) -> str:
    """A stable hash of JSON-serialisable inputs (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def sql(name: str) -> str:
    """The text of warehouse/queries/<name>.sql."""
    return queries.load(name)


def outcome_frame(rows) -> pd.DataFrame:
    """Ledger results from (item_key, fingerprint, status 'done'|'failed', error) tuples."""
    return pd.DataFrame(list(rows), columns=list(OUTCOME_COLUMNS), dtype=object)


def pending(con, stage: str, wanted: dict[str, str]) -> dict[str, str]:
    """The subset of `wanted` (item_key -> fingerprint) that still has to run, in key order."""
    if not wanted:
        return {}
    frame = pd.DataFrame({"item_key": list(wanted), "fingerprint": list(wanted.values())}, dtype=object)
    con.register("wanted", frame)
    try:
        rows = con.execute(sql("pipeline_ledger_pending"), {"stage": stage}).fetchall()
    finally:
        con.unregister("wanted")
    return dict(rows)


def record(con, stage: str, run_id: str, chunk: int, results: pd.DataFrame) -> None:
    """Replace the ledger rows of `results`' items; call inside the chunk's transaction."""
    if results.empty:
        return
    params = {"stage": stage, "run_id": run_id, "chunk": chunk}
    con.register("outcome", results)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE ledger_new AS {sql('pipeline_ledger_rows')}", params)
        con.execute(sql("pipeline_ledger_delete"), {"stage": stage})
        con.execute("INSERT INTO work_ledger BY NAME SELECT * FROM ledger_new")
        con.execute("DROP TABLE ledger_new")
    finally:
        con.unregister("outcome")


def failures(con, stage: str | None = None) -> list[tuple[str, str, str]]:
    """(stage, item_key, error) of items whose last attempt failed."""
    q = "SELECT stage, item_key, error FROM work_ledger WHERE status = 'failed'"
    if stage is None:
        return con.execute(q + " ORDER BY stage, item_key").fetchall()
    return con.execute(q + " AND stage = ? ORDER BY item_key", [stage]).fetchall()
