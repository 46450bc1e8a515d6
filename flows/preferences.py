"""Preferences: poster keywords of every movie involved (once per movie), then each user's preference
keywords, and soft preference embeddings (P-Tuning v2 + multimodal tokens) when the model config
names a trained soft prompt (else keywords only and `preference_embeddings` stays empty).
"""
from __future__ import annotations

from prefect import flow

from flows import settings
from flows.runner import RunContext, pipeline_run, run_stage, task_runner
from tasks import plan, targets


def item_keywords_step(ctx: RunContext, sel: targets.Selection, hist: dict) -> dict:
    movies = {m for _, m in sel.pairs} | {h["movie_id"] for items in hist.values() for h in items}
    return run_stage(ctx, "item_keywords", plan.item_inputs(ctx.con, movies, ctx.params), ctx.params["chunk_size"])


def preferences_step(ctx: RunContext, hist: dict) -> dict:
    return run_stage(ctx, "preferences", plan.preference_inputs(ctx.con, hist, ctx.params), ctx.params["chunk_size"])


def select(ctx: RunContext) -> tuple[targets.Selection, dict]:
    """The run's users, (user, target) pairs and histories."""
    p = ctx.params
    users = targets.select_users(ctx.con, p.get("users_file"), p.get("limit_users"))
    sel = targets.select_targets(ctx.con, users, p.get("targets"), p.get("movies"))
    ctx.counts["selection"] = {"users": len(sel.users), "pairs": len(sel.pairs),
                               "users_without_target": sel.users_without_target}
    return sel, targets.histories(ctx.con, sel, p["n_history"])


@flow(name="preferences", task_runner=task_runner())
def preferences(warehouse: str, targets: str | None = None, movies: list[int] | None = None,
                users_file: str | None = None, limit_users: int | None = None, chunk_size: int | None = None,
                config: str | None = None) -> dict:
    """Item keywords and user preference keywords for the selected users (no images)."""
    params, lineage = settings.resolve(warehouse, {"targets": targets, "movies": movies, "users_file": users_file,
                                                   "limit_users": limit_users, "chunk_size": chunk_size}, config)
    with pipeline_run(warehouse, "preferences", params, lineage) as ctx:
        sel, hist = select(ctx)
        item_keywords_step(ctx, sel, hist)
        preferences_step(ctx, hist)
        return {"run_id": ctx.run_id, "counts": ctx.counts}
