"""What a finished run leaves for people: the gallery, a `run_metrics` row, and Prefect artifacts.

Artifacts (keys `pmg-<flow>-summary|progress|report`, e.g. `pmg-nightly-report`):
  summary   table: per stage processed / skipped / failed / images, and the totals
  progress  percent of the run done, updated after every committed chunk
  report    Markdown: the gallery location and the key numbers
The warehouse's `run_metrics` table holds the same numbers for SQL. Artifacts are observability
only: failing to create one is logged and never fails the run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Iterator

from flows import progress
from warehouse import queries
from warehouse.db import publish, transaction

STAGES = ("item_keywords", "preferences", "generate", "score")
GALLERY = Path("gallery") / "index.html"
log = logging.getLogger(__name__)


def artifact_key(flow: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"pmg-{flow}-{kind}".lower()).strip("-")


class ArtifactProgress(progress.Progress):
    """Forwards to the installed progress display and keeps a Prefect progress artifact current."""

    def __init__(self, inner: progress.Progress, key: str, description: str):
        self.inner, self.key, self.description = inner, key, description
        self.artifact_id = None
        self.stage_index, self.total, self.done = -1, 0, 0

    def stage(self, name: str, total: int, unit: str, skipped: int = 0) -> None:
        self.inner.stage(name, total, unit, skipped)
        self.stage_index, self.total, self.done = self.stage_index + 1, total, 0
        self._update()

    def advance(self, items: int, images: int = 0, failed: int = 0) -> None:
        self.inner.advance(items, images, failed)
        self.done += items
        self._update()

    def end_stage(self) -> None:
        self.inner.end_stage()

    def percent(self) -> float:
        current = self.done / self.total if self.total else 1.0
        return round(min(100.0, 100.0 * (max(self.stage_index, 0) + current) / len(STAGES)), 1)

    def finish(self) -> None:
        self.stage_index, self.total = len(STAGES), 0
        self._update()

    def _update(self) -> None:
        with _observability("progress artifact"):
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(self.percent(), key=self.key,
                                                            description=self.description)
            else:
                update_progress_artifact(self.artifact_id, self.percent())


@contextlib.contextmanager
def tracked(ctx) -> Iterator[ArtifactProgress]:
    """Within the block, chunk progress also updates the run's progress artifact."""
    previous = progress.get()
    tee = ArtifactProgress(previous, artifact_key(ctx.flow, "progress"), f"Progress of run {ctx.run_id}")
    progress.install(tee)
    try:
        yield tee
    finally:
        progress.install(previous)


def finish(ctx, tracker: ArtifactProgress | None = None) -> dict:
    """At the end of a successful run: gallery, run_metrics row, artifacts. Returns the metrics."""
    publish(ctx.con, ctx.root, ["runs"])  # the gallery's reader must see this run
    gallery = _write_gallery(ctx.root)
    metrics = run_metrics(ctx, gallery)
    with transaction(ctx.con):
        queries.run(ctx.con, "ops_insert_metrics", {**metrics, "stages": json.dumps(metrics["stages"])})
    publish(ctx.con, ctx.root, ["run_metrics"])
    if tracker is not None:
        tracker.finish()
    create_artifacts(ctx.flow, ctx.run_id, metrics)
    return metrics


def run_metrics(ctx, gallery: Path | None) -> dict:
    """The run's key numbers (the columns of run_metrics)."""
    seconds = time.monotonic() - ctx.started
    stages = {s: ctx.counts[s] for s in STAGES if s in ctx.counts}
    total = {k: sum(c.get(k, 0) for c in stages.values()) for k in ("processed", "skipped", "failed", "images")}
    sel = ctx.counts.get("selection", {})
    posters, mean_z, mean_d_p, mean_d_t = queries.run(ctx.con, "ops_run_scores", {"run_id": ctx.run_id}).fetchone()
    return {"run_id": ctx.run_id, "flow": ctx.flow, "seconds": round(seconds, 3), "users": sel.get("users", 0),
            "pairs": sel.get("pairs", 0), **total,
            "pairs_per_hour": _per_hour(stages.get("generate", {}).get("processed", 0), seconds),
            "posters": posters, "mean_z": mean_z, "mean_d_p": mean_d_p, "mean_d_t": mean_d_t, "stages": stages,
            "gallery": str(gallery) if gallery else None, "flow_run_id": _flow_run_id(),
            "peak_rss_mb": _peak_rss_mb(ctx)}


