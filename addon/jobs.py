"""Engine runs inside Blender: one job at a time, polled from a bpy.app.timers callback in the UI, and run
to completion in a loop when Blender is headless (bpy.app.background), so scripts and farms block until
the work is done and fail loudly.

A job is a list of steps (extract A then B; make a venv, pip install, check), each one subprocess. Live
state (progress, loss, it/s, ETA) stays here in Python, not in the .blend, so it is neither saved nor
undone. What a step produces goes into the scene when it finishes, through its `finish` callback; in the
UI that happens from the timer, so the job pushes an undo step of its own for it.
"""

import atexit
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bpy
from bpy.app.handlers import persistent

from . import previews
from .core.panel_state import format_seconds
from .engine_client import ClientError, EngineProcess
from .preferences import prefs

POLL_S = 0.2
PRINT_EVERY_S = 2.0  # how often headless runs print progress to the console
EXIT_AFTER_ERROR_S = 10.0  # an engine that reported its error and still runs (a hung peer) is then stopped
# The fields of an event that the panel and the console do arithmetic with; any other type is dropped.
NUMBERS = ("done", "total", "iteration", "loss_a", "loss_b", "val_loss_a", "val_loss_b", "it_per_s", "fps", "eta_s")
TEXTS = ("event", "phase", "message", "path", "line", "stopped")


class JobFailed(Exception):
    """A step of a job failed; the message is the engine's own."""


@dataclass
class Step:
    label: str  # what the user sees: "Extract A", "Train"
    argv: list[str]
    # Applies the step's "done" summary to the scene and returns the line to report.
    finish: Callable[[bpy.types.Scene, dict], str] | None = None
    stop_file: Path | None = None  # train: the file that makes it save and stop
    log: Path | None = None
    grace_s: float = 5.0  # how long a stop may take before SIGTERM; for train, time to save
    expected_packages: int = 0  # pip: "Collecting" lines expected, for a progress estimate
    env: dict[str, str] = field(default_factory=dict)  # added to the engine's environment


@dataclass
class Job:
    stage: str
    scene: str  # the scene's name: the Python object may be gone after an undo or a file load
    steps: list[Step]
    index: int = 0
    process: EngineProcess | None = None
    summary: dict | None = None  # the running step's "done" event
    progress: float = 0.0  # 0..1 over all steps
    text: str = ""
    live: dict = field(default_factory=dict)  # the latest progress event: iteration, losses, it/s, ETA
    warnings: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    cancelled: bool = False
    collected: int = 0
    printed_at: float = 0.0
    failed_at: float | None = None  # when the running step reported its error

    @property
    def step(self) -> Step:
        return self.steps[self.index]


_active: Job | None = None
# (level, message) of the last job that ended, shown in the panel until the next one starts (a message of
# several results has one a line); its stage, and the log of its last step (Open Log).
last_report: tuple[str, str] | None = None
last_stage: str = ""
last_log: Path | None = None


def active() -> Job | None:
    return _active


def record_failure(stage: str, message: str) -> None:
    """A job of `stage` failed, or was refused before it started: the panel shows why. A failed Check
    Engine (or a failed Set up Engine while no engine works) is what the preferences say of the engine
    until the next run, replacing any earlier error."""
    global last_report, last_stage
    last_report, last_stage = ("ERROR", message), stage
    preferences = prefs()
    if stage == "check" or (stage == "setup" and not preferences.engine_ok):
        preferences.engine_ok, preferences.engine_error = False, message


def _engine_ran() -> None:
    """An engine step finished and reported its results: the engine works, whatever an earlier check said."""
    preferences = prefs()
    if not preferences.engine_ok or preferences.engine_error:
        preferences.engine_ok, preferences.engine_error = True, ""


def run(stage: str, scene: bpy.types.Scene, steps: list[Step], wait: bool) -> str:
    """Start a job. With `wait`, block until it ends and return its report (raising JobFailed or
    ClientError on failure); otherwise start it under the timer and return at once."""
    global _active, last_report, last_stage, last_log
    if _active is not None:
        raise ClientError(f"FaceReplace is busy ({_active.text or _active.stage}): wait for it or cancel it")
    job = Job(stage, scene.name, steps)
    last_report = None
    if wait:
        try:
            report = _run_blocking(job)
        except (JobFailed, ClientError) as e:
            record_failure(stage, str(e))
            raise
        finally:
            last_stage, last_log = job.stage, job.step.log
        last_report = ("INFO", report)
        return report
    _start_step(job)
    _active = job
    if not bpy.app.timers.is_registered(poll):
        bpy.app.timers.register(poll, first_interval=POLL_S)
    _redraw()
    return ""


