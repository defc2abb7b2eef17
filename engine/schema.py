"""`python -m engine schema`: the contract between the engine and the add-on, as one JSON object.

Every verb's options (their type, range, default, unit, label and help; a choice's values, labels and
descriptions) come from the verbs' own parsers, which the settings dataclasses make (engine.base.options), the
shape of each verb's "done" event from its module's Done, the presets and sizes from model.py, and the file layout of each folder from the module that
owns it, so nothing here restates them. The add-on builds its menus from this answer (a copy generated
from it ships in addon/engine_schema.json for before the engine is set up), and tests/test_schema.py
fails if the two ever differ.
"""

import argparse
import importlib
import json
from dataclasses import asdict

from .base.options import label_of


def add_arguments(parser) -> None:
    pass


def _describe(choices, value) -> dict:
    """A choice's label and description: a dict of Choice (engine.base.options) gives them, a list only values."""
    named = choices[value] if isinstance(choices, dict) else None
    return {"label": getattr(named, "label", str(value)), "description": getattr(named, "description", "")}


def _type(action: argparse.Action) -> dict:
    """The option's type and, for a number, its range (engine.base.options.number_in keeps it on the type)."""
    if action.nargs == 0:
        return {"type": "bool"}
    if action.choices:
        return {"type": "choice", "choices": {str(value): _describe(action.choices, value) for value in action.choices}}
    kind = getattr(action.type, "kind", action.type)
    if kind not in (int, float):
        return {"type": "str"}
    bounds = {k: getattr(action.type, k, None) for k in ("low", "high", "above", "below")}
    return {"type": kind.__name__, **{k: v for k, v in bounds.items() if v is not None and v is not False}}


def _options(parser: argparse.ArgumentParser) -> dict:
    """{option: {"type", "default", "label", "help", and "choices", "low", "high", "unit" where they apply}}
    for each option of `parser` (a field of a settings dataclass adds its label, unit and default)."""
    options = {}
    for action in parser._actions:  # argparse has no public list of a parser's options
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        name = max(action.option_strings, key=len).lstrip("-")
        setting = getattr(action, "setting", {})
        default = setting.get("default", False if action.nargs == 0 and not action.default else action.default)
        options[name] = {"default": default, **_type(action), "label": setting.get("label", label_of(name)),
                         **{k: setting[k] for k in ("unit", "panel") if k in setting},
                         "help": setting.get("help", action.help or "").replace("%%", "%")}
    return options


def _actions(parser: argparse.ArgumentParser) -> dict:
    """The subcommands of a verb that has them (mask train, mask apply): {name: parser}."""
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def schema() -> dict:
    from . import __version__
    from .base.checkpoints import CHECKPOINTS, STOP_FILE
    from .base.loop import STOP_REASONS
    from .folders import output
    from .folders.faceset import ALIGNMENTS_FILE, ASIDE_DIR, DETECTIONS_FILE, EXTRACT_FILE, MASK_MODEL
    from .networks.enhancer import PREVIEW_COLUMNS as ENHANCER_PREVIEW_COLUMNS
    from .networks.model import (
        DEFAULT_PRESETS,
        ENHANCER,
        HISTORY_FILE,
        PRESET_CHOICES,
        PRESETS,
        PREVIEW_COLUMNS,
        PREVIEW_FILE,
        SIZES,
        SUMMARY_FILE,
    )
    from .verbs import VERBS, Parser, add_verb_arguments

    verbs, done = {}, {}
    for verb, (module, _) in VERBS.items():
        parser = Parser(prog=f"python -m engine {verb}")
        add_verb_arguments(parser, verb)
        verbs[verb] = _options(parser)
        verbs.update({f"{verb} {name}": _options(sub) for name, sub in _actions(parser).items()})
        if hasattr(returns := importlib.import_module(module), "Done"):
            done[verb] = list(returns.Done._fields)
    return {
        "engine": __version__,
        "verbs": verbs,
        "done": done,  # the keys of each verb's "done" event
        "stop_reasons": STOP_REASONS,  # the "stopped" of train's and enhance's, each in the add-on's words
        "presets": {name: {"label": choice.label, "description": choice.description, **asdict(PRESETS[name])}
                    for name, choice in PRESET_CHOICES.items()},
        "default_presets": DEFAULT_PRESETS,
        "sizes": list(SIZES),
        "folders": {
            "faceset": {"alignments": ALIGNMENTS_FILE, "extract": EXTRACT_FILE, "detections": DETECTIONS_FILE,
                        "aside": ASIDE_DIR, "mask_model": MASK_MODEL},
            "model": {"summary": SUMMARY_FILE, "checkpoints": f"{CHECKPOINTS}/model_%08d.pt",
                      "history": HISTORY_FILE, "stop": STOP_FILE, "preview": PREVIEW_FILE,
                      "preview_columns": PREVIEW_COLUMNS, "enhancer": ENHANCER,
                      "enhancer_preview_columns": ENHANCER_PREVIEW_COLUMNS},
            "output": {"manifest": output.MANIFEST_FILE,
                       "files": {fmt: output.file_patterns(spec.extension, True, True)
                                 for fmt, spec in output.FORMATS.items()},
                       "alpha": output.DEFAULT_ALPHA},
        },
    }


def run(args, events) -> None:
    answer = schema()
    if args.events:
        events.done(**answer)
    else:  # what addon/engine_schema.json holds; in the engine's order, which is the menus' order
        print(json.dumps(answer, indent=1))
