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


DEMO_MARK = "# written by pmg demo"
RANDOM_DEFAULTS = {"steps": 4, "size": 64, "candidates": 2}  # random weights: keep the run short


def world_config(warehouse: Path) -> Path:
    """<warehouse>/pmg.toml naming the shipped miniature-world models (checked against their pinned SHA-256).

    A pmg.toml the user wrote is left alone and used as it is.
    """
    from tasks.miniworld import shipped

    shipped.verify()
    path = warehouse / CONFIG_NAME
    if not path.exists() or path.read_text(encoding="utf-8").startswith(DEMO_MARK):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DEMO_MARK + "\n" + shipped.config_text(), encoding="utf-8")
    return path


def random_config(warehouse: Path) -> Path:
    """A config naming the tiny random-weight models (made once under <warehouse>/models/tiny)."""
    make_tiny_models(warehouse)
    cfg = tiny_defaults(warehouse)
    path = warehouse / "models" / "tiny" / CONFIG_NAME
    path.write_text(f'{DEMO_MARK}\n[models]\nllm = "{cfg.llm.resolve()}"\nsd = "{cfg.sd.resolve()}"\n'
                    f'clip = "{cfg.clip.resolve()}"\n', encoding="utf-8")
    return path


def run(warehouse: Path, args, out=sys.stdout) -> int:
    import os

    import pandas as pd

    from flows import prefect_env, settings

    flags = {k: getattr(args, k, None) for k in RANDOM_DEFAULTS}
    settings.check_flags(flags)  # before any data, model or Prefect home is made
    world = not getattr(args, "random_models", False)
    # Tiny random models run faster eagerly than they compile (2-13 s per static shape); the world's
    # 20-step generations of 4 candidates run faster compiled (the 30-user demo: 80 s against 106 s).
    os.environ.setdefault("PMG_JIT", "1" if world else "0")
    started = time.monotonic()
    prefect_env.configure(warehouse, quiet=not args.debug)
    from flows.backfill import backfill
    from flows.gallery import write_gallery
    from tasks.miniworld import posters
    from warehouse.ingest import ingest
    from warehouse.synth import synthesize

    w = out.write
    data = warehouse / "demo-data"
    w(f"1/5 synthetic MovieLens data ({args.users} users, {args.movies} movies) -> {data}\n")
    if not (data / "ratings.csv").exists():
        synthesize(data, users=args.users, movies=args.movies, ratings=args.users * 40, seed=0)
    overrides = dict(flags)
    if world:
        config = world_config(warehouse)
        movies = pd.read_csv(data / "movies.csv")
        poster_dir = warehouse / "posters"
        posters.render_movie_posters(((int(m), str(g).split("|")) for m, g in zip(movies.movieId, movies.genres)),
                                     poster_dir, size=32)
        w(f"2/5 models: the miniature world's trained tiny Llama, SD and CLIP ({config}); "
          f"the movies' world posters -> {poster_dir}\n")
    else:
        config = random_config(warehouse)
        overrides = {k: v if v is not None else RANDOM_DEFAULTS[k] for k, v in overrides.items()}
        w(f"2/5 tiny random-weight models -> {warehouse / 'models' / 'tiny'}\n")
    report = ingest(data, warehouse)
    w(f"3/5 ingest: {report.rows_loaded} rows loaded, {report.rows_rejected} rejected"
      f"{' (already ingested)' if report.skipped_same_source else ''}\n")
    w("4/5 backfill with each user's held-out liked movie as the target\n")
    out.flush()
    size = overrides["size"]
    result = _run_flow(warehouse, args.debug, backfill, warehouse=str(warehouse), targets="holdout",
                       candidates=overrides["candidates"], steps=overrides["steps"], height=size, width=size,
                       chunk_size=8, config=str(config))
    gallery = Path(result["gallery"]) if result.get("gallery") else warehouse / "gallery" / "index.html"
    n = write_gallery(warehouse, gallery)  # the backfill wrote it already; this also gives the user count
    w(f"5/5 gallery: {gallery.resolve()} ({n} users)\n")
    print_summary(result, warehouse, time.monotonic() - started, out)
    w("\nTry:\n")
    for q in EXAMPLE_SQL:
        w(f"  pmg --warehouse {warehouse} sql \"{q}\"\n")
    if world:
        w("\nThe models are the miniature world's (weights/miniworld, made by `pmg train-miniworld`): posters are\n"
          "procedural, a genre sets the background colour, a motif and an accent colour. A personalized poster\n"
          "is asked to keep its target's background and take the motif of the user's favourite genres (how often\n"
          "it does is measured in README, 'The miniature world'). The gallery shows each movie's own poster\n"
          f"next to the generated ones; the world posters are in {warehouse / 'posters'}.\n")
    else:
        w("\nNote: --random-models uses tiny models with random weights, so keywords are gibberish and the images\n"
          "are placeholders (noise).\n")
    w(f"For real posters, write {warehouse / CONFIG_NAME} naming real checkpoints:\n\n")
    w("".join("  " + line + "\n" for line in CONFIG_EXAMPLE.splitlines()))
    w("\nthen run `pmg backfill --targets holdout` (or `--movie ID`); unchanged work is skipped.\n")
    return 0
