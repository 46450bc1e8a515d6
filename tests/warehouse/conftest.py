"""Shared fixtures for warehouse tests: small synthetic datasets and a `pmg` subprocess runner."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from warehouse.synth import synthesize

REPO = Path(__file__).resolve().parents[2]
SMALL = {"users": 30, "movies": 200, "ratings": 1500, "seed": 3}


def pmg(*args: str, warehouse: Path | None = None, env: dict | None = None, timeout: float = 120,
        check: bool = False) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would)."""
    argv = [sys.executable, "-m", "flows"]
    if warehouse is not None:
        argv += ["--warehouse", str(warehouse)]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"pmg {' '.join(args)} failed: {result.stderr}")
    return result


@pytest.fixture(scope="session")
def small_source(tmp_path_factory) -> Path:
    """A small clean synthetic dataset (read-only: copy it before editing)."""
    return synthesize(tmp_path_factory.mktemp("synth") / "ml-small", **SMALL)


@pytest.fixture
def source_copy(small_source, tmp_path) -> Path:
    """A private editable copy of the small dataset."""
    out = tmp_path / "src"
    shutil.copytree(small_source, out)
    return out
