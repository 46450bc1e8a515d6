"""Soft-prompt training: held-out (user, target) pairs whose target poster exists → a trained soft prompt.

The flow runs as one process-level job (a Prefect flow for deployments; the CLI calls its body
directly, so no API server starts for a single long job). It reads the pairs through a read-only
warehouse connection, trains (pmg_models.soft_prompt_train), and records the run and the checkpoint
with a short writer connection at the end.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import secrets
from pathlib import Path
from typing import Callable

from prefect import flow

from tasks import evaluation, resources
from tasks.config import load_config
from tasks.pmg import prompts

log = logging.getLogger(__name__)


def new_run_id(kind: str) -> str:
    return f"{kind}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def resolve_models(warehouse, config: str | None = None, **overrides) -> dict:
    """Checkpoint directories (explicit --llm/--sd/--clip/--soft-prompt win over the model config) and the
    config's [method] defaults under "method"."""
    cfg = load_config(Path(warehouse), config)
    out = {k: Path(overrides[k]) if overrides.get(k) else getattr(cfg, k) for k in ("llm", "sd", "clip")}
    soft = overrides.get("soft_prompt") or cfg.soft_prompt
    out["soft_prompt"] = Path(soft) if soft else None
    out["method"] = dict(cfg.method)
    for name in ("llm", "sd", "clip"):
        if name in overrides and not Path(out[name]).is_dir():
            raise ValueError(f"{name} checkpoint directory {out[name]} does not exist (from {cfg.source}); pass "
                             f"--{name} DIR or point the model config at it")
    return out


def record_run(warehouse, run_id: str, kind: str, params: dict, checkpoints: dict, prompt_version: str,
               status: str, counts: dict, extra: Callable | None = None, tables: tuple = ()) -> None:
    """Write the run (and, via `extra(con)`, its rows) with one short writer connection, then publish."""
    from warehouse import queries
    from warehouse.db import connect_writer, publish, transaction

    with connect_writer(Path(warehouse)) as con:
        with transaction(con):
            queries.run(con, "eval_run_start", {"run_id": run_id, "flow": kind, "parameters": json.dumps(params, default=str),
                                                "checkpoints": json.dumps(checkpoints), "prompt_version": prompt_version})
            if extra is not None:
                extra(con)
            queries.run(con, "eval_run_finish", {"run_id": run_id, "status": status,
                                                 "counts": json.dumps(counts, default=str)})
        publish(con, Path(warehouse), ["runs", *tables])


def training_examples(warehouse, posters: Path, lm, limit_users: int | None, n_history: int, style: str, seed: int,
                      method: dict | None = None):
    """(examples, stats): every held-out pair whose target poster exists, with its texts and poster."""
    from pmg_models.soft_prompt_train import Example
    from warehouse.db import connect_reader

    with connect_reader(Path(warehouse)) as con:
        pairset = evaluation.select_pairs(con, posters, limit_users, n_history, style, require_poster=True)
    pairs = pairset.pairs
    method = method or {}
    with_title = bool(method.get("title_in_prompt", True))
    generated = evaluation.fill_item_keywords(
        lm, pairset, [p.target_movie_id for p in pairs] + evaluation.history_movie_ids(pairs),
        n=int(method.get("n_item_keywords", 10)), style=style, seed=seed)
    from tasks.pmg import conditioning

    examples = [Example(p.key, evaluation.soft_text(p, pairset.item_keywords, style),
                        conditioning.sd_prompt_segments(evaluation.target_kw(p, pairset.item_keywords, with_title), [], 0.0),
                        evaluation.read_poster(posters, p.target_movie_id)) for p in pairs]
    return examples, {**pairset.stats, "item_keywords_generated": generated}


