"""Command-line value types that refuse, at parse time, numbers no run can use (NaN, out of range), and
the named choices that `python -m engine schema` publishes to the add-on."""

import argparse
import math
from dataclasses import fields
from typing import NamedTuple


class Choice(NamedTuple):
    """One value of a choice option (an argparse `choices` dict maps each value to one), as the add-on's
    menus show it. New values go at the end of their dict: a .blend stores a choice by its place."""

    label: str
    description: str = ""


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


def add_fields(parser, settings_class) -> None:
    """One option per field of the dataclass `settings_class`: --field-name with the field's default, and
    the help, choices, type and metavar its metadata gives; a field that defaults to False is a switch."""
    for f in fields(settings_class):
        flag = "--" + f.name.replace("_", "-")
        if f.default is False:
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            parser.add_argument(flag, default=f.default, help=f.metadata["help"],
                                **{k: f.metadata[k] for k in ("type", "choices", "metavar") if k in f.metadata})


def from_args(settings_class, args):
    """The `settings_class` that add_fields' options on the command line `args` describe."""
    return settings_class(**{f.name: getattr(args, f.name) for f in fields(settings_class)})
