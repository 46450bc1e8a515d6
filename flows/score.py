"""Scoring: CLIP d_p and d_t per candidate, z = α·log d_p + (1−α)·log d_t, the best candidate selected."""
from __future__ import annotations

from prefect import flow

from flows import settings
from flows.preferences import select
from flows.runner import RunContext, pipeline_run, run_stage, task_runner
from tasks import plan, targets


def score_step(ctx: RunContext, sel: targets.Selection) -> dict:
    return run_stage(ctx, "score", plan.score_inputs(ctx.con, sel.pairs, ctx.params), ctx.params["chunk_size"])


@flow(name="score", task_runner=task_runner())
def score(warehouse: str, targets: str | None = None, movies: list[int] | None = None,
          users_file: str | None = None, limit_users: int | None = None, alpha: float | None = None,
          chunk_size: int | None = None, config: str | None = None) -> dict:
    """(Re)score generated candidates, e.g. at another α; unchanged pairs are skipped."""
    params, lineage = settings.resolve(warehouse, {
        "targets": targets, "movies": movies, "users_file": users_file, "limit_users": limit_users,
        "alpha": alpha, "chunk_size": chunk_size}, config)
    with pipeline_run(warehouse, "score", params, lineage) as ctx:
        sel, _ = select(ctx)
        score_step(ctx, sel)
        return {"run_id": ctx.run_id, "counts": ctx.counts}
