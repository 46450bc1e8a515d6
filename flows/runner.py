"""What every pipeline flow shares: the run record, crash recovery, and running one stage in chunks.

The flow process holds the only writer connection. For each stage it asks the work ledger which
items changed, stages their inputs, submits one task per chunk, and commits each finished chunk in
one transaction keyed by (run, stage, chunk), then publishes for readers.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from flows import progress
from warehouse import images, ledger, staging
from warehouse.db import connect_writer, publish, rollback_open

PUBLISH_EVERY_S = 30.0
# Chunk tasks run in a small thread pool: one computes on the device (resources.DEVICE_LOCK) while the
# next reads its inputs and the finished one writes its parts; Prefect's default pool is unbounded.
WORKERS = int(os.environ.get("PMG_WORKERS", "2"))
# Tables each stage writes, and dependents whose rows for the same keys become stale.
STAGE_TABLES = {"item_keywords": ("item_keywords",), "preferences": ("user_preferences", "preference_embeddings"),
                "generate": ("generations",), "score": ("scores",)}
STAGE_CLEARS = {"generate": ("scores",)}
STAGE_UNITS = {"item_keywords": "movies", "preferences": "users", "generate": "pairs", "score": "pairs"}
PIPELINE_TABLES = ("runs", "work_ledger", "chunk_commits", "item_keywords", "user_preferences",
                   "preference_embeddings", "generations", "scores")


@dataclass
class RunContext:
    root: Path
    con: object            # the writer connection; never leaves the flow process
    run_id: str
    flow: str
    params: dict           # everything the chunk tasks need (JSON-serialisable)
    counts: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_publish: float = field(default_factory=time.monotonic)
    peak_from_start: bool = False  # VmHWM was reset when the run started (reset_peak_rss)


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS count (Linux /proc/self/clear_refs); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM) in MB; None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def task_runner():
    """The flows' runner: a bounded ThreadPoolTaskRunner, or Dask when PMG_RUNNER=dask.

    PMG_RUNNER (thread|dask), PMG_DASK_ADDRESS and PMG_DASK_WORKERS are read when the flow modules
    are imported, so a deployment can scale out through its job variables' env (see flows/dask_runner.py).
    """
    from flows.dask_runner import task_runner_for

    return task_runner_for(os.environ.get("PMG_RUNNER") or "thread", os.environ.get("PMG_DASK_ADDRESS") or None)


def thread_runner():
    """The runner of `--runner thread`: a bounded ThreadPoolTaskRunner."""
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=WORKERS)


def new_run_id(flow: str) -> str:
    return f"{flow}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def code_version() -> str:
    """The git commit of the code if it is a checkout, else the installed package version."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pmg-pipeline {version('pmg-pipeline')}"
    except PackageNotFoundError:
        return "unknown"


def recover(con, root: Path) -> None:
    """Clean up after killed runs: mark them crashed, drop their staging files and temp images."""
    con.execute("UPDATE runs SET status = 'crashed', finished_at = coalesce(finished_at, now()::TIMESTAMP) "
                "WHERE status = 'running'")
    staging.remove_stale(root)
    images.remove_temp_files(root)


@contextlib.contextmanager
def pipeline_run(warehouse, flow: str, params: dict, lineage: dict, timeout_s: float = 60) -> Iterator[RunContext]:
    """Open the writer, recover, record the run; on exit record its status, counts and publish."""
    root = Path(warehouse).resolve()
    with connect_writer(root, timeout_s) as con:
        recover(con, root)
        run_id = new_run_id(flow)
        ctx = RunContext(root, con, run_id, flow, {**params, "run_id": run_id, "root": str(root)},
                         peak_from_start=reset_peak_rss())
        con.execute("INSERT INTO runs (run_id, flow, status, parameters, checkpoints, prompt_version, code_version,"
                    " started_at) VALUES (?, ?, 'running', ?, ?, ?, ?, now()::TIMESTAMP)",
                    [run_id, flow, json.dumps(params, default=str), json.dumps(lineage["checkpoints"]),
                     lineage["prompt_version"], code_version()])
        status = "failed"
        try:
            yield ctx
            status = "completed"
        finally:
            rollback_open(con)  # an error mid-transaction must not hide behind "transaction is aborted"
            con.execute("UPDATE runs SET status = ?, finished_at = now()::TIMESTAMP, counts = ? WHERE run_id = ?",
                        [status, json.dumps(ctx.counts), run_id])
            publish(con, root, list(PIPELINE_TABLES))
            if status == "completed":
                staging.remove_run(root, run_id)


def run_stage(ctx: RunContext, stage: str, inputs: list[dict], chunk_size: int) -> dict:
    """Run `stage` where the ledger says its inputs changed; returns processed/skipped/failed counts."""
    from prefect.futures import as_completed
    from tasks.chunks import run_chunk, stage_input

    if chunk_size < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {chunk_size}")
    todo = ledger.pending(ctx.con, stage, {r["key"]: r["fingerprint"] for r in inputs})
    counts = {"processed": 0, "skipped": len(inputs) - len(todo), "failed": 0, "images": 0}
    ctx.counts[stage] = counts
    bar = progress.get()
    bar.stage(stage, len(todo), STAGE_UNITS[stage], counts["skipped"])
    if not todo:
        return counts
    stage_input(ctx.root, ctx.run_id, stage, [r for r in inputs if r["key"] in todo])
    keys = list(todo)
    chunks = [keys[i:i + chunk_size] for i in range(0, len(keys), chunk_size)]
    futures = {run_chunk.submit(stage, str(ctx.root), ctx.run_id, i, c, ctx.params): i for i, c in enumerate(chunks)}
    for fut in as_completed(list(futures)):
        out = fut.result()
        failed = sum(1 for o in out["outcome"] if o[2] == "failed")
        staging.commit_chunk(ctx.con, ctx.run_id, stage, futures[fut], {t: Path(p) for t, p in out["parts"].items()},
                             ledger.outcome_frame(out["outcome"]), STAGE_CLEARS.get(stage, ()))
        counts["processed"] += len(out["outcome"]) - failed
        counts["failed"] += failed
        counts["images"] += out["images"]
        bar.advance(len(out["outcome"]), out["images"], failed)
        _maybe_publish(ctx, stage)
    bar.end_stage()
    publish(ctx.con, ctx.root, _published_with(stage))
    return counts


def _published_with(stage: str) -> list[str]:
    """The tables a stage's chunk commit touches; readers must see them together (rows, ledger, commits)."""
    return [*STAGE_TABLES[stage], *STAGE_CLEARS.get(stage, ()), "work_ledger", "chunk_commits"]


def _maybe_publish(ctx: RunContext, stage: str) -> None:
    if time.monotonic() - ctx.last_publish >= PUBLISH_EVERY_S:
        publish(ctx.con, ctx.root, _published_with(stage))
        ctx.last_publish = time.monotonic()
