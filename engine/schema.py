"""`python -m engine schema`: the contract between the engine and the add-on, as one JSON object.

Every verb's choice options (their values, labels, descriptions and defaults) come from the verbs' own
parsers, the presets and sizes from model.py, and the file layout of each folder from the module that
owns it, so nothing here restates them. The add-on builds its menus from this answer (a copy generated
from it ships in addon/engine_schema.json for before the engine is set up), and tests/test_schema.py
fails if the two ever differ.
"""

import argparse
import json
from dataclasses import asdict


def add_arguments(parser) -> None:
    pass


def _describe(choices, value) -> dict:
    """A choice's label and description: a dict of Choice (engine.options) gives them, a list only values."""
    named = choices[value] if isinstance(choices, dict) else None
    return {"label": getattr(named, "label", str(value)), "description": getattr(named, "description", "")}


def _options(parser: argparse.ArgumentParser) -> dict:
    """{option: {"default", "choices": {value: {"label", "description"}}}} for each choice option."""
    options = {}
    for action in parser._actions:  # argparse has no public list of a parser's options
        if action.choices and action.option_strings:
            options[max(action.option_strings, key=len).lstrip("-")] = {
                "default": action.default,
                "choices": {str(value): _describe(action.choices, value) for value in action.choices},
            }
    return options


def schema() -> dict:
    from . import __version__, loop, output
    from .__main__ import VERBS, Parser, add_verb_arguments
    from .checkpoints import CHECKPOINTS, STOP_FILE
    from .enhancer import PREVIEW_COLUMNS as ENHANCER_PREVIEW_COLUMNS
    from .faceset import ALIGNMENTS_FILE, ASIDE_DIR, DETECTIONS_FILE, EXTRACT_FILE, MASK_MODEL
    from .model import (
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

    verbs = {}
    for verb in VERBS:
        parser = Parser(prog=f"python -m engine {verb}")
        add_verb_arguments(parser, verb)
        verbs[verb] = _options(parser)
    return {
        "engine": __version__,
        "verbs": verbs,
        "presets": {name: {"label": choice.label, "description": choice.description, **asdict(PRESETS[name])}
                    for name, choice in PRESET_CHOICES.items()},
        "default_presets": DEFAULT_PRESETS,
        "sizes": list(SIZES),
        "stop_reasons": loop.STOP_REASONS,
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
