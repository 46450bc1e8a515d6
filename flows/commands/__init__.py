"""Command groups of the `pmg` CLI, one module each (see flows.cli)."""
import argparse


def seed_arg(text: str) -> int:
    """argparse type of every --seed: a non-negative integer below 2^63 (NumPy's generators refuse negatives)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer below 2^63, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (a negative one reached SQL's LIMIT as a traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value
