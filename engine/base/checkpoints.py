"""A training run's folder as every network trained here keeps it: the face model (engine.networks.model), its
enhancer (engine.networks.enhancer) and the occlusion mask model (engine.stages.occlusion) alike.

    FOLDER/
      checkpoints/model_%08d.pt   the last few checkpoints, written atomically (torch.load(weights_only=True),
                                  no pickle); the newest one that loads is the one used
      stop                        create this file to make a running train save and stop

Owned by no stage: train, enhance and mask train write through it, convert and mask apply read through it.
What a checkpoint holds, and how it is checked, is its network's module's.
"""

import _thread
import contextlib
import hashlib
import io
import logging
import re
import signal
import threading
from pathlib import Path

import torch
from torch import nn

from . import media
from .events import EngineError
from .loop import STOP_BY_FILE

log = logging.getLogger("engine")

CHECKPOINTS = "checkpoints"
CHECKPOINT_NAME = re.compile(r"model_(\d{8})\.pt")
STOP_FILE = "stop"


def checkpoint_paths(model_dir: str | Path) -> list[Path]:
    """The model folder's checkpoints, newest (highest iteration) first; files only (a FIFO would block)."""
    folder = Path(model_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_file()), reverse=True)


def write_checkpoint(model_dir: str | Path, state: dict, keep: int = 3, best: Path | None = None) -> Path:
    """Atomically write `state` as the checkpoint of its iteration, then drop all but the newest `keep`
    and `best` (train's lowest validation loss: a run that runs away must not rotate it out).

    A kill at any moment leaves the previous checkpoints intact and at worst a temp file (swept by
    `media.sweep_temp_files`, which train runs on the model folder), so the model folder always loads.
    """
    path = Path(model_dir) / CHECKPOINTS / f"model_{state['iteration']:08d}.pt"
    with media.atomic_path(path) as tmp:
        torch.save(state, tmp)
    # Only older ones go: a newer checkpoint (one a resume skipped as damaged) is never what rotation
    # deletes in place of the good one just written.
    older = [p for p in checkpoint_paths(model_dir) if p.name < path.name and p != best]
    for old in older[max(keep, 1) - 1:]:
        old.unlink(missing_ok=True)
    return path


def load_state(data: bytes, device, format: str, version: int, kind: str) -> dict:
    """The dict in a checkpoint file's bytes `data` (no pickle), which must be of `format` and `version`
    (a `kind` checkpoint: model, enhancer); else raises."""
    state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != format:
        raise ValueError(f"not a FaceReplace {kind} checkpoint")
    if state.get("version") != version:
        raise ValueError(f"{kind} checkpoint version {state.get('version')}; this engine reads {version}")
    return state


def check_weights(expected: nn.Module, weights) -> None:
    """Raise unless `weights` (a checkpoint's state dict) has the shapes of `expected`'s (a module on the
    meta device, which allocates nothing) and holds finite numbers only."""
    shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    if not isinstance(weights, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()} != shapes:
        raise ValueError("its weights do not fit the network its config describes")
    if not all(torch.is_tensor(v) and v.is_floating_point() and torch.isfinite(v).all() for v in weights.values()):
        raise ValueError("its weights are not all finite numbers")


def newest_loadable(model_dir: Path, parse, warn, kind: str = "checkpoint") -> tuple[dict, Path, str]:
    """The newest of `model_dir`'s checkpoints whose bytes `parse` turns into a state (a damaged one,
    on which it raises, is skipped with a warning): the state, its path and the digest of those bytes."""
    reason = "none"
    for path in checkpoint_paths(model_dir):
        try:
            data = path.read_bytes()
            return parse(data), path, checkpoint_digest(data)
        except Exception as e:  # torch.load raises many kinds on a damaged file; any means "skip it"
            reason = f"{type(e).__name__}: {e}"
            warn(f"{kind} {path.name} is damaged ({reason}); using an older one")
    raise EngineError(f"every {kind} in {model_dir} is damaged (the last: {reason}); the model cannot be loaded")


def checkpoint_digest(data: bytes) -> str:
    """The short sha256 that marks outputs with the checkpoint bytes that made them."""
    return hashlib.sha256(data).hexdigest()[:16]



# ---------------------------------------------------------------- the stop file


def stop_requested(model_dir: Path) -> bool:
    """Whether someone (the add-on's Stop, a farm) asked a running train to save and stop."""
    return (model_dir / STOP_FILE).exists()


def clear_stop(model_dir: Path) -> None:
    """Forget a stop request once a run has served it, so the next run of the model does not end at once.
    Never at start-up: Stop clicked while the run starts would be lost (the add-on removes an old one
    before it starts a run)."""
    (model_dir / STOP_FILE).unlink(missing_ok=True)


STOP_POLL_S = 0.25  # how often a training run looks for its stop file: Stop acts well within 2 s
# Ctrl+C, a kill's polite signal and, on Windows, CTRL_BREAK (sent to a run started in its own process group)
STOP_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s is not None]


class StopRequests:
    """What asks a training run to stop, seen within STOP_POLL_S whatever the run is doing: STOP_SIGNALS
    and the stop file in the model folder, looked for by a thread. Until `training` is set nothing is
    trained, so ending at once loses nothing: a request then raises KeyboardInterrupt in the main thread
    (the run ends with status 130). Once it is set, `reason` is set and the loop saves, then stops."""

    def __init__(self, model_dir: Path | None):
        self.model_dir = model_dir
        self.training = False
        self.reason: str | None = None
        self.file_seen = False
        self._done = threading.Event()

    def ask(self, signal_name: str) -> None:
        """A stop signal arrived (in the main thread, where Python runs signal handlers)."""
        if not self.training:
            raise KeyboardInterrupt("stopped while starting, before any training: nothing to save")
        if self.reason:
            log.warning("saving before stopping; please wait")
        self.reason = self.reason or (STOP_BY_FILE if self.file_seen else signal_name)

    def _watch(self, on_main_thread: bool) -> None:
        while not self._done.wait(STOP_POLL_S):
            if stop_requested(self.model_dir):
                self.file_seen = True
                if self.training or not on_main_thread:
                    self.reason = self.reason or STOP_BY_FILE
                else:  # runs SIGINT's handler, `ask`, in the main thread: start-up ends there
                    _thread.interrupt_main(signal.SIGINT)
                return


@contextlib.contextmanager
def stop_requests(model_dir: Path | None):
    """A StopRequests for the block: the stop file of `model_dir` (None: signals only, as in the other
    processes under torchrun) and, in the main thread, STOP_SIGNALS. Afterwards a stop file that was
    seen is removed: the request was served."""
    requests = StopRequests(model_dir)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if on_main_thread:
        previous = {s: signal.signal(s, lambda signum, _frame: requests.ask(signal.Signals(signum).name))
                    for s in STOP_SIGNALS}
    watcher = threading.Thread(target=requests._watch, args=(on_main_thread,), daemon=True)
    if model_dir is not None:
        watcher.start()
    try:
        yield requests
    finally:
        requests._done.set()
        try:
            if watcher.is_alive():
                watcher.join()  # a start-up stop it asked for in the meantime is raised here, inside the block
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if requests.file_seen:
                clear_stop(model_dir)
