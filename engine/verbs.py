"""The engine's verbs and their parsers: what `python -m engine` runs (engine.__main__) and what `python -m
engine schema` publishes (engine.schema), in one table both import."""

import argparse
import importlib

from . import __version__
from .base.device import DEVICES

DESCRIPTION = "The engine's command line: one verb per stage, each a thin wrapper over its module's `run`."


class ParserError(Exception):
    """argparse's complaint about the command line, raised instead of printed so it becomes an error event."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ParserError(f"{self.prog}: {message} (see {self.prog} --help)")


VERBS = {
    "extract": ("engine.stages.extract", "frames -> faceset: detect, align, mask and embed faces"),
    "train": ("engine.stages.train", "two facesets -> model: the shared-encoder, two-decoder autoencoder"),
    "enhance": ("engine.stages.enhance", "trained model + A's faceset -> its enhancer: A's face at 2-4x the model's size"),
    "mask": ("engine.stages.occlusion", "labelled frames -> occlusion mattes: mask train, then mask apply"),
    "convert": ("engine.stages.convert", "shot + alignments + model -> face layers, mattes, frames, patches"),
    "curate": ("engine.stages.curate", "score a faceset, flag bad faces and move them aside"),
    "evaluate": ("engine.stages.evaluate", "measure identity, expression, stability and seams of a converted shot"),
    "weights": ("engine.stages.weights", "fetch the FAN detector's weights into a folder, hash-checked, for offline extract"),
    "info": ("engine.info", "engine version, torch, CUDA and GPU, as the add-on's Check engine shows"),
    "schema": ("engine.schema", "every verb's choices, defaults and folder layouts, as JSON: the add-on's menus"),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `verb`'s module is imported, so `extract` never pays for importing torch."""
    parser = Parser(prog="python -m engine", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"facereplace-engine {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (_, help_text) in VERBS.items():
        add_verb_arguments(verbs.add_parser(name, help=help_text, description=help_text), name, verb == name)
    return parser


def add_verb_arguments(parser: argparse.ArgumentParser, verb: str, with_own: bool = True) -> None:
    """The options every verb takes, and with `with_own` the verb's own (which imports its module)."""
    parser.add_argument("--events", action="store_true", help="JSON lines on stdout, for the add-on")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where torch runs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.set_defaults(module=VERBS[verb][0])
    if with_own:
        importlib.import_module(VERBS[verb][0]).add_arguments(parser)


