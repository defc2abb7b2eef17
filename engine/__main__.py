"""The engine's command line: one verb per stage, each a thin wrapper over its module's `run`.

Each stage module defines `add_arguments(parser)` and `run(args, events)`. Errors the user can fix are
EngineError: one line on stderr (and an "error" event), exit status 2. So are a command line the parser
refuses and a failure of the machine (a full disk, no memory) rather than of the engine.
"""

import argparse
import contextlib
import errno
import importlib
import logging
import math
import os
import sys
import traceback

from . import __version__
from .device import DEVICES
from .events import EngineError, Events, one_line


class _ParserError(Exception):
    """argparse's complaint about the command line, raised instead of printed so it becomes an error event."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _ParserError(f"{self.prog}: {message} (see {self.prog} --help)")


VERBS = {
    "extract": ("engine.extract", "frames -> faceset: detect, align, mask and embed faces"),
    "train": ("engine.train", "two facesets -> model: the shared-encoder, two-decoder autoencoder"),
    "enhance": ("engine.enhance", "trained model + A's faceset -> its enhancer: A's face at 2-4x the model's size"),
    "mask": ("engine.occlusion", "labelled frames -> occlusion mattes: mask train, then mask apply"),
    "convert": ("engine.convert", "shot + alignments + model -> face layers, mattes, frames, patches"),
    "curate": ("engine.curate", "score a faceset, flag bad faces and move them aside"),
    "evaluate": ("engine.evaluate", "measure identity, expression, stability and seams of a converted shot"),
    "weights": ("engine.weights", "fetch the FAN detector's weights into a folder, hash-checked, for offline extract"),
    "info": ("engine.info", "engine version, torch, CUDA and GPU, as the add-on's Check engine shows"),
    "schema": ("engine.schema", "every verb's choices, defaults and folder layouts, as JSON: the add-on's menus"),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `verb`'s module is imported, so `extract` never pays for importing torch."""
    parser = Parser(prog="python -m engine", description=__doc__.splitlines()[0])
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


def _parse(argv: list[str]) -> argparse.Namespace:
    verb = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(verb).parse_args(argv)
    for name, value in vars(args).items():  # float("nan") and float("inf") parse; no option means them
        if isinstance(value, float) and not math.isfinite(value):
            raise _ParserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if isinstance(value, str) and not value.strip():  # not the default: --frames "" is not every frame
            raise _ParserError(f"{'--' if name in _option_names(argv) else ''}{name.replace('_', '-')} is empty: "
                               f"give a value, or leave the option out for its default")
    return args


def _option_names(argv: list[str]) -> set[str]:
    return {a.lstrip("-").split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


@contextlib.contextmanager
def _stdout_for_events():
    """With --events, stdout carries only the events: anything else printed there (a library's
    "Downloading ..." line, a C library writing to file descriptor 1) goes to stderr for the whole run.
    Yields the stream the events go to."""
    events_out = sys.stdout
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it): Python-level only
        descriptor = None
    if descriptor is not None:
        sys.stdout.flush()
        events_out = os.fdopen(os.dup(descriptor), "w", buffering=1)
        os.dup2(sys.stderr.fileno(), descriptor)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield events_out
    finally:
        if descriptor is not None:
            os.dup2(events_out.fileno(), descriptor)
            with contextlib.suppress(OSError):  # a pipe whose reader went away (Events.reader_gone)
                events_out.close()  # flushes first


def _fail(events: Events | None, message: str, code: int = 2) -> int:
    message = one_line(message)  # a newline in a path or a library's message must not forge another line
    if events is not None:
        events.error(message)
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _parse(argv)
    except _ParserError as e:
        verb = next((a for a in argv if a in VERBS), "engine")
        return _fail(Events(verb, json_lines="--events" in argv), str(e))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    with _stdout_for_events() if args.events else contextlib.nullcontext(sys.stdout) as stdout:
        events = Events(args.verb, json_lines=args.events, stdout=stdout)
        try:
            importlib.import_module(args.module).run(args, events)
        except EngineError as e:
            return _fail(events, str(e))
        except KeyboardInterrupt as e:
            return _fail(events, str(e) or "interrupted", 130)
        except MemoryError:
            return _fail(events, "out of memory (a smaller --batch, --size or frame range needs less)")
        except OSError as e:  # the machine, not the engine: a full disk, a vanished mount, a quota
            where = f" ({e.filename})" if e.filename else ""
            reason = "no space left on the disk" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
            return _fail(events, f"{reason}{where}")
        except Exception as e:  # a bug, not bad input: keep the traceback for the report
            traceback.print_exc()
            events.error(f"internal error: {type(e).__name__}: {e}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
