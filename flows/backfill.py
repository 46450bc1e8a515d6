"""Backfill: personalized posters for all (or selected) users and targets, resumable and idempotent."""
from __future__ import annotations

from prefect import flow
from prefect.context import FlowRunContext

from flows import artifacts, settings
from flows.generate import generate_step
from flows.preferences import item_keywords_step, preferences_step, select
from flows.runner import pipeline_run, task_runner
from flows.score import score_step


@flow(name="backfill", task_runner=task_runner())
def backfill(warehouse: str, targets: str | None = None, movies: list[int] | None = None,
             users_file: str | None = None, limit_users: int | None = None, candidates: int | None = None,
             alpha: float | None = None, steps: int | None = None, height: int | None = None,
             width: int | None = None, guidance: float | None = None, seed: int | None = None,
             chunk_size: int | None = None, config: str | None = None, run_name: str = "backfill") -> dict:
    """Keywords -> preferences -> K candidates per (user, target) -> CLIP scores -> selected poster."""
    params, lineage = settings.resolve(warehouse, {
        "targets": targets, "movies": movies, "users_file": users_file, "limit_users": limit_users,
        "candidates": candidates, "alpha": alpha, "steps": steps, "height": height, "width": width,
        "guidance": guidance, "seed": seed, "chunk_size": chunk_size}, config)
    settings.check_device(lineage["config"])  # once here, not as a failure of every item
    settings.check_soft_prompt(params)
    settings.check_memory(params, FlowRunContext.get().task_runner)
    with pipeline_run(warehouse, run_name, params, lineage) as ctx, artifacts.tracked(ctx) as tracker:
        sel, hist = select(ctx)
        item_keywords_step(ctx, sel, hist)
        preferences_step(ctx, hist)
        generate_step(ctx, sel)
        score_step(ctx, sel)
        metrics = artifacts.finish(ctx, tracker)  # gallery, run_metrics row, Prefect artifacts
        return {"run_id": ctx.run_id, "counts": ctx.counts, "gallery": metrics["gallery"]}
