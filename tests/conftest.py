"""Shared fixtures: every test runs on CPU in blocking PyNative unless it asks for compilation."""
import os

os.environ.setdefault("PMG_DEVICE", "cpu")
os.environ.setdefault("PMG_JIT", "0")  # fast tests; compiled-mode tests set PMG_JIT=1 in a subprocess or toggle runtime
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
