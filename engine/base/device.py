"""Which torch device a stage runs on, the CUDA settings that make it fast, and how many CPU threads it
takes when other engine runs share the machine."""

import contextlib
import os
import time
from pathlib import Path

from .events import EngineError, log
from .options import Choice

DEVICES = {
    "auto": Choice("Auto", "A CUDA (or ROCm) GPU when there is one, else Apple silicon's GPU, else the CPU"),
    "cuda": Choice("CUDA", "An NVIDIA GPU, or an AMD one through ROCm (an error without one)"),
    "cpu": Choice("CPU", "The processor"),
    "mps": Choice("Apple MPS", "The GPU of Apple silicon (an error without one)"),
}  # new devices go last: a .blend stores the Device preference by its place here

THREADS_ENV = "FACEREPLACE_THREADS"  # a thread count set by the caller, outright
RESERVE_ENV = "FACEREPLACE_RESERVE_CORES"  # cores the share leaves alone (the add-on: one, for Blender's window)
# Where the runs that share the CPU keep their lock files; the add-on sets it for the runs it starts.
# Unset (the command line, a library call), torch keeps its own thread count.
RUNTIME_ENV = "FACEREPLACE_RUNTIME_DIR"
_held = None  # this run's own lock file, open for the life of the process


def runs_folder() -> Path | None:
    """Every engine run that shares the CPU holds an OS lock on a file here while it lives; the OS drops
    the lock when the process dies, so a count of the locked files is a count of live runs, whatever
    ended the others."""
    folder = os.environ.get(RUNTIME_ENV, "").strip()
    return Path(folder) if folder else None


