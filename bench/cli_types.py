"""argparse types the benchmarks share."""

from __future__ import annotations

import argparse


def count(text: str) -> int:
    """A number of repeats: an integer >= 1 (a median of no pairs is no measurement)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
