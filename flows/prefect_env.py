"""The embedded Prefect default: a local API subprocess whose state lives inside the warehouse.

Prefect 3 has no server-less mode; without PREFECT_API_URL it starts a temporary API server. We
start that same server ourselves so that (1) PREFECT_HOME sits in <warehouse>/prefect, (2) nothing
phones home, (3) start-up may take up to 90 s on a loaded 2-core box, and (4) the server's output
goes to <warehouse>/prefect/server.log: on shutdown Prefect 3.9's task-run recorder logs
"Error flushing N events" with CancelledError tracebacks, which is harmless noise users must not
see. With PREFECT_API_URL already set (a real `prefect server start`, or a test harness) nothing
is started.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Iterator
from unittest import mock

STARTUP_TIMEOUT_S = 90
STOP_GRACE_S = 2.0
DRAIN_TIMEOUT_S = 10.0


def configure(warehouse: Path | str, quiet: bool = False) -> Path:
    """Set Prefect's environment for this process (call before importing prefect); returns PREFECT_HOME.

    quiet: keep Prefect's own console logs (run states, failure tracebacks) off the terminal; the
    API still records them.
    """
    home = Path(warehouse).resolve() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(STARTUP_TIMEOUT_S))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the CLI shows its own progress
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    return Path(os.environ["PREFECT_HOME"])


@contextlib.contextmanager
def embedded_api(warehouse: Path | str) -> Iterator[str | None]:
    """Run the body against a quiet local Prefect API (or the configured one); yields its URL."""
    home = configure(warehouse)
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = _quiet_server(home / "server.log")
    server.start(timeout=STARTUP_TIMEOUT_S)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _flush_logs()
                drain_workers()
    finally:
        _stop(server)


def _quiet_server(log_path: Path):
    from prefect.server.api.server import SubprocessASGIServer

    class QuietServer(SubprocessASGIServer):
        """Prefect's temporary API server with its stdout/stderr sent to a log file."""

        def _run_uvicorn_command(self):
            real_popen = subprocess.Popen
            log = open(log_path, "ab")

            def popen(*args, **kwargs):
                kwargs.update(stdout=log, stderr=subprocess.STDOUT)
                return real_popen(*args, **kwargs)

            try:
                # Prefect builds the command line and environment; only the output streams change.
                with mock.patch.object(subprocess, "Popen", popen):
                    return super()._run_uvicorn_command()
            finally:
                log.close()  # the child keeps its own descriptor

    return QuietServer()


def _flush_logs() -> None:
    """Send buffered run logs while the API is still up (else Prefect prints 'Error logging to API')."""
    try:
        from prefect.logging.handlers import APILogHandler

        APILogHandler.flush()
    except Exception:  # noqa: BLE001 - logs are observability only; never fail the command here
        pass


def drain_workers(timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
    """Deliver queued events and logs while the API is up, and stop their workers; True if all finished.

    Prefect drains both at interpreter exit with no time limit; once the API is gone each queued
    event waits on reconnects to a dead address, which held a test session's exit for an hour.
    Workers started later (another API in the same process) are new instances.
    """
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        pending = 0
        for worker in (EventsWorker, APILogWorker):
            _, not_done = worker.drain_all(timeout=timeout_s, at_exit=False)
            pending += len(not_done)
        return pending == 0
    except Exception:  # noqa: BLE001 - observability only; never fail the command here
        return False


def _stop(server) -> None:
    proc = server.server_process
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            # The API holds only observability data (the warehouse is the system of record).
            proc.kill()
            proc.wait()
    server.stop()
    # Prefect's log worker drains once more at interpreter exit; with the API gone it would print
    # "Error logging to API". Those records are observability only: drop them quietly.
    logging.raiseExceptions = False
