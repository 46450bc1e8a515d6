"""`pmg demo`: the whole job on the embedded default, small enough for a laptop CPU."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from flows.commands.pipeline import EXAMPLE_SQL, _run_flow, print_summary
from tasks.config import CONFIG_NAME, tiny_defaults

CONFIG_EXAMPLE = """[models]
llm = "/models/Llama-2-7b-chat-hf"       # Hugging Face Llama directory
sd = "/models/stable-diffusion-v1-5"    # diffusers Stable Diffusion directory
clip = "/models/clip-vit-base-patch32"  # Hugging Face CLIP directory
[runtime]
device = "cpu"
"""


def make_tiny_models(warehouse: Path) -> list[str]:
    """Tiny random-weight checkpoints in the real layouts under <warehouse>/models/tiny (once)."""
    from pmg_models import clip_tiny, llama
    from pmg_models import sd as sd_models

    cfg = tiny_defaults(warehouse)
    made = []
    for name, path, init in (("llm", cfg.llm, llama.init_tiny), ("sd", cfg.sd, sd_models.init_tiny),
                             ("clip", cfg.clip, clip_tiny.init_tiny)):
        if not (path / "config.json").exists() and not (path / "model_index.json").exists():
            init(path, seed=0)
            made.append(name)
    return made


def run(warehouse: Path, args, out=sys.stdout) -> int:
    import os

    from flows import prefect_env

    # Tiny models run faster eagerly than they compile (2-13 s per static shape).
    os.environ.setdefault("PMG_JIT", "0")
    started = time.monotonic()
    prefect_env.configure(warehouse, quiet=not args.debug)
    from flows.backfill import backfill
    from flows.gallery import write_gallery
    from warehouse.ingest import ingest
    from warehouse.synth import synthesize

    w = out.write
    data = warehouse / "demo-data"
    w(f"1/5 synthetic MovieLens data ({args.users} users, {args.movies} movies) -> {data}\n")
    if not (data / "ratings.csv").exists():
        synthesize(data, users=args.users, movies=args.movies, ratings=args.users * 40, seed=0)
    w(f"2/5 tiny random-weight models -> {warehouse / 'models' / 'tiny'}\n")
    make_tiny_models(warehouse)
    report = ingest(data, warehouse)
    w(f"3/5 ingest: {report.rows_loaded} rows loaded, {report.rows_rejected} rejected"
      f"{' (already ingested)' if report.skipped_same_source else ''}\n")
    w("4/5 backfill with each user's held-out liked movie as the target\n")
    out.flush()
    result = _run_flow(warehouse, args.debug, backfill, warehouse=str(warehouse), targets="holdout",
                       candidates=args.candidates, steps=args.steps, height=args.size, width=args.size,
                       chunk_size=8)
    gallery = Path(result["gallery"]) if result.get("gallery") else warehouse / "gallery" / "index.html"
    n = write_gallery(warehouse, gallery)  # the backfill wrote it already; this also gives the user count
    w(f"5/5 gallery: {gallery.resolve()} ({n} users)\n")
    print_summary(result, warehouse, time.monotonic() - started, out)
    w("\nTry:\n")
    for q in EXAMPLE_SQL:
        w(f"  pmg --warehouse {warehouse} sql \"{q}\"\n")
    w("\nNote: the demo uses tiny models with random weights, so keywords are gibberish and the images are\n"
      "placeholders (noise). For real posters, write " f"{warehouse / CONFIG_NAME} naming real checkpoints:\n\n")
    w("".join("  " + line + "\n" for line in CONFIG_EXAMPLE.splitlines()))
    w("\nthen run `pmg backfill --targets holdout` (or `--movie ID`); unchanged work is skipped.\n")
    return 0
