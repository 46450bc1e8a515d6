"""Stage 4 of the miniature world: the soft prompt, trained by `pmg train-soft-prompt` on the world's posters.

The stage does what a user does with their own data: synthesize MovieLens-format ratings, ingest them into a
warehouse, render every movie's world poster into a posters directory, point a pmg.toml at the world's
Llama and SD (with the [method] they were trained for), and run the soft-prompt training flow on each
user's held-out liked movie. The trained file is copied to OUT/soft_prompt.safetensors.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tasks.miniworld import posters, shipped


@dataclass(frozen=True)
class SoftStageConfig:
    users: int = 600
    movies: int = 400
    steps: int = 300
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 30
    eval_every: int = 25

    @classmethod
    def smoke(cls) -> "SoftStageConfig":
        return cls(users=40, movies=80, steps=6, batch=4, warmup=2, eval_every=3)


def world_warehouse(directory: Path, users: int, movies: int, seed: int) -> tuple[Path, Path]:
    """(warehouse, posters): synthetic MovieLens data ingested, every movie's poster rendered (idempotent)."""
    import pandas as pd

    from warehouse.ingest import ingest
    from warehouse.synth import synthesize

    data = directory / "data"
    if not (data / "ratings.csv").exists():
        synthesize(data, users=users, movies=movies, ratings=users * 40, seed=seed)
    warehouse = directory / "warehouse"
    ingest(data, warehouse)
    movies_df = pd.read_csv(data / "movies.csv")
    poster_dir = directory / "posters"
    posters.render_movie_posters(((int(m), str(g).split("|")) for m, g in zip(movies_df.movieId, movies_df.genres)),
                                 poster_dir, size=shipped.METHOD["height"], seed=seed)
    return warehouse, poster_dir


def train_soft(out_dir, world_dir, seed: int = 0, cfg: SoftStageConfig = SoftStageConfig(),
               emit: Callable[[str], None] | None = None) -> dict:
    """Train the soft prompt against world_dir's llama/ and sd/; writes world_dir/soft_prompt.safetensors."""
    from flows.train import train_soft_prompt_run

    out, world = Path(out_dir), Path(world_dir)
    out.mkdir(parents=True, exist_ok=True)
    warehouse, poster_dir = world_warehouse(out, cfg.users, cfg.movies, seed)
    config = out / "pmg.toml"
    config.write_text(shipped.config_text(world, soft_prompt=False))
    say = emit or (lambda line: None)

    def on_step(row):
        if row.get("eval_loss") is not None:
            say(f"[soft_prompt] step {row['step']}/{cfg.steps} eval loss {row['eval_loss']:.4f}")

    # Redoing the stage trains afresh (the Llama or SD under it may have changed): an earlier run's
    # checkpoints would otherwise be refused by the training flow (it resumes only when asked).
    shutil.rmtree(out / "run", ignore_errors=True)
    summary = train_soft_prompt_run(str(warehouse), str(poster_dir), str(out / "run"), config=str(config),
                                    steps=cfg.steps, lr=cfg.lr, batch=cfg.batch, seed=seed, warmup_steps=cfg.warmup,
                                    eval_every=cfg.eval_every, checkpoint_every=cfg.steps, on_step=on_step)
    shutil.copyfile(summary["soft_prompt"], world / "soft_prompt.safetensors")
    metrics = {"stage": "soft_prompt", "steps": summary["steps"], "examples": summary["examples"],
               "first_eval_loss": summary["first_eval_loss"], "final_eval_loss": summary["final_eval_loss"],
               "loss_fell": bool(summary["final_eval_loss"] < summary["first_eval_loss"]),
               "config": asdict(cfg)}
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    return metrics