def _peak_rss_mb(ctx) -> float | None:
    """The flow process's peak memory since the run started, when it is the process that ran the models."""
    from prefect.context import FlowRunContext

    from flows.dask_runner import is_dask
    from flows.runner import peak_rss_mb

    run = FlowRunContext.get()
    on_dask = run is not None and is_dask(run.task_runner)
    return peak_rss_mb() if ctx.peak_from_start and not on_dask else None


def create_artifacts(flow: str, run_id: str, m: dict) -> None:
    with _observability("summary and report artifacts"):
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        rows = [{"stage": s, **{k: c.get(k, 0) for k in ("processed", "skipped", "failed", "images")}}
                for s, c in m["stages"].items()]
        rows.append({"stage": "total", **{k: m[k] for k in ("processed", "skipped", "failed", "images")}})
        create_table_artifact(rows, key=artifact_key(flow, "summary"), description=f"Run {run_id}: items per stage")
        create_markdown_artifact(report_markdown(m), key=artifact_key(flow, "report"),
                                 description=f"Run {run_id}: gallery and key numbers")


def report_markdown(m: dict) -> str:
    def num(x, fmt="{:.3f}"):
        return "—" if x is None else fmt.format(x)

    gallery = (f"[{m['gallery']}](file://{m['gallery']}) — serve the folder with "
               f"`python -m http.server -d {Path(m['gallery']).parent}`" if m["gallery"] else "not written")
    return "\n".join([
        f"# {m['flow']} run `{m['run_id']}`", "",
        "| | |", "|---|---|",
        f"| users / (user, target) pairs | {m['users']} / {m['pairs']} |",
        f"| images generated | {m['images']} |",
        f"| items processed / skipped / failed | {m['processed']} / {m['skipped']} / {m['failed']} |",
        f"| wall time | {m['seconds']:.1f} s ({num(m['pairs_per_hour'], '{:.0f}')} pairs generated/hour) |",
        f"| peak memory of the flow process | {num(m.get('peak_rss_mb'), '{:,.0f} MB')} |",
        f"| selected posters | {m['posters']} (mean z {num(m['mean_z'])}, d_p {num(m['mean_d_p'], '{:.2f}')}, "
        f"d_t {num(m['mean_d_t'], '{:.2f}')}) |", "",
        f"Gallery: {gallery}", "",
        f"SQL: `pmg sql \"SELECT * FROM run_metrics WHERE run_id = '{m['run_id']}'\"`",
        *([f"", f"{m['failed']} item(s) failed; the next run retries them: "
           "`pmg sql \"SELECT stage, item_key, error FROM work_ledger WHERE status = 'failed'\"`"]
          if m["failed"] else []),
    ])


def _per_hour(n: int, seconds: float) -> float | None:
    return round(n * 3600.0 / max(seconds, 1e-9), 1) if n else None


def _write_gallery(root: Path) -> Path | None:
    from flows.gallery import write_gallery

    out = Path(root) / GALLERY
    try:
        write_gallery(root, out)
    except Exception as e:  # noqa: BLE001 - the posters are committed; a page must not fail the run
        log.warning("gallery not written: %s", e)
        return None
    return out


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - outside a flow run
        return None


@contextlib.contextmanager
def _observability(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:  # noqa: BLE001 - artifacts are observability only
        log.warning("%s not recorded in Prefect: %s", what, e)
