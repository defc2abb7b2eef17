"""Command-line value types that refuse, at parse time, numbers no run can use (NaN, out of range)."""

import argparse
import math


def number_in(low: float | None = None, high: float | None = None, kind=float, above: bool = False):
    """An argparse `type` for a finite `kind` number within [low, high] (above `low` when `above`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"{text} is not {'above' if above else 'at least'} {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} is above {high:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
