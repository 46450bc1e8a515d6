"""The `pmg` command line: fast start-up, one-sentence errors, no tracebacks unless --debug."""
import argparse
import subprocess
import sys

import pytest

from flows import cli


def _pmg(*args, **kw):
    return subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True, **kw)


def test_building_the_parser_imports_no_heavy_library():
    code = ("import sys, flows.cli as c; c.build_parser(); "
            "heavy = [m for m in ('mindspore', 'prefect', 'torch', 'duckdb') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_user_error_is_one_sentence_without_traceback(tmp_path):
    out = _pmg("models", "info", str(tmp_path / "missing"))
    assert out.returncode == 1
    assert out.stderr.startswith("pmg: error: ") and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    out = _pmg("--debug", "models", "info", str(tmp_path / "missing"))
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_every_contract_command_is_registered():
    parser = cli.build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    for name in ("models",):
        assert name in commands


def test_a_bad_backfill_or_nightly_request_is_refused_before_prefect_starts(tmp_path):
    """Prefect's start-up takes seconds: argument mistakes are reported before it (and without models)."""
    cases = {
        ("backfill", "--limit-users", "2"): "choose the targets",
        ("backfill", "--targets", "holdout", "--movie", "1"): "choose the targets",
        ("backfill", "--targets", str(tmp_path / "pairs.csv")): "pairs.csv does not exist",
        ("backfill", "--targets", "holdout", "--users", str(tmp_path / "u.csv")): "u.csv does not exist",
        ("backfill", "--targets", "holdout", "--limit-users", "0"): "--limit-users must be at least 1",
        ("nightly", "--source", str(tmp_path / "ml")): "does not exist; give a MovieLens directory",
        ("nightly",): "no warehouse at",
        ("--warehouse", str(tmp_path / "ingested"), "nightly"): "no finished backfill in",
        ("demo", "--size", "30"): "--size must be a positive multiple of 8, got 30",
        ("demo", "--candidates", "0"): "--candidates must be at least 1",
        ("train-miniworld", str(tmp_path / "wh"), "--stages", "", "--ship"): "lacks llama, sd, clip",
    }
    from warehouse.ingest import ingest
    from warehouse.synth import synthesize

    ingest(synthesize(tmp_path / "ml-synth", users=5, movies=40, ratings=100), tmp_path / "ingested")
    code = ("import sys, flows.cli as c; rc = c.main(sys.argv[1:]); "
            "print('prefect' in sys.modules, 'mindspore' in sys.modules); sys.exit(rc)")
    for args, message in cases.items():
        out = subprocess.run([sys.executable, "-c", code, "--warehouse", str(tmp_path / "wh"), *args],
                             capture_output=True, text=True)
        assert out.returncode == 1, (args, out.stderr)
        assert message in out.stderr and out.stderr.startswith("pmg: error: "), (args, out.stderr)
        assert out.stdout.split() == ["False", "False"], (args, out.stdout)
    assert not (tmp_path / "wh").exists()  # nothing was made for a refused request


def test_every_seed_flag_takes_only_non_negative_integers():
    from flows.commands import seed_arg

    assert seed_arg("0") == 0 and seed_arg(str(2**63 - 1)) == 2**63 - 1
    for bad in ("-1", str(2**63), "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="non-negative integer"):
            seed_arg(bad)

    def seed_actions(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from seed_actions(sub)
            elif "--seed" in action.option_strings:
                yield action

    seeds = list(seed_actions(cli.build_parser()))
    assert len(seeds) >= 8 and all(a.type is seed_arg for a in seeds)


def test_counts_that_reach_sql_limits_must_be_positive(tmp_path):
    for args in (("status", "--runs", "-1"), ("sql", "select 1", "--max-rows", "0"),
                 ("backfill", "--targets", "holdout", "--runner", "dask", "--dask-workers", "0"),
                 ("models", "generate", str(tmp_path), "x", "--max-new-tokens", "-1")):
        out = _pmg("--warehouse", str(tmp_path), *args)
        assert out.returncode == 2 and "must be a whole number of at least 1" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
