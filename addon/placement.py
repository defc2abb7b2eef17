"""Where result strips belong: on each timeline frame, the face layer and matte of the plate frame shown
there. No bpy here, so plain pytest checks it; strips.py reads the strips into these terms.

A strip "shows" frame numbers: `numbers[i]` (a shot's frame, or the frame a result file was converted
from) on timeline frame start + i, for the frames first..end-1 its handles leave visible.
"""


def shown(start: int, numbers, first: int, end: int) -> dict[int, int]:
    """{timeline frame: frame number} that a strip holding `numbers` from `start` shows on frames
    first..end-1 (a handle dragged past the content holds nothing of it)."""
    return {frame: numbers[frame - start] for frame in range(first, end) if 0 <= frame - start < len(numbers)}


def out_of_step(plate: dict[int, int], layer: dict[int, int]) -> str:
    """Why a result layer no longer matches its plate ("" while it does), both as `shown` gives them: the
    plate moved (every frame the same distance away), or it was slipped, trimmed or extended."""
    if plate == layer:
        return ""
    plate_at = {number: frame for frame, number in plate.items()}
    shifts = {plate_at.get(number, frame) - frame for frame, number in layer.items()}
    if len(shifts) == 1 and set(plate.values()) == set(layer.values()):
        shift = shifts.pop()
        return f"the plate moved {abs(shift)} frame{'s' * (abs(shift) != 1)} {'later' if shift > 0 else 'earlier'}"
    return "the plate was slipped or trimmed"