def cancel() -> None:
    """Ask the running job to stop; the timer sees it end. Train saves first (its stop file)."""
    if _active is not None:
        _active.cancelled = True
        _active.text = f"Stopping {_active.step.label}..."
        _active.process.request_stop()
        _redraw()


def stop_all() -> None:
    """Stop the running job and wait for it: the file is closing or the add-on is being disabled."""
    global _active
    job, _active = _active, None
    if job is not None:
        job.cancelled = True
        print(f"FaceReplace: stopping {job.step.label}")
        job.process.stop(job.step.grace_s)


# ---------------------------------------------------------------- running


def _start_step(job: Job) -> None:
    job.summary = None
    job.collected = 0
    job.failed_at = None
    job.text = f"{job.step.label}..."
    job.process = EngineProcess(job.step.argv, log_path=job.step.log, stop_file=job.step.stop_file,
                                env=job.step.env)


def _end_step(job: Job) -> None:
    """Apply a finished step to the scene; a failure (not a requested stop) raises JobFailed."""
    code = job.process.returncode
    if code != 0 and not job.cancelled:
        raise JobFailed(f"{job.step.label} failed: {job.process.failure()}")
    # A stopped train still saved and reported where it got to: that is kept, like a finished one.
    if job.summary is None:
        return
    if code == 0:
        _engine_ran()
    if job.step.finish is None:
        return
    scene = bpy.data.scenes.get(job.scene)
    if scene is None:
        raise JobFailed(f"{job.step.label}: the scene {job.scene!r} is gone")
    try:
        job.reports.append(job.step.finish(scene, job.summary))
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a "done" event without the fields it needs
        raise JobFailed(f"{job.step.label}: the engine's summary lacks what the add-on needs ({e!r})") from None


def _stop_failed(job: Job) -> None:
    """An engine that reported its error but has not exited within EXIT_AFTER_ERROR_S is stopped."""
    if job.failed_at is not None and time.monotonic() - job.failed_at > EXIT_AFTER_ERROR_S:
        job.process.request_stop()
        job.process.enforce_stop(0.0)


def _run_blocking(job: Job) -> str:
    for index in range(len(job.steps)):
        job.index = index
        _start_step(job)
        try:
            while not job.process.finished:
                event = job.process.next_event(timeout=0.5)
                if event is not None:
                    _handle(job, event, console=True)
                _stop_failed(job)
        except BaseException:  # a failed headless job leaves no engine behind (a farm task would hang on it)
            job.process.stop(job.step.grace_s)
            raise
        _end_step(job)
        print(f"FaceReplace: {job.reports[-1] if job.reports else job.step.label + ' done'}", flush=True)
    return "\n".join(job.reports)


def poll():
    """The timer: hand new events to the UI, move on to the next step, end the job. Returns the seconds
    until the next call, or None once no job runs (which unregisters the timer)."""
    job = _active
    if job is None:
        return None
    try:
        for event in job.process.drain():
            _handle(job, event)
        job.process.enforce_stop(job.step.grace_s)
        _stop_failed(job)
        if job.process.finished:
            _end_step(job)
            if job.cancelled or job.index + 1 == len(job.steps):
                _finish(job, None)
                return None
            job.index += 1
            _start_step(job)
    except (JobFailed, ClientError) as e:
        _finish(job, str(e))
        return None
    except Exception as e:  # a bug: end the job and say so, rather than leave the add-on busy forever
        traceback.print_exc()
        _finish(job, f"internal error: {type(e).__name__}: {e}")
        return None
    _redraw()
    return POLL_S


def _finish(job: Job, error: str | None) -> None:
    global _active, last_report, last_stage, last_log
    _active = None
    last_stage, last_log = job.stage, job.step.log
    if job.process.returncode is None:  # it failed around a running engine: stop that too
        job.process.stop(job.step.grace_s)
    if error:
        record_failure(job.stage, error)
        print(f"FaceReplace: {error}")
        _popup(error)
    else:
        lines = job.reports + job.warnings[-3:]
        stopped = "stopped" if job.cancelled else "finished"
        last_report = ("INFO", "\n".join(lines) if lines else f"{job.stage.capitalize()} {stopped}")
        if job.reports:
            # Results came in from a timer, outside any operator: give them their own undo step.
            bpy.ops.ed.undo_push(message=f"FaceReplace: {job.stage} {stopped}")
    _redraw()


# ---------------------------------------------------------------- events


