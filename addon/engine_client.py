"""Runs the engine as a subprocess and hands its JSON-line events to Blender's main thread.

No bpy and no torch here: the engine runs in its own Python (a venv with torch), started as
`<python> -m engine <verb> ... --events`, always from an argument list, never through a shell. A reader
thread turns each stdout line into an event dict on a queue; Blender's main thread drains the queue
(from a timer in the UI, in a loop when headless). stderr (the engine's log) is echoed to the console,
kept whole in a log file and its tail in memory, so a failure can be reported with its cause.
"""

import collections
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ENGINE_PYTHON_ENV = "FACEREPLACE_ENGINE_PYTHON"  # overrides the preference, e.g. on farm workers
REQUIREMENTS_FILE = "engine-requirements.txt"  # written beside the bundled engine by the extension build
TERMINATE_AFTER_S = 10.0  # after SIGTERM, how long before SIGKILL
# On Windows a run gets no console window of its own, and its own process group, so CTRL_BREAK can ask it
# (and it alone) to stop the way SIGTERM does elsewhere: terminate() there is a kill that saves nothing.
WINDOWS_FLAGS = getattr(subprocess, "CREATE_NO_WINDOW", 0) | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
# How long an exited engine's output is still awaited: a process it left behind holding its stdout open
# (a grandchild) must not keep the job busy for as long as that process lives.
DRAIN_AFTER_EXIT_S = 2.0


class ClientError(Exception):
    """Something the user can fix before the engine runs: a missing engine, a bad path or frame range."""


def engine_root() -> Path:
    """The folder that holds the `engine` package: bundled inside the extension, or the repository
    around addon/ when the add-on runs from a checkout."""
    here = Path(__file__).resolve().parent
    for root in (here, here.parent):
        if (root / "engine" / "__main__.py").is_file():
            return root
    raise ClientError("the engine package is missing from the FaceReplace extension: reinstall it")


def shared_module(name: str):
    """The engine's module `name` that both sides share (engine/base/frames.py: standard library only), loaded
    from the bundled engine's own file, so the add-on keeps no copy of the engine's rules."""
    qualified = f"{__package__}.engine_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, engine_root() / "engine" / "base" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[qualified] = module
    return sys.modules[qualified]


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def check_python(python: str) -> str:
    if not python or not Path(python).is_file() or not os.access(python, os.X_OK):
        raise ClientError(
            f"engine Python not found: {python or '(none set)'}. Set it in Preferences > Add-ons > FaceReplace "
            f"(the python of a venv with the engine's packages), or click Set up engine there"
        )
    return python


