"""How the engine talks: JSON lines on stdout for the add-on, a progress bar and a log on stderr for people.

Every event is one JSON object on one line with an "event" key: start, resume, progress, preview,
warning, done, error; and train's late_phase and adversarial_phase, once each where the phase begins. stdout carries nothing else when events are on, so the add-on can parse every line.
"""

import json
import logging
import math
import os
import sys
import time

log = logging.getLogger("engine")
STOP_READER_GONE = "events reader gone"  # the reason a training run stops when its events have no reader


def one_line(text: str) -> str:
    """`text` on one line, its line breaks escaped: an `error:` line that a file name holding a newline
    (or a library's message of many lines) cannot split or forge a second of."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class EngineError(Exception):
    """A problem with the user's input or environment, reported as one line and a non-zero exit."""


def _plain(value):
    """JSON-safe copy: numpy scalars and arrays become Python numbers and lists, NaN becomes null."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Events:
    """One stage's reporter. `json_lines` turns on the stdout protocol; a bar shows only on a terminal."""

    def __init__(self, stage: str, json_lines: bool = False, stdout=None, stderr=None):
        self.stage = stage
        self.json_lines = json_lines
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._bar = None
        self._started = time.monotonic()
        # Set once the reader of the events has gone (Blender closed or crashed, a killed farm worker): a
        # training loop then saves and stops (STOP_READER_GONE) rather than dying on its next event unsaved.
        self.reader_gone = False

    def emit(self, event: str, **fields) -> None:
        if not self.json_lines or self.reader_gone:
            return
        record = {"event": event, "stage": self.stage, **_plain(fields)}
        try:
            self.stdout.write(json.dumps(record) + "\n")
            self.stdout.flush()
        except OSError:  # BrokenPipeError; on Windows a pipe whose reader closed raises EINVAL
            self.reader_gone = True
            if self.stdout is sys.stdout:  # nor may Python's own flush at exit fail on it
                sys.stdout = open(os.devnull, "w")

    def stop_reason(self) -> str | None:
        """STOP_READER_GONE once nobody reads the events any more, else None."""
        return STOP_READER_GONE if self.reader_gone else None

    def start(self, **fields) -> None:
        log.info("%s: start %s", self.stage, " ".join(f"{k}={v}" for k, v in fields.items()))
        self.emit("start", **fields)

    def resume(self, frames_done: int) -> None:
        """A rerun found `frames_done` frames already done by an earlier run, and goes on after them."""
        log.info("%s: resuming, %d frames already done", self.stage, frames_done)
        self.emit("resume", frames_done=frames_done)

    def progress(self, done: int, total: int, **fields) -> None:
        """Report `done` of `total` units; `fields` (fps, loss, ...) go into the event and the bar."""
        self.emit("progress", done=done, total=total, **fields)
        if self.json_lines or not self.stderr.isatty():
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.stage, file=self.stderr, dynamic_ncols=True)
        self._bar.total = total
        self._bar.n = done
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.refresh()

    def preview(self, path: str, **fields) -> None:
        self.emit("preview", path=str(path), **fields)

    def warning(self, message: str, **fields) -> None:
        self._close_bar()
        log.warning("%s", one_line(message))
        self.emit("warning", message=message, **fields)

    def done(self, **summary) -> None:
        self._close_bar()
        summary.setdefault("seconds", round(time.monotonic() - self._started, 3))
        log.info("%s: done %s", self.stage, json.dumps(_plain(summary)))
        self.emit("done", **summary)

    def error(self, message: str) -> None:
        self._close_bar()
        self.emit("error", message=message)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
