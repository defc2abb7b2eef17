"""Settings as dataclasses whose field metadata is the one source of their command-line options, their
checks and their schema entries (`python -m engine schema`, which the add-on and the farm build from).

A field's metadata (see `setting`) holds its help, label, unit, kind, range (low/high, above/below for
open ends) and choices. add_fields makes one option per field (a nested settings dataclass, made with
`group`, gives a family of options named by its flag pattern, e.g. --X-weight), from_args and
changes_from_args read them back, check refuses any value outside the metadata, whoever set it.
"""

import argparse
import math
from dataclasses import MISSING, field, fields, is_dataclass, replace
from typing import NamedTuple

from .events import EngineError


class Choice(NamedTuple):
    """One value of a choice option (an argparse `choices` dict maps each value to one), as the add-on's
    menus show it. New values go at the end of their dict: a .blend stores a choice by its place."""

    label: str
    description: str = ""


def setting(default=MISSING, help: str = "", *, default_factory=MISSING, **metadata):
    """A dataclass field that is a setting: `help` and the metadata keys label, unit, kind (int, float, str;
    else the default's type), low, high, above (low is excluded), below (high is excluded), choices,
    metavar and flag (the option's name where it is not --field-name). A field without help is no option."""
    return field(default=default, default_factory=default_factory, metadata={"help": help, **metadata})


def group(settings_class, title: str, flag: str = "--{}"):
    """A field holding a nested settings dataclass: its fields become the options --`flag` (a pattern of
    the field's name) under `title` in --help."""
    return field(default_factory=settings_class, metadata={"group": title, "flag": flag})


def number_in(low: float | None = None, high: float | None = None, kind=float, above: bool = False,
              below: bool = False):
    """An argparse `type` for a finite `kind` number within [low, high] (above `low` when `above`, below
    `high` when `below`). The bounds stay on it as attributes, for the schema."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"{text} is not {'above' if above else 'at least'} {low:g}")
        if high is not None and (value >= high if below else value > high):
            raise argparse.ArgumentTypeError(f"{text} is {'not below' if below else 'above'} {high:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    parse.kind, parse.low, parse.high, parse.above, parse.below = kind, low, high, above, below
    return parse


class Option(NamedTuple):
    """One command-line option of a settings dataclass: the leaf field, its --flag, its argparse dest and
    the path of field names that reaches it (("loss", "eyes") for --eyes-weight)."""

    field: object
    flag: str
    dest: str
    path: tuple


def options_of(settings_class, prefix: tuple = (), flag: str = "--{}") -> list[Option]:
    """Every option of `settings_class`, its groups' options in place of the group."""
    found = []
    for f in fields(settings_class):
        if "group" in f.metadata:
            found += options_of(f.default_factory().__class__, prefix + (f.name,), f.metadata["flag"])
        elif f.metadata.get("help"):
            name = f.metadata.get("flag") or flag.format(f.name.replace("_", "-"))
            found.append(Option(f, name, "_".join(prefix + (f.name,)), prefix + (f.name,)))
    return found


def kind_of(f):
    """int, float, bool or str: the metadata's kind, else its default's type."""
    if "kind" in f.metadata:
        return f.metadata["kind"]
    default = f.default if f.default is not MISSING else None
    if default is None:
        return float if "low" in f.metadata or "high" in f.metadata else str
    return type(default)


def _type(f):
    kind = kind_of(f)
    if kind in (int, float):
        meta = f.metadata
        return number_in(meta.get("low"), meta.get("high"), kind, meta.get("above", False), meta.get("below", False))
    return None


def add_fields(parser, settings_class, changes: bool = False, own_defaults: bool = True) -> None:
    """One option per option field of the dataclass `settings_class` (options_of), each group's in an
    argument group of its title. Each takes the field's type, range, choices and metavar; a field that
    defaults to False is a switch. With `changes`, every option defaults to None (not given: keep the
    settings' own, as a resume does) and, with `own_defaults`, its help names the field's default."""
    groups = {}
    for option in options_of(settings_class):
        f = option.field
        title = _group_title(settings_class, option.path)
        where = groups.setdefault(title, parser.add_argument_group(title) if title else parser)
        help_text = f.metadata["help"]
        if changes and own_defaults and f.default not in (MISSING, None) and f.default is not False:
            help_text += f" ({f.default:g})" if isinstance(f.default, float | int) else f" ({f.default})"
        kwargs = {"dest": option.dest, "help": help_text}
        if f.default is False:
            kwargs.update(action="store_const", const=True, default=None) if changes else kwargs.update(
                action="store_true")
        else:
            kwargs["default"] = None if changes else f.default
            kwargs.update({k: f.metadata[k] for k in ("choices", "metavar") if k in f.metadata})
            if (kind := _type(f)) is not None:
                kwargs["type"] = kind
        action = where.add_argument(option.flag, **kwargs)
        # for the schema (engine.schema): what argparse has no place for
        action.setting = {k: f.metadata[k] for k in ("label", "unit", "panel", "help") if k in f.metadata}
        if own_defaults and f.default is not MISSING:
            action.setting["default"] = f.default  # what the run uses when the option is not given


