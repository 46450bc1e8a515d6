"""The embedded Prefect API leaves nothing for Prefect's unbounded exit-time drain to wait on."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    from flows import prefect_env

    with prefect_env.embedded_api(sys.argv[1]):
        from prefect import flow

        @flow
        def one():
            return 1

        one()   # emits events and logs to the API
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    # _instances: Prefect's registry of running queue services (shared by both classes); at exit each one is drained
    print("running workers:", len({**EventsWorker._instances, **APILogWorker._instances}))
""")


def test_embedded_api_stops_the_event_and_log_workers_before_the_api(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "wh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "running workers: 0" in out.stdout
    assert time.monotonic() - started < 240   # and the process exits without waiting on a dead API
