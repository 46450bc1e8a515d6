"""The one Prefect task of the pipeline: run one stage over one chunk of items.

It reads its rows by key from the stage's staged input, calls the stage adapter, writes the outputs
as staging Parquet parts and returns only paths and ledger outcomes. It never opens the warehouse:
the flow process commits.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import stages
from warehouse import staging

# Column types of each output table's staged part (subset of the warehouse columns).
OUTPUT_COLUMNS = {
    "item_keywords": {"movie_id": "INTEGER", "keywords": "VARCHAR[]", "raw_output": "VARCHAR",
                      "parse_ok": "BOOLEAN", "run_id": "VARCHAR"},
    "user_preferences": {"user_id": "INTEGER", "keywords": "VARCHAR[]", "raw_output": "VARCHAR",
                         "history_fingerprint": "VARCHAR", "history_movie_ids": "INTEGER[]",
                         "parse_ok": "BOOLEAN", "run_id": "VARCHAR"},
    "preference_embeddings": {"user_id": "INTEGER", "history_fingerprint": "VARCHAR", "n_tokens": "INTEGER",
                              "dim": "INTEGER", "path": "VARCHAR", "run_id": "VARCHAR"},
    "generations": {"generation_id": "VARCHAR", "run_id": "VARCHAR", "user_id": "INTEGER",
                    "target_movie_id": "INTEGER", "candidate": "INTEGER", "seed": "BIGINT", "weight": "DOUBLE",
                    "prompt": "VARCHAR", "negative_prompt": "VARCHAR", "steps": "INTEGER", "height": "INTEGER",
                    "width": "INTEGER", "image_path": "VARCHAR", "image_sha256": "VARCHAR"},
    "scores": {"generation_id": "VARCHAR", "run_id": "VARCHAR", "user_id": "INTEGER",
               "target_movie_id": "INTEGER", "d_p": "DOUBLE", "d_t": "DOUBLE", "alpha": "DOUBLE",
               "z": "DOUBLE", "selected": "BOOLEAN"},
}
INPUT_COLUMNS = {"key": "VARCHAR", "payload": "VARCHAR"}


def input_path(root, run_id: str, stage: str) -> Path:
    return staging.run_dir(Path(root), run_id) / stage / "input.parquet"


def stage_input(root, run_id: str, stage: str, rows: list[dict]) -> Path:
    """Stage a stage's input rows (key + JSON payload) for the chunk tasks to read by key."""
    payload = [{"key": r["key"], "payload": json.dumps(r, default=str)} for r in rows]
    return staging.write_parquet(input_path(root, run_id, stage), payload, INPUT_COLUMNS)


@task(name="chunk", cache_policy=NO_CACHE, task_run_name="{stage}-{chunk}", persist_result=False)
def run_chunk(stage: str, root: str, run_id: str, chunk: int, keys: list[str], params: dict) -> dict:
    """Run `stage` over the rows `keys`; returns {"parts": {table: path}, "outcome": [...], "images": n}."""
    found = staging.read_parquet(input_path(root, run_id, stage), "list_contains(?, key)", [keys])
    rows = [json.loads(r["payload"]) for r in found]
    result = stages.STAGES[stage](rows, params)
    parts = {}
    for table, out_rows in result.tables.items():
        if out_rows:
            path = staging.part_path(Path(root), run_id, stage, chunk, table)
            parts[table] = str(staging.write_parquet(path, out_rows, OUTPUT_COLUMNS[table]))
    return {"parts": parts, "outcome": result.outcome, "images": result.images}