def train_soft_prompt_run(warehouse: str, posters: str, out: str, config: str | None = None, llm: str | None = None,
                          sd: str | None = None, steps: int = 1000, lr: float = 1e-3, batch: int = 4,
                          grad_accum: int = 1, n_prefix: int = 4, n_tokens: int = 4, seed: int = 0,
                          resume: bool = False, limit_users: int | None = None, size: int | None = None,
                          warmup_steps: int = 0, weight_decay: float = 0.01, w_soft: float = 1.0,
                          checkpoint_every: int = 100, eval_every: int = 10, n_history: int = 5,
                          prompt_style: str = "vicuna", on_step: Callable | None = None) -> dict:
    """Train the soft prompt; returns a summary dict (paths, losses, counts)."""
    from pmg_models import soft_prompt as S
    from pmg_models import soft_prompt_train as T

    posters_dir = Path(posters)
    if not posters_dir.is_dir():
        raise ValueError(f"posters directory {posters_dir} does not exist; pass --posters DIR with <movieId>.png files")
    cfg = T.TrainConfig(steps=steps, lr=lr, batch=batch, grad_accum=grad_accum, seed=seed, warmup_steps=warmup_steps,
                        weight_decay=weight_decay, w_soft=w_soft, checkpoint_every=checkpoint_every,
                        eval_every=eval_every)
    models = resolve_models(warehouse, config, llm=llm, sd=sd)
    lm, pipe = resources.llm(models["llm"]), resources.sd(models["sd"])
    version = prompts.prompt_version(prompt_style)
    examples, stats = training_examples(warehouse, posters_dir, lm, limit_users, n_history, prompt_style, seed,
                                        models["method"])
    if not examples:
        raise ValueError(f"no training pairs: none of the {stats['users']} users has a held-out liked movie with a "
                         f"poster in {posters_dir} ({stats['without_poster']} targets lack one); render posters first")
    size = int(size or pipe.default_size)
    data = T.prepare(pipe, examples, size)
    soft_cfg = S.SoftPromptConfig.for_models(lm.config, pipe.text_width, lm.fingerprint, pipe.fingerprint,
                                             n_prefix, n_tokens, version)
    soft = S.SoftPrompt(soft_cfg, seed=seed)
    run_id = new_run_id("train-soft-prompt")
    result = T.train(soft, lm, pipe, data, cfg, Path(out), resume=resume, on_step=on_step)
    evals = [r["eval_loss"] for r in result.curve if r.get("eval_loss") is not None]
    trains = [r["train_loss"] for r in result.curve if r.get("train_loss") is not None]
    summary = {"run_id": run_id, "soft_prompt": str(result.final_path), "out_dir": str(result.out_dir),
               "examples": len(examples), "steps": result.steps, "resumed_from": result.resumed_from,
               "first_eval_loss": evals[0] if evals else math.nan, "final_eval_loss": evals[-1] if evals else math.nan,
               "final_train_loss": trains[-1] if trains else math.nan, "size": size, **stats}
    params = {**cfg.as_dict(), "posters": str(posters_dir), "out": str(out), "n_prefix": n_prefix,
              "n_tokens": n_tokens, "limit_users": limit_users, "size": size, "n_history": n_history,
              "prompt_style": prompt_style, "resume": resume}
    fps = {"llm": lm.fingerprint, "sd": pipe.fingerprint}

    def rows(con):
        from warehouse import queries

        queries.run(con, "eval_record_checkpoint", {
            "run_id": run_id, "path": summary["soft_prompt"], "out_dir": summary["out_dir"], "steps": result.steps,
            "examples": len(examples), "final_train_loss": summary["final_train_loss"],
            "first_eval_loss": summary["first_eval_loss"], "final_eval_loss": summary["final_eval_loss"],
            "llm_fingerprint": lm.fingerprint, "sd_fingerprint": pipe.fingerprint, "prompt_version": version})

    try:
        record_run(warehouse, run_id, "train-soft-prompt", params, fps, version, "completed", summary, rows,
                   ("soft_prompt_checkpoints",))
    except RuntimeError as e:  # e.g. a backfill holds the writer: the trained files are what matters
        log.warning("training finished but the run was not recorded in the warehouse: %s", e)
        summary["not_recorded"] = str(e)
    return summary


@flow(name="train-soft-prompt")
def train_soft_prompt(warehouse: str, posters: str, out: str, **kwargs) -> dict:
    """Prefect entry point (deployments); see train_soft_prompt_run for the parameters."""
    return train_soft_prompt_run(warehouse, posters, out, **kwargs)
