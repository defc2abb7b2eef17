"""The engine's command line: one verb per stage, each a thin wrapper over its module's `run`.

Each stage module defines `add_arguments(parser)` and `run(args, events)`. Errors the user can fix are
EngineError: one line on stderr (and an "error" event), exit status 2.
"""

import argparse
import importlib
import logging
import sys
import traceback

from . import __version__
from .events import EngineError, Events

VERBS = {
    "extract": ("engine.extract", "frames -> faceset: detect, align, mask and embed faces"),
    "train": ("engine.train", "two facesets -> model: the shared-encoder, two-decoder autoencoder"),
    "convert": ("engine.convert", "shot + alignments + model -> face layers, mattes, frames, patches"),
    "curate": ("engine.curate", "score a faceset, flag bad faces and move them aside"),
    "evaluate": ("engine.evaluate", "measure identity, expression, stability and seams of a converted shot"),
    "info": ("engine.info", "engine version, torch, CUDA and GPU, as the add-on's Check engine shows"),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `verb`'s module is imported, so `extract` never pays for importing torch."""
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"facereplace-engine {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (module_name, help_text) in VERBS.items():
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--events", action="store_true", help="JSON lines on stdout, for the add-on")
        sub.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where torch runs")
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
        sub.set_defaults(module=module_name)
        if verb == name:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(verb).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    events = Events(args.verb, json_lines=args.events)
    try:
        importlib.import_module(args.module).run(args, events)
    except EngineError as e:
        events.error(str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        events.error("interrupted")
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: keep the traceback for the report
        traceback.print_exc()
        events.error(f"internal error: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
