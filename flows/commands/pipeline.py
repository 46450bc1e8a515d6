"""`pmg backfill`, `pmg nightly`, `pmg demo`, `pmg gallery`, `pmg status`: the pipeline from the command line."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from flows.commands import positive_int, seed_arg

EXAMPLE_SQL = (
    "SELECT user_id, target_movie_id, image_path, round(z, 3) AS z FROM posters ORDER BY user_id LIMIT 10",
    "SELECT p.user_id, p.keywords AS taste, m.title FROM user_preferences p JOIN posters USING (user_id) "
    "JOIN movies m ON m.movie_id = posters.target_movie_id LIMIT 10",
    "SELECT run_id, flow, status, counts FROM runs ORDER BY started_at DESC LIMIT 5",
)


def register(sub) -> None:
    p = sub.add_parser("backfill", help="generate posters for all (or selected) users and targets")
    _selection_args(p)
    _generation_args(p)
    p.set_defaults(handler=cmd_backfill)

    p = sub.add_parser("nightly", help="ingest new data if given, then regenerate only what changed")
    p.add_argument("--source", help="MovieLens directory or zip to ingest first")
    p.add_argument("--config", help="model config TOML (default <warehouse>/pmg.toml or tiny models)")
    p.set_defaults(handler=cmd_nightly)

    p = sub.add_parser("demo", help="synthesize data, ingest, backfill with the miniature world's trained models, "
                                    "write a gallery")
    p.add_argument("--users", type=int, default=30, help="synthetic users (default 30)")
    p.add_argument("--movies", type=int, default=200, help="synthetic movies (default 200)")
    p.add_argument("--steps", type=int, help="diffusion steps (default: the models' [method]; 4 with --random-models)")
    p.add_argument("--size", type=int, help="image height and width (default: 32; 64 with --random-models)")
    p.add_argument("--candidates", type=int, help="candidates per (user, target) (default 2)")
    p.add_argument("--random-models", action="store_true",
                   help="tiny random-weight models instead of the shipped miniature world (noise images)")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("gallery", help="write an HTML page of users, keywords, candidates and chosen posters")
    p.add_argument("out", help="output .html file")
    p.add_argument("--run", help="only posters of this run id")
    p.add_argument("--limit", type=int, default=1000, help="at most this many users in all (default 1000)")
    p.add_argument("--per-page", type=int, default=50, help="users per page: OUT.html, OUT-2.html, ... (default 50)")
    p.set_defaults(handler=cmd_gallery)

    p = sub.add_parser("status", help="recent runs, failed items, and what the next nightly would recompute")
    p.add_argument("--runs", type=positive_int, default=10, help="how many recent runs to list (default 10)")
    p.add_argument("--config", help="model config TOML (default <warehouse>/pmg.toml or tiny models)")
    p.set_defaults(handler=cmd_status)


def _selection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to generate")
    g.add_argument("--movie", type=_id_list, help="target movie id(s) for every selected user, e.g. 1,32")
    g.add_argument("--targets", help="'holdout' (each user's held-out liked movie) or a CSV/Parquet of user_id,movie_id")
    g.add_argument("--users", dest="users_file", help="CSV/Parquet/text file of user ids")
    g.add_argument("--limit-users", type=int, help="only the first N users (by id)")
    p.add_argument("--config", help="model config TOML (default <warehouse>/pmg.toml or tiny models)")


def _generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("how")
    g.add_argument("--candidates", type=int, help="candidates per (user, target) (default 2)")
    g.add_argument("--alpha", type=float, help="α in z = α·log d_p + (1−α)·log d_t (default 2/3)")
    g.add_argument("--steps", type=int, help="diffusion steps (default 20)")
    g.add_argument("--height", type=int, help="image height (default 512)")
    g.add_argument("--width", type=int, help="image width (default 512)")
    g.add_argument("--seed", type=seed_arg, help="base seed (default 0)")
    g.add_argument("--chunk-size", type=int, help="items per task (default 16)")
    g.add_argument("--runner", choices=("thread", "dask"), default=os.environ.get("PMG_RUNNER") or "thread",
                   help="task runner: 'thread' (this process) or 'dask' (worker processes); default env "
                   "PMG_RUNNER or thread")
    g.add_argument("--dask-address", default=os.environ.get("PMG_DASK_ADDRESS") or None,
                   help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (default env "
                   "PMG_DASK_ADDRESS, else a temporary local cluster)")
    g.add_argument("--dask-workers", type=positive_int, help="worker processes of the temporary local cluster (default 2)")


def _id_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected movie ids like 1,32, got {text!r}") from None


def _run_flow(root: Path, debug: bool, fn, **kwargs) -> dict:
    """Run a flow on the embedded Prefect API with a terminal progress bar."""
    from flows import prefect_env, progress

    prefect_env.configure(root, quiet=not debug)
    progress.install(progress.TerminalProgress())
    with prefect_env.embedded_api(root):
        return fn(**kwargs)


def cmd_backfill(args) -> int:
    root = Path(args.warehouse)
    started = time.monotonic()
    request = dict(targets=args.targets, movies=args.movie, users_file=args.users_file, limit_users=args.limit_users,
                   candidates=args.candidates, alpha=args.alpha, steps=args.steps, height=args.height,
                   width=args.width, seed=args.seed, chunk_size=args.chunk_size)
    # Refuse a bad request in a fraction of a second, not after Prefect's start-up (the flow checks again).
    from flows import settings
    from tasks import targets
    targets.check_request(args.targets, args.movie, args.users_file, args.limit_users)
    settings.resolve(root, request, args.config)
    from flows import prefect_env
    prefect_env.configure(root, quiet=not args.debug)
    from flows.backfill import backfill
    from flows.dask_runner import task_runner_for

    flow = backfill.with_options(task_runner=task_runner_for(args.runner, args.dask_address, args.dask_workers))
    result = _run_flow(root, args.debug, flow, warehouse=str(root), config=args.config, **request)
    print_summary(result, root, time.monotonic() - started)
    return 0


def cmd_nightly(args) -> int:
    root = Path(args.warehouse)
    started = time.monotonic()
    # before Prefect's start-up, as backfill's checks
    if args.source:
        from warehouse.ingest import check_source
        check_source(args.source)
    else:  # with new data the ingest is worth doing even before the first backfill
        from flows.status import require_backfill
        from warehouse.db import connect_reader
        with connect_reader(root) as con:
            require_backfill(con, root)
    from flows import prefect_env
    prefect_env.configure(root, quiet=not args.debug)
    from flows.nightly import nightly

    result = _run_flow(root, args.debug, nightly, warehouse=str(root), source=args.source, config=args.config)
    ing = result.get("ingest")
    if ing:
        print(f"Ingested {ing['rows_loaded']} rows ({ing['rows_rejected']} rejected); "
              f"{ing['changed_users']} users changed.")
    print_summary(result, root, time.monotonic() - started)
    return 0


def print_summary(result: dict, root: Path, seconds: float, out=sys.stdout) -> None:
    counts = result["counts"]
    sel = counts.get("selection", {})
    w = out.write
    w(f"\nRun {result['run_id']} finished in {seconds:.1f} s\n")
    w(f"  users {sel.get('users', 0)}, (user, target) pairs {sel.get('pairs', 0)}")
    w(f", users without a target {sel['users_without_target']}\n" if sel.get("users_without_target") else "\n")
    failed = 0
    for stage in ("item_keywords", "preferences", "generate", "score"):
        c = counts.get(stage)
        if c:
            failed += c["failed"]
            extra = f"  images {c['images']}" if c.get("images") else ""
            w(f"  {stage:<14} processed {c['processed']:>5}  skipped {c['skipped']:>5}  failed {c['failed']:>3}{extra}\n")
    w(f"Images:  {Path(root).resolve() / 'images'}  (content-addressed PNGs)\n")
    if result.get("gallery"):
        w(f"Gallery: {result['gallery']}  (`pmg --warehouse {root} gallery OUT.html [--run ID]` writes another)\n")
    if failed:
        w(f"{failed} item(s) failed and will be retried by the next run; see: "
          "pmg sql \"SELECT stage, item_key, error FROM work_ledger WHERE status = 'failed'\"\n")
    w(f"Query:   pmg sql \"{EXAMPLE_SQL[0]}\"\n")


def cmd_demo(args) -> int:
    from flows import demo

    return demo.run(Path(args.warehouse), args)


def cmd_gallery(args) -> int:
    from flows.gallery import write_gallery

    n = write_gallery(args.warehouse, args.out, args.run, args.limit, args.per_page)
    pages = max(1, -(-n // args.per_page))
    print(f"Wrote {args.out} ({n} users on {pages} page(s); images next to it, the folder can be moved or served).")
    return 0


def cmd_status(args) -> int:
    from flows.status import status_text

    print(status_text(args.warehouse, args.runs, args.config))
    return 0