def engine_command(python: str, verb: str, args: list, device: str | None = None, processes: int = 1) -> list[str]:
    """The argument list of one engine run with the events protocol on; with `processes` > 1 under
    torchrun, one process per GPU (train's DistributedDataParallel)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [check_python(python), *launcher, "-m", "engine", verb, *[str(a) for a in args], "--events"]
    return command + ["--device", device] if device else command


def engine_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine run: the bundled engine alone on PYTHONPATH (the user's PYTHONPATH and
    PYTHONHOME belong to Blender's Python, not the engine's), unbuffered output, then `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"}}
    env["PYTHONPATH"] = str(engine_root())
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def parse_line(line: str) -> dict:
    """One stdout line as an event; anything that is not a JSON event (pip's output, say) as "output"."""
    line = line.rstrip("\r\n")
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except Exception:  # noqa: BLE001 - any line the engine (or a stranger's engine) prints is not a crash
            record = None
        if isinstance(record, dict) and "event" in record:
            return record
    return {"event": "output", "line": line}


class EngineProcess:
    """One running engine (or pip) command. `events` fills from a reader thread; `finished` is true
    once the process has exited and every line it wrote is on the queue."""

    def __init__(self, argv: list[str], log_path: Path | None = None, stop_file: Path | None = None,
                 echo=None, env: dict[str, str] | None = None):
        self.argv = argv
        self.stop_file = stop_file
        self.events: queue.Queue = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.error_message: str | None = None
        self.stop_requested_at: float | None = None
        self.exit_seen_at: float | None = None
        self._echo = echo if echo is not None else sys.stderr
        self._log = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "w", encoding="utf-8")  # closed when stderr ends
            self._log.write(" ".join(argv) + "\n")
        if stop_file is not None and stop_file.exists():
            stop_file.unlink()  # one left from an earlier run would end this one at once (the engine keeps it)
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=engine_env(env), cwd=engine_root(), text=True, encoding="utf-8", errors="replace", bufsize=1,
                creationflags=WINDOWS_FLAGS if os.name == "nt" else 0,
            )
        except OSError as e:
            if self._log:
                self._log.close()
            raise ClientError(f"cannot start {argv[0]}: {e.strerror or e}") from None
        self._stdout = threading.Thread(target=self._read_stdout, daemon=True)
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True)
        self._stdout.start()
        self._stderr.start()

    def _read_stdout(self) -> None:
        # Reads to the end whatever the lines hold, so the engine never blocks on a full pipe.
        for line in self.process.stdout:
            event = parse_line(line)
            if event["event"] == "error":
                self.error_message = str(event.get("message") or "")
            self.events.put(event)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_tail.append(line.rstrip())
            for sink in (self._echo, self._log):
                try:
                    if sink:
                        sink.write(line)
                        sink.flush()
                except (OSError, ValueError):  # a closed console or a full disk must not stop the reading
                    pass
        if self._log:
            self._log.close()

    # -- reading

    def drain(self) -> list[dict]:
        """Every event queued so far, without waiting."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def next_event(self, timeout: float) -> dict | None:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def finished(self) -> bool:
        """The engine has exited and its output is read: to its end, or for DRAIN_AFTER_EXIT_S after the
        exit when something else still holds the pipe."""
        if self.process.poll() is None or not self.events.empty():
            return False
        if self.exit_seen_at is None:
            self.exit_seen_at = time.monotonic()
        return not self._stdout.is_alive() or time.monotonic() - self.exit_seen_at > DRAIN_AFTER_EXIT_S

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def failure(self) -> str:
        """Why a run that exited non-zero failed: the engine's error event, else the end of its log; a
        Python without the engine's packages is named as such, with the fix."""
        self._stderr.join(timeout=2.0)
        lines = [self.error_message or "", *reversed(self.stderr_tail)]
        missing = next((line for line in lines if "No module named" in line), None)
        if missing:
            module = missing.split("No module named")[-1].strip(" :'\"")
            return (f"the engine Python ({self.argv[0]}) lacks the engine's packages (no module {module}): point "
                    f"Preferences > Add-ons > FaceReplace at the engine's venv, or click Set up engine")
        last = next((line for line in lines if line.strip()), None)
        return last or f"{Path(self.argv[0]).name} exited with status {self.returncode}"

    # -- stopping

    def request_stop(self) -> None:
        """Ask the run to end: through the stop file where it has one (train saves, then exits), else SIGTERM."""
        if self.stop_requested_at is not None or self.process.poll() is not None:
            return
        self.stop_requested_at = time.monotonic()
        if self.stop_file is not None:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.touch()
        else:
            self.terminate()

    def terminate(self) -> None:
        """Ask the run to end now: SIGTERM, or CTRL_BREAK to its process group on Windows (train saves on
        either); a Windows run that cannot take it is killed."""
        if os.name != "nt":
            self.process.terminate()
            return
        try:
            self.process.send_signal(signal.CTRL_BREAK_EVENT)
        except OSError:
            self.process.kill()

    def enforce_stop(self, grace: float) -> None:
        """Escalate a stop that was asked for `grace` seconds ago: `terminate` (train still saves on it),
        then a kill after TERMINATE_AFTER_S more."""
        if self.stop_requested_at is None or self.process.poll() is not None:
            return
        waited = time.monotonic() - self.stop_requested_at
        if waited > grace + TERMINATE_AFTER_S:
            self.process.kill()
        elif waited > grace:
            self.terminate()

    def stop(self, grace: float) -> int:
        """Stop and wait for the exit (blocking), escalating as `enforce_stop` does."""
        self.request_stop()
        for limit, escalate in ((grace, self.terminate), (TERMINATE_AFTER_S, self.process.kill)):
            try:
                return self.process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                escalate()
        return self.process.wait()
