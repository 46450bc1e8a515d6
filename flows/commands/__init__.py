"""Command groups of the `pmg` CLI, one module each (see flows.cli)."""
import argparse


def seed_arg(text: str) -> int:
    """argparse type of every --seed: the runs' seed rule (conditioning.check_seed), checked while parsing."""
    from tasks.pmg.conditioning import check_seed  # only when a --seed is given: it loads NumPy

    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer below 2^63, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (a negative one reached SQL's LIMIT as a traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value
