"""Shared fixtures: every test runs on CPU in blocking PyNative unless it asks for compilation."""
import os

os.environ.setdefault("PMG_DEVICE", "cpu")
os.environ.setdefault("PMG_JIT", "0")  # fast tests; compiled-mode tests set PMG_JIT=1 in a subprocess or toggle runtime
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def pytest_sessionfinish(session, exitstatus):
    session.config._pmg_exitstatus = int(exitstatus)


def pytest_unconfigure(config):
    """Never let Prefect's exit-time drain hold the session (it has no time limit; see prefect_env.drain_workers)."""
    import sys

    if "prefect" not in sys.modules:
        return
    from flows.prefect_env import drain_workers

    if not drain_workers(timeout_s=30):
        sys.stderr.write("warning: Prefect's event/log workers did not drain within 30 s; exiting without them\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(config, "_pmg_exitstatus", 1))
