"""Flow parameters -> the task parameter dict and the run's lineage (checkpoints, prompt version)."""
from __future__ import annotations

import os
from pathlib import Path

from tasks import resources
from tasks.config import check_dirs, load_config
from tasks.pmg import conditioning, prompts, scoring

# Defaults sized for CPU; real checkpoints on an accelerator want steps 30, 512x512 and bigger chunks.
DEFAULTS = {
    "candidates": 2, "alpha": scoring.DEFAULT_ALPHA, "steps": 20, "guidance": 7.5, "height": 512, "width": 512,
    "seed": 0, "chunk_size": 16, "image_batch": 4, "n_history": 5, "n_pref_keywords": 8, "n_item_keywords": 10,
    "max_new_tokens_pref": 64, "max_new_tokens_item": 48, "prompt_style": "vicuna",
    "weights": list(conditioning.DEFAULT_WEIGHTS), "soft_scale": 1.0, "title_in_prompt": True,
}


def resolve(warehouse, overrides: dict, config: str | None = None) -> tuple[dict, dict]:
    """(task params, lineage) for a run; checks the model directories and parameter ranges."""
    cfg = load_config(Path(warehouse), config)
    check_dirs(cfg)
    os.environ.setdefault("PMG_DEVICE", cfg.device)
    p = {**DEFAULTS, **cfg.method, **{k: v for k, v in overrides.items() if v is not None}}
    _check(p)
    checkpoints = {"llm": resources.fingerprint(cfg.llm), "sd": resources.fingerprint(cfg.sd),
                   "clip": resources.fingerprint(cfg.clip)}
    if cfg.soft_prompt is not None:
        checkpoints["soft_prompt"] = resources.file_sha256(cfg.soft_prompt)
    version = prompts.prompt_version(p["prompt_style"])
    p.update(models={k: str(getattr(cfg, k)) for k in ("llm", "sd", "clip")}, checkpoints=checkpoints,
             prompt_version=version, soft_prompt=str(cfg.soft_prompt) if cfg.soft_prompt else None)
    return p, {"checkpoints": checkpoints, "prompt_version": version, "config": cfg.source}


def check_device(source: str) -> None:
    """The configured device (PMG_DEVICE, else the config's [runtime] device) must be one pmg_models runs on."""
    from pmg_models import runtime  # loads MindSpore: called by flows, which use it anyway

    try:
        runtime.device()
    except ValueError as e:
        raise ValueError(f"{e} (from env PMG_DEVICE, else [runtime] device in {source})") from None


def check_soft_prompt(p: dict) -> None:
    """A configured soft prompt must have been trained for the configured LLM and SD (else every user fails)."""
    if p.get("soft_prompt"):
        from pmg_models import soft_prompt

        soft_prompt.check_trained_for(p["soft_prompt"], p["checkpoints"]["llm"], p["checkpoints"]["sd"])


def check_memory(p: dict, task_runner=None) -> None:
    """The largest configured model must fit in memory in every process on this machine that runs the
    flow's tasks under `task_runner` (the stages use one model each; tasks.resources releases loaded
    models when the next one would not fit next to them)."""
    from flows.dask_runner import model_processes
    from pmg_models import info, runtime  # loads MindSpore: called by flows, which use it anyway

    processes = model_processes(task_runner)
    if processes:  # none here when the tasks run on a remote Dask cluster
        sizes = {kind: info.parameters(path) or 0 for kind, path in p["models"].items()}
        largest = max(sizes, key=sizes.get)
        runtime.check_host_memory({largest: sizes[largest]}, processes)


def check_flags(overrides: dict) -> None:
    """The range checks of resolve() on the flags alone, before any model or data exists."""
    _check({**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}})


def _check(p: dict) -> None:
    if not 0.0 <= float(p["alpha"]) <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1], got {p['alpha']}")
    conditioning.check_seed(p["seed"])
    for name in ("candidates", "steps", "chunk_size", "image_batch"):
        if int(p[name]) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {p[name]}")
    for name in ("height", "width", "size"):  # size: the demo's flag for both
        if name in p and (int(p[name]) < 8 or int(p[name]) % 8):
            raise ValueError(f"--{name} must be a positive multiple of 8, got {p[name]}")
