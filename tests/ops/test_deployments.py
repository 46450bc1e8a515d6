"""prefect.yaml against a real `prefect server start`: pool, deploy --all, worker, backfill then nightly."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ops.conftest import FAST, REPO, free_port
from warehouse.db import connect_reader

BIN = Path(sys.executable).parent
POOL = "pmg-local"


def wait_healthy(api: str, proc, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


def prefect(env, *args, timeout_s=120) -> str:
    out = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout_s)
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_deploy_all_then_worker_runs_backfill_and_nightly(make_warehouse, processes, tmp_path):
    root = make_warehouse("wh")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
               PMG_WAREHOUSE=str(root), PMG_JIT="0", PMG_DEVICE="cpu")
    log = tmp_path / "server.log"
    server = processes.start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                              "--no-ui", "--analytics-off"], log, env=env, cwd=tmp_path)
    wait_healthy(api, server, log)

    prefect(env, "work-pool", "create", POOL, "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")
    nightly = httpx.get(f"{api}/deployments/name/nightly/nightly").json()
    assert nightly["global_concurrency_limit"]["limit"] == 1 and nightly["parameters"]["warehouse"] == str(root)
    (schedule,) = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "Europe/Berlin"
    backfill = httpx.get(f"{api}/deployments/name/backfill/backfill").json()
    assert backfill["schedules"] == [] and backfill["work_pool_name"] == POOL

    processes.start([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"],
                    tmp_path / "worker.log", env=env, cwd=tmp_path)
    try:
        prefect(env, "deployment", "run", "backfill/backfill", "--params", json.dumps(FAST),
                "--watch", "--watch-interval", "1", "--watch-timeout", "150", timeout_s=170)
        prefect(env, "deployment", "run", "nightly/nightly",
                "--watch", "--watch-interval", "1", "--watch-timeout", "120", timeout_s=140)
    except AssertionError:
        print((tmp_path / "worker.log").read_text()[-6000:])
        raise
    with connect_reader(root) as con:
        runs = con.execute("SELECT flow, status FROM runs ORDER BY started_at").fetchall()
        posters = con.execute("SELECT count(*) FROM posters").fetchone()[0]
    assert runs == [("backfill", "completed"), ("nightly", "completed")]
    assert posters > 0
