"""Generation: K candidate posters per (user, target) over the (seed, w) grid, stored content-addressed."""
from __future__ import annotations

from prefect import flow

from flows import settings
from flows.preferences import select
from flows.runner import RunContext, pipeline_run, run_stage, task_runner
from tasks import plan, targets


def generate_step(ctx: RunContext, sel: targets.Selection) -> dict:
    return run_stage(ctx, "generate", plan.generation_inputs(ctx.con, sel.pairs, ctx.params), ctx.params["chunk_size"])


@flow(name="generate", task_runner=task_runner())
def generate(warehouse: str, targets: str | None = None, movies: list[int] | None = None,
             users_file: str | None = None, limit_users: int | None = None, candidates: int | None = None,
             steps: int | None = None, height: int | None = None, width: int | None = None,
             chunk_size: int | None = None, config: str | None = None) -> dict:
    """Images for pairs whose preferences exist (run `preferences` first); unchanged pairs are skipped."""
    params, lineage = settings.resolve(warehouse, {
        "targets": targets, "movies": movies, "users_file": users_file, "limit_users": limit_users,
        "candidates": candidates, "steps": steps, "height": height, "width": width, "chunk_size": chunk_size}, config)
    with pipeline_run(warehouse, "generate", params, lineage) as ctx:
        sel, _ = select(ctx)
        generate_step(ctx, sel)
        return {"run_id": ctx.run_id, "counts": ctx.counts}