def _try_lock(file) -> bool:
    """Take the OS lock on the open `file` without waiting; False when another process holds it, OSError
    where the filesystem cannot lock."""
    import portalocker  # here, not at the top: the command line (`python -m engine --help`) needs none

    try:
        portalocker.lock(file, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
    except portalocker.AlreadyLocked:
        return False
    except portalocker.LockException as e:
        raise OSError(f"cannot lock {getattr(file, 'name', file)}: {e}") from e
    return True


def _locked(path: Path) -> bool:
    """Whether another live process holds the lock on `path` (a file left by a dead one is removed)."""
    try:
        with open(path, "a") as f:
            if not _try_lock(f):
                return True
    except OSError:
        return False
    path.unlink(missing_ok=True)
    return False


def _join_runs() -> int:
    """Register this run and return how many other engine runs live on this machine (0 where the
    filesystem has no locks)."""
    global _held
    folder = runs_folder()
    if folder is None:
        return 0
    if _held is None:
        with contextlib.suppress(OSError):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _held = open(folder / f"{os.getpid()}.lock", "w")
            _try_lock(_held)
    own = f"{os.getpid()}.lock"
    with contextlib.suppress(OSError):
        return sum(_locked(p) for p in folder.glob("*.lock") if p.name != own)
    return 0


def available_cores() -> int:
    """The cores this process may run on: its affinity where the OS has one (Linux), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_threads(cores: int | None = None) -> int | None:
    """Threads for torch's CPU work: $FACEREPLACE_THREADS when set; else, with $FACEREPLACE_RUNTIME_DIR,
    this run's fair share of the cores with the other engine runs now running (each spinning thread beyond
    the cores slows all of them); else None: torch's own count."""
    chosen = os.environ.get(THREADS_ENV, "").strip()
    if chosen.isdigit() and int(chosen) > 0:
        return int(chosen)
    if runs_folder() is None:
        return None
    return max(1, usable_cores(cores) // (1 + _join_runs()))


def usable_cores(cores: int | None = None) -> int:
    """The cores (`cores`, else available_cores()) less the $FACEREPLACE_RESERVE_CORES left to others."""
    reserve = os.environ.get(RESERVE_ENV, "").strip()
    return max(1, (cores or available_cores()) - (int(reserve) if reserve.isdigit() else 0))


ADAPT_WINDOW_S = 1.0  # each look at the cores a run gets lasts this long (a window at too many threads is lost)
PROBE_EVERY_S = 30.0  # how often a run that gets every core it has threads for tries one thread more
PROBE_BACKOFF = 8  # each probe that did not pay doubles the wait before the next, up to this many times PROBE_EVERY_S
PROBE_GAIN = 1.1  # the speed-up one more thread must bring to be kept


class ThreadAdapter:
    """Re-picks torch's CPU thread count while a run trains, from the cores the run actually gets. Beside
    other busy programs (Blender rendering, another engine, anything; and under Linux's autogroup, where a
    desktop session gets its share whatever its thread count) threads beyond that share wait on each other
    at every barrier, and a train falls to a tenth of what its share allows. Each ADAPT_WINDOW_S it compares
    the process's CPU time with the wall time: getting clearly fewer cores than it has threads, it drops
    to the cores it gets; getting all of them, every PROBE_EVERY_S it tries one thread more and keeps it
    only if the iterations per second rise by PROBE_GAIN. A probe beside a busy program costs an iteration
    at a crawl, so each one that fails doubles the wait for the next (up to PROBE_BACKOFF times). Call
    `step()` once per iteration. The clocks and the setter are parameters so tests can drive it."""

    def __init__(self, cores: int, threads: int, set_threads, clock=time.monotonic, cpu_clock=time.process_time):
        self.cores, self.threads = cores, min(threads, cores)
        self._set_threads, self._clock, self._cpu_clock = set_threads, clock, cpu_clock
        self._probe: tuple[int, float] | None = None  # while one more thread is tried: (threads before, their speed)
        self._last_probe, self._probe_wait = clock(), PROBE_EVERY_S
        self._begin_window()

    def _begin_window(self) -> None:
        self._wall_start, self._cpu_start, self._iterations = self._clock(), self._cpu_clock(), 0

    def step(self) -> None:
        self._iterations += 1
        now = self._clock()
        wall = now - self._wall_start
        if wall < ADAPT_WINDOW_S:
            return
        self._decide(got=(self._cpu_clock() - self._cpu_start) / wall, speed=self._iterations / wall, now=now)
        self._begin_window()  # after the change: a window measures one thread count

    def _decide(self, got: float, speed: float, now: float) -> None:
        if self._probe is not None:
            before, before_speed = self._probe
            self._probe, self._last_probe = None, now
            if speed < before_speed * PROBE_GAIN:
                self._change(before, f"one more thread did not pay ({speed:.2f} it/s against {before_speed:.2f})")
                self._probe_wait = min(2 * self._probe_wait, PROBE_BACKOFF * PROBE_EVERY_S)
            else:
                self._probe_wait = PROBE_EVERY_S
        elif got < self.threads - 0.5:
            self._change(max(1, round(got)), f"this run gets {got:.1f} of its {self.threads} threads' cores")
            self._last_probe = now
        elif self.threads < self.cores and now - self._last_probe >= self._probe_wait:
            self._probe = (self.threads, speed)
            self._change(self.threads + 1, "trying one more")

    def _change(self, threads: int, why: str) -> None:
        log.info("CPU threads %d -> %d: %s", self.threads, threads, why)
        self.threads = threads
        self._set_threads(threads)


def thread_adapter(device, world: int) -> ThreadAdapter | None:
    """A ThreadAdapter for a training run on the CPU that shares the machine (runs_folder() set: the
    add-on's runs), unless FACEREPLACE_THREADS fixes the count or the run is one of several processes.
    Elsewhere the count stays fixed, so a command-line run repeats bit for bit (torch's sums depend on
    how many threads split them)."""
    if device.type != "cpu" or world > 1 or runs_folder() is None or os.environ.get(THREADS_ENV, "").strip():
        return None
    import torch

    return ThreadAdapter(usable_cores(), torch.get_num_threads(), torch.set_num_threads)


def device_type(name: str, cuda: bool, mps: bool) -> str:
    """The torch device type `name` ("auto" or one of DEVICES) means on a machine where torch sees a CUDA
    GPU (`cuda`) and Apple's MPS GPU (`mps`): auto takes the fastest there is."""
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if name == "cuda" and not cuda:
        raise EngineError("--device cuda was asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
    if name == "mps" and not mps:
        raise EngineError("--device mps was asked for, but torch sees no Apple MPS GPU (it needs Apple silicon, "
                          "macOS 12.3 or later and torch's macOS build; use --device cpu or auto)")
    return name


def pick_device(name: str = "auto"):
    """torch.device for "auto" (CUDA, else MPS, else the CPU) or the device `name` asks for (an error where
    torch sees none); sets torch's thread count to `cpu_threads()` where that chooses one.

    On MPS the engine runs float32 (bf16 autocast is for CUDA only) and an operation MPS lacks runs on the
    CPU (PYTORCH_ENABLE_MPS_FALLBACK, set in engine/__init__.py before torch loads)."""
    import torch

    if threads := cpu_threads():
        torch.set_num_threads(threads)
    chosen = device_type(name, torch.cuda.is_available(), torch.backends.mps.is_available())
    if chosen == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return torch.device(chosen)
