"""Face masks from landmarks, drawn in whatever space the landmarks are in (usually the aligned crop)."""

import cv2
import numpy as np

from .align import REGIONS

# How far above the brows the extended mask reaches, as a share of the brow-to-chin height: the
# forehead is about half of it, and stopping short of the hairline keeps hair out of the mask.
FOREHEAD = 0.3
# The extended mask's top fades out over this share of its forehead, so it meets the hair and the skin
# above it with a ramp, not a line: it is the mean of FOREHEAD_STEPS hulls raised from
# FOREHEAD * (1 - FOREHEAD_FADE) to FOREHEAD, which follows the brows' curve.
FOREHEAD_FADE = 0.5
FOREHEAD_STEPS = 16
# How far the eye and mouth regions reach beyond their landmarks' hull (a scale about the region's
# centre): the eyes take in the lids and the creases around them, the mouth its lips' edges.
EYE_REACH = 1.8
MOUTH_REACH = 1.2


def _fill_hull(points: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The hull of `points`, `size` x `size` or `size` = (height, width)."""
    mask = np.zeros(size if isinstance(size, tuple) else (size, size), np.uint8)
    hull = cv2.convexHull(np.round(points * 16).astype(np.int32))  # 4 fractional bits: sub-pixel edges
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


def hull_mask(landmarks: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The convex hull of the 68 points, float32 in [0, 1], size x size (or size = (height, width))."""
    return _fill_hull(np.asarray(landmarks, np.float64), size)


def _raised_hull(points: np.ndarray, share: float, size: int | tuple[int, int]) -> np.ndarray:
    """The hull with the brows raised by `share` of the chin-to-brows height."""
    raised = points.copy()
    raised[17:27] = points[17:27] + share * (points[17:27].mean(0) - points[8])
    return _fill_hull(raised, size)


def extended_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The hull with the brows raised to take in the forehead, its top fading softly, float32 in [0, 1]."""
    points = np.asarray(landmarks, np.float64)
    steps = np.linspace(FOREHEAD * (1 - FOREHEAD_FADE), FOREHEAD, FOREHEAD_STEPS)
    return sum(_raised_hull(points, step, size) for step in steps) / len(steps)


def face_reach(landmarks: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Where a face can be: the extended mask's outermost hull, hard-edged (anti-aliased), `size` square
    or (height, width). Every mask a model learns lies within it, so what a network's mask shows beyond
    it is the network's error."""
    return _raised_hull(np.asarray(landmarks, np.float64), FOREHEAD, size)


def region_mask(points: np.ndarray, reach: float, size: int) -> np.ndarray:
    """The hull of `points` scaled by `reach` about their centre, float32 in [0, 1]."""
    points = np.asarray(points, np.float64)
    centre = points.mean(0)
    return _fill_hull(centre + (points - centre) * reach, size)


def eyes_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Both eyes with their lids and creases."""
    points = np.asarray(landmarks, np.float64)
    return np.maximum(region_mask(points[REGIONS["left_eye"]], EYE_REACH, size),
                      region_mask(points[REGIONS["right_eye"]], EYE_REACH, size))


def mouth_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The outer lip line, with the lips' edges."""
    return region_mask(np.asarray(landmarks, np.float64)[48:60], MOUTH_REACH, size)


def mouth_interior(landmarks: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Inside the inner lip line: the open mouth's teeth, tongue and dark (empty while the lips meet)."""
    return _fill_hull(np.asarray(landmarks, np.float64)[60:68], size)


MASKS = {"hull": hull_mask, "extended": extended_mask}