def _number(value) -> bool:
    """A finite number a progress bar can use: a 400-digit integer is none (math.isfinite overflows on it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) < 2**63
    return isinstance(value, float) and math.isfinite(value)


def clean_event(event: dict) -> dict:
    """The event with only fields of the types the add-on uses: a stranger's engine (or a bug) that sends a
    string loss or a list for a path loses that field, and nothing downstream raises on it."""
    clean = {k: v for k, v in event.items() if k not in NUMBERS + TEXTS}
    clean.update({k: event[k] for k in NUMBERS if _number(event.get(k))})
    clean.update({k: event[k] for k in TEXTS if isinstance(event.get(k), str)})
    return clean


def _handle(job: Job, event: dict, console: bool = False) -> None:
    event = clean_event(event)
    kind = event.get("event")
    step = job.step
    if kind == "progress":
        total = event.get("total") or 0
        fraction = min(max(event.get("done", 0) / total, 0.0), 1.0) if total > 0 else 0.0
        job.progress = (job.index + fraction) / len(job.steps)
        job.live = event
        job.text = f"{step.label}: {describe_progress(event)}"
    elif kind == "preview":
        job.live["preview"] = event.get("path")
        if not bpy.app.background:
            previews.reload(event.get("path"))
    elif kind == "warning":
        job.warnings.append(event.get("message", ""))
        print(f"FaceReplace {step.label}: warning: {event.get('message')}", flush=True)
    elif kind == "done":
        job.summary = event
    elif kind == "error" and job.failed_at is None:
        job.failed_at = time.monotonic()
    elif kind == "output" and step.expected_packages:
        line = event.get("line", "").strip()
        if line.startswith("Collecting"):
            job.collected += 1
            fraction = min(job.collected / step.expected_packages, 0.95)
            job.progress = (job.index + fraction) / len(job.steps)
        if line:
            job.text = f"{step.label}: {line[:90]}"
    if console and kind == "progress" and time.monotonic() - job.printed_at > PRINT_EVERY_S:
        job.printed_at = time.monotonic()
        print(f"FaceReplace {job.text}", flush=True)


def describe_progress(event: dict) -> str:
    """One line for the status bar and the console: counts, then the stage's own figures."""
    parts = [" ".join(str(p) for p in (event.get("phase"), f"{event.get('done', 0)}/{event.get('total', '?')}") if p)]
    if event.get("loss_a") is not None:
        parts.append(f"loss A {event['loss_a']:.4f} B {event.get('loss_b') or 0:.4f}")
    if event.get("it_per_s"):
        parts.append(f"{event['it_per_s']:.1f} it/s")
    elif event.get("fps"):
        parts.append(f"{event['fps']:.1f} fps")
    if event.get("eta_s") is not None:
        parts.append(f"ETA {format_seconds(event['eta_s'])}")
    return ", ".join(parts)


# ---------------------------------------------------------------- the UI around jobs


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm else ():
        for area in window.screen.areas:
            if area.type in {"SEQUENCE_EDITOR", "STATUSBAR", "PREFERENCES"}:
                area.tag_redraw()


def _popup(message: str) -> None:
    wm = bpy.context.window_manager
    if bpy.app.background or not wm or not wm.windows:
        return

    def draw(menu, _context):
        for line in message.split(": ", 1):
            menu.layout.label(text=line)

    with bpy.context.temp_override(window=wm.windows[0]):
        wm.popup_menu(draw, title="FaceReplace", icon="ERROR")


def draw_status_bar(self, _context) -> None:
    """Appended to the status bar: the running job's progress, and a button to stop it."""
    job = _active
    if job is None:
        return
    row = self.layout.row(align=True)
    row.progress(factor=job.progress, type="BAR", text=job.text[:80])
    row.operator("facereplace.cancel", text="", icon="CANCEL")


@persistent
def _on_load_pre(*_args) -> None:
    stop_all()


def _stop_at_exit() -> None:
    """Blender is quitting: stop the engine (a train saves); Blender's own state is going, so leave it be."""
    if _active is not None:
        _active.process.stop(_active.step.grace_s)


def register() -> None:
    bpy.types.STATUSBAR_HT_header.append(draw_status_bar)
    bpy.app.handlers.load_pre.append(_on_load_pre)
    atexit.register(_stop_at_exit)


def unregister() -> None:
    stop_all()
    if bpy.app.timers.is_registered(poll):
        bpy.app.timers.unregister(poll)
    atexit.unregister(_stop_at_exit)
    bpy.app.handlers.load_pre.remove(_on_load_pre)
    bpy.types.STATUSBAR_HT_header.remove(draw_status_bar)
