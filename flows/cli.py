"""The `pmg` command line. Each command group lives in flows/commands/<group>.py with a `register()`.

Start-up stays fast: command modules import heavy libraries (MindSpore, Prefect) inside handlers.
Errors print one sentence on stderr and exit non-zero; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = ("data", "models", "pipeline", "method", "miniworld")
EXPECTED_ERRORS = (ValueError, OSError, LookupError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pmg", description="Personalized posters for every user (PMG, WWW'24).")
    parser.add_argument("--warehouse", default=os.environ.get("PMG_WAREHOUSE", "./pmg-warehouse"),
                        help="warehouse directory (env PMG_WAREHOUSE; default ./pmg-warehouse)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"flows.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"flows.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("pmg: interrupted; committed work is kept, re-run the same command to continue.", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if args.debug:
            raise
        print(f"pmg: error: {one_sentence(e)}", file=sys.stderr)
        return 1


def one_sentence(exc: BaseException) -> str:
    """The exception's message on one line (never empty)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())
