"""`--runner dask`: the same flows with chunk tasks on a Dask cluster (prefect-dask's DaskTaskRunner).

Only the flow process opens the warehouse (it holds the writer lock for the whole run); a worker
reads its chunk's staged Parquet input, writes content-addressed images and a staged Parquet part,
and returns paths. So every worker needs: this package installed (same version), the warehouse
directory and the checkpoints at the same paths (a shared filesystem), and its device (PMG_DEVICE).
A worker process loads each model once and reuses it for every chunk it runs (tasks.resources);
one thread per worker keeps one chunk per device at a time.
"""
from __future__ import annotations

import os

DEFAULT_WORKERS = 2


def dask_task_runner(address: str | None = None, n_workers: int | None = None):
    """A DaskTaskRunner on the cluster at `address`, else on a temporary local cluster of processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    n = n_workers if n_workers is not None else int(os.environ.get("PMG_DASK_WORKERS", DEFAULT_WORKERS))
    if n < 1:
        raise ValueError(f"--dask-workers must be at least 1, got {n}")
    return DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(n))


def local_cluster_kwargs(n_workers: int) -> dict:
    """Worker processes with one thread each (one chunk per process and device), no dashboard."""
    return {"n_workers": n_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


def is_dask(task_runner) -> bool:
    """Whether the tasks run in Dask workers (not in the flow's process)."""
    return type(task_runner).__name__ == "DaskTaskRunner"  # no import: prefect-dask is an optional extra


def model_processes(task_runner) -> int:
    """Processes on this machine that load the models under `task_runner`: this one (thread runner), a
    temporary local cluster's workers, or none (a cluster at an address runs them elsewhere)."""
    if not is_dask(task_runner):
        return 1
    if task_runner.address:
        return 0
    return int((task_runner.cluster_kwargs or {}).get("n_workers", DEFAULT_WORKERS))


def task_runner_for(runner: str, address: str | None = None, n_workers: int | None = None):
    """The task runner by name: 'thread' (default) or 'dask' (--runner, or env PMG_RUNNER)."""
    if runner not in ("thread", "dask"):
        raise ValueError(f"unknown task runner {runner!r} (PMG_RUNNER or --runner): use thread or dask")
    if runner == "dask":
        return dask_task_runner(address, n_workers)
    if address:
        raise ValueError("--dask-address needs --runner dask")
    from flows.runner import thread_runner

    return thread_runner()
