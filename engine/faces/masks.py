"""Face masks from landmarks, drawn in whatever space the landmarks are in (usually the aligned crop)."""

import cv2
import numpy as np

# How far above the brows the extended mask reaches, as a share of the brow-to-chin height: the
# forehead is about half of it, and stopping short of the hairline keeps hair out of the mask.
FOREHEAD = 0.3


def _fill_hull(points: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull(np.round(points * 16).astype(np.int32))  # 4 fractional bits: sub-pixel edges
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255.0


def hull_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The convex hull of the 68 points, float32 in [0, 1], size x size."""
    return _fill_hull(np.asarray(landmarks, np.float64), size)


def extended_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The hull with the brows raised to take in the forehead, float32 in [0, 1]."""
    points = np.asarray(landmarks, np.float64).copy()
    brows = points[17:27].mean(0)
    up = brows - points[8]  # chin to brows
    points[17:27] += FOREHEAD * up
    return _fill_hull(points, size)


MASKS = {"hull": hull_mask, "extended": extended_mask}
