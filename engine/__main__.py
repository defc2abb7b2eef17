"""`python -m engine VERB`: runs one verb of engine.verbs and turns what goes wrong into one line.

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

from .base.events import EngineError, Events, one_line
from .verbs import VERBS, ParserError, build_parser


def _parse(argv: list[str]) -> argparse.Namespace:
    verb = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(verb).parse_args(argv)
    for name, value in vars(args).items():  # float("nan") and float("inf") parse; no option means them
        if isinstance(value, float) and not math.isfinite(value):
            raise ParserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if isinstance(value, str) and not value.strip():  # not the default: --frames "" is not every frame
            raise ParserError(f"{'--' if name in _option_names(argv) else ''}{name.replace('_', '-')} is empty: "
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
    except ParserError as e:
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
