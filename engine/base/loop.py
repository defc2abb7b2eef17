"""What every training loop shares (train's face model, enhance's enhancer): when to stop, how long is
left, which faces a preview shows."""

import numpy as np

from .events import STOP_READER_GONE

# Why a run stopped (its "done" event's "stopped"): the iterations or the time budget reached, train's target
# loss, the model folder's stop file, a signal (engine.base.checkpoints.STOP_SIGNALS), or no reader of the events; each
# in the add-on's words, in the order train's processes agree on one (the later wins).
STOP_ITERATIONS, STOP_TIME_BUDGET = "iterations", "time budget"
STOP_TARGET_LOSS, STOP_BY_FILE = "target loss", "stop file"
STOP_REASONS = {STOP_ITERATIONS: "reached its iterations", STOP_TIME_BUDGET: "used its time budget",
                STOP_TARGET_LOSS: "reached its target loss", STOP_BY_FILE: "stopped", "SIGINT": "stopped",
                "SIGTERM": "stopped", "SIGBREAK": "stopped", STOP_READER_GONE: "stopped: nobody read its events"}


def stop_reason(iteration: int, iterations: int | None, seconds: float, time_budget: float | None,
                requested: str | None) -> str | None:
    """Why the run stops after `iteration` (`seconds` into it), if it does: the iterations or time budget
    are reached, or a stop was `requested` (a signal, the stop file)."""
    if iterations is not None and iteration >= iterations:
        return STOP_ITERATIONS
    if time_budget is not None and seconds >= time_budget:
        return STOP_TIME_BUDGET
    return requested


def eta(iteration: int, iterations: int | None, it_per_s: float, time_budget: float | None,
        seconds: float) -> float | None:
    """Seconds until --iterations or --time-budget stops the run, whichever comes first (None: neither)."""
    left = (iterations - iteration) / it_per_s if iterations is not None else None
    if time_budget is not None:
        left = time_budget - seconds if left is None else min(left, time_budget - seconds)
    return None if left is None else round(max(left, 0.0), 1)


def spread(items: list, count: int) -> list:
    """`count` items evenly spread over `items` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]
