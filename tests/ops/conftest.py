"""Shared pieces of the operations tests: tiny models, a tiny dataset, small warehouses, process groups."""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

# Small enough that a backfill of a few users takes seconds on tiny models.
FAST = {"candidates": 2, "steps": 2, "height": 32, "width": 32, "chunk_size": 2}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ops_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ops")


@pytest.fixture(scope="session")
def tiny_models(ops_dir) -> Path:
    from flows.demo import make_tiny_models

    make_tiny_models(ops_dir / "models-home")
    return ops_dir / "models-home" / "models" / "tiny"


@pytest.fixture(scope="session")
def dataset(ops_dir) -> Path:
    from warehouse.synth import synthesize

    return synthesize(ops_dir / "ml-tiny", users=5, movies=60, ratings=5 * 24, seed=7)


def new_warehouse(root: Path, tiny_models: Path, dataset: Path) -> Path:
    """A warehouse with the dataset ingested and pmg.toml naming the tiny models."""
    from warehouse.ingest import ingest

    root.mkdir(parents=True)
    (root / "pmg.toml").write_text(
        f'[models]\nllm = "{tiny_models / "llm"}"\nsd = "{tiny_models / "sd"}"\nclip = "{tiny_models / "clip"}"\n')
    ingest(dataset, root)
    return root


@pytest.fixture
def make_warehouse(tmp_path, tiny_models, dataset):
    return lambda name="wh": new_warehouse(tmp_path / name, tiny_models, dataset)


@pytest.fixture(scope="session")
def backfilled(ops_dir, prefect_api, tiny_models, dataset):
    """One finished backfill (thread runner, holdout targets) shared by read-only tests: (root, result)."""
    from flows.backfill import backfill

    root = new_warehouse(ops_dir / "backfilled", tiny_models, dataset)
    return root, backfill(warehouse=str(root), targets="holdout", **FAST)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Background processes, each in its own process group, all stopped by stop_all()."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
        out = open(log, "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        out.close()
        self.procs.append(proc)
        return proc

    def stop_all(self, grace_s: float = 10.0) -> None:
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # children (flow runs) may outlive their parent
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def processes():
    group = Processes()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="session")
def prefect_api(ops_dir):
    """One quiet local Prefect API for in-process flows of the session."""
    from flows import prefect_env

    with prefect_env.embedded_api(ops_dir / "prefect-wh") as url:
        yield url