def _group_title(settings_class, path: tuple) -> str | None:
    if len(path) < 2:
        return None
    return next(f.metadata["group"] for f in fields(settings_class) if f.name == path[0])


def label_of(flag: str) -> str:
    """The label an option gets where its metadata gives none: --time-budget -> Time Budget."""
    return flag.lstrip("-").replace("-", " ").title()


def from_args(settings_class, args):
    """The `settings_class` that add_fields' options on the command line `args` describe."""
    return settings_class(**{f.name: getattr(args, f.name) for f in fields(settings_class)})


def changes_from_args(settings_class, args) -> dict:
    """The fields of `settings_class` the command line `args` gives (add_fields with `changes`), a
    group's as a dict of its own: {"seed": 3, "loss": {"eyes": 2.0}}."""
    changes = {}
    for option in options_of(settings_class):
        value = getattr(args, option.dest)
        if value is not None:
            *parents, name = option.path
            place = changes
            for parent in parents:
                place = place.setdefault(parent, {})
            place[name] = value
    return changes


def with_changes(settings, changes: dict):
    """`settings` with the (not None) values of `changes` (changes_from_args' shape) in place."""
    changed = {}
    for name, value in changes.items():
        if value is None:
            continue
        current = getattr(settings, name)
        changed[name] = with_changes(current, value) if is_dataclass(current) and isinstance(value, dict) else value
    return replace(settings, **changed)


def check(settings, prefix: str = "--") -> None:
    """Refuse any value outside its field's metadata (kind, range, choices), whoever set it (the command
    line, the Python API, a checkpoint): one line naming it `prefix`+flag."""
    for option in options_of(type(settings)):
        _check_value(option, _value(settings, option.path), prefix)
    for f in fields(settings):  # fields that are no option but are checked: a checkpoint's
        if not f.metadata.get("help") and "group" not in f.metadata and _bounded(f):
            _check_value(Option(f, f.name.replace("_", "-"), f.name, (f.name,)), getattr(settings, f.name), prefix)


def _bounded(f) -> bool:
    return any(k in f.metadata for k in ("low", "high", "choices", "kind"))


def _value(settings, path: tuple):
    for name in path:
        settings = getattr(settings, name)
    return settings


def _check_value(option: Option, value, prefix: str) -> None:
    f, name = option.field, prefix + option.flag.lstrip("-")
    if value is None and f.default is None:
        return
    choices = f.metadata.get("choices")
    if choices is not None:
        if not isinstance(value, type(next(iter(choices)))) or value not in choices:
            raise EngineError(f"{name} {value!r} is not one of {', '.join(map(str, choices))}")
        return
    kind = kind_of(f)
    if kind not in (int, float):
        return
    number = (type(value) is int if kind is int else
              isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))
    meta = f.metadata
    low, high = meta.get("low"), meta.get("high")
    if not number or (low is not None and (value <= low if meta.get("above") else value < low)) or (
            high is not None and (value >= high if meta.get("below") else value > high)):
        raise EngineError(f"{name} must be {describe_range(f)}, got {value!r}")


def describe_range(f) -> str:
    """"a whole number from 1 to 64", "a number above 0 and at most 1", ...: what the field may hold."""
    meta = f.metadata
    low, high, above, below = meta.get("low"), meta.get("high"), meta.get("above"), meta.get("below")
    what = "a whole number" if kind_of(f) is int else "a number"
    if low is not None and high is not None and not (above or below):
        return f"{what} from {low:g} to {high:g}"
    bounds = ([f"{'above' if above else 'at least'} {low:g}"] if low is not None else []) + (
        [f"{'below' if below else 'at most'} {high:g}"] if high is not None else [])
    return " ".join([what, " and ".join(bounds)]) if bounds else what


def split_changes(changes: dict, *settings_classes) -> list[dict]:
    """An API's keywords (train's), one dict per settings class by the top-level option fields each has;
    a keyword none has is the caller's mistake."""
    owners = {option.path[0]: i for i, cls in enumerate(settings_classes) for option in options_of(cls)}
    parts = [{} for _ in settings_classes]
    for name, value in changes.items():
        if name not in owners:
            raise TypeError(f"unexpected keyword argument {name!r}")
        parts[owners[name]][name] = value
    return parts
