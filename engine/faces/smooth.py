"""Temporal smoothing of landmarks: a One-Euro filter (Casiez et al., CHI 2012), run forward and backward.

Jitter of the swapped face is what users notice first. The One-Euro filter smooths hard when a face is
still and lets fast motion through. A shot is processed offline, so running it both ways and averaging
cancels the filter's lag, which a live filter has to live with.
"""

import math
from dataclasses import dataclass

import numpy as np

from .align import transform_points, umeyama


@dataclass
class SmoothSettings:
    min_cutoff: float = 1.0  # Hz: lower smooths a still face more
    beta: float = 5.0  # how fast the cutoff rises with speed (speed in face sizes per second)
    d_cutoff: float = 4.0  # Hz: cutoff for the speed estimate


def _alpha(cutoff: float, dt: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(track: np.ndarray, dt: float, settings: SmoothSettings) -> np.ndarray:
    """Causal One-Euro filter over a T x 68 x 2 landmark track, in face-size units.

    The speed that opens the filter is the face's coherent motion (a similarity fitted from the last
    output to the new points), not each point's own jump, so detector noise does not open it.
    """
    out = np.empty_like(track)
    out[0] = track[0]
    speed = np.zeros_like(track[0])
    a_d = _alpha(settings.d_cutoff, dt)
    for t in range(1, len(track)):
        motion = umeyama(out[t - 1], track[t])
        raw_speed = (transform_points(out[t - 1], motion) - out[t - 1]) / dt
        speed = a_d * raw_speed + (1 - a_d) * speed
        cutoff = settings.min_cutoff + settings.beta * np.abs(speed)
        tau = 1.0 / (2 * np.pi * cutoff)
        a = 1.0 / (1.0 + tau / dt)
        out[t] = a * track[t] + (1 - a) * out[t - 1]
    return out


def smooth_landmarks(track: np.ndarray, fps: float, settings: SmoothSettings | None = None) -> np.ndarray:
    """Smooth one face's landmarks over consecutive frames. `track` is T x 68 x 2 in pixels.

    Points are measured in face sizes (the inter-ocular distance), so one setting suits any resolution.
    """
    settings = settings or SmoothSettings()
    track = np.asarray(track, np.float64)
    if len(track) < 3:
        return track.copy()
    eyes = np.linalg.norm(track[:, 36:42].mean(1) - track[:, 42:48].mean(1), axis=1)
    scale = float(np.median(eyes)) or 1.0
    units = track / scale
    dt = 1.0 / fps
    forward = one_euro(units, dt, settings)
    backward = one_euro(units[::-1], dt, settings)[::-1]
    return (forward + backward) / 2 * scale


def runs(numbers: list[int], step: int) -> list[list[int]]:
    """Split frame numbers into runs of consecutive frames (`step` apart); smoothing never bridges a gap."""
    out: list[list[int]] = []
    for n in numbers:
        if out and n - out[-1][-1] == step:
            out[-1].append(n)
        else:
            out.append([n])
    return out
