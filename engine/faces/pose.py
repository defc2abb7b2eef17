"""Head pose (yaw, pitch, roll in degrees) from the 68 landmarks, by solvePnP against a generic 3-D face.

The 3-D face is the alignment template (align.MEAN_FACE, the frontal x/y of every point) given a depth
per point from average adult facial anthropometry, in the same unit (the jaw-to-jaw width). So a face
that matches the template exactly has pose (0, 0, 0), and the estimate shares the alignment's notion of
"frontal". The camera is a pinhole with a focal length of the frame's larger side (about a 53° field of
view), centred; a face far smaller than the frame, as most are, makes the estimate insensitive to that
guess. Accuracy is that of a generic model on 68 detected points: a few degrees near frontal, coarser
beyond 45° of yaw, which is plenty to histogram coverage and to compare two facesets.

Conventions, as a viewer of the image sees them:
- yaw > 0: the face turns towards the image's right (the nose points right);
- pitch > 0: the face tilts up;
- roll > 0: the head leans clockwise in the image.
"""

import cv2
import numpy as np

from .align import MEAN_FACE

# Depth of each point towards the camera, in jaw-to-jaw widths (about 13.5 cm), with the outer eye
# corners at 0: the nose tip stands about 4 cm proud of them, the lips and chin 1.5-2 cm, and the face
# outline curves back to about 6 cm behind them at the ears.
DEPTH = np.array(
    [
        # 0-16: jaw, from the right ear round the chin to the left
        -0.45, -0.42, -0.38, -0.32, -0.24, -0.15, -0.06, 0.02, 0.06,
        0.02, -0.06, -0.15, -0.24, -0.32, -0.38, -0.42, -0.45,
        # 17-26: brows, outer to inner, inner to outer
        -0.04, 0.03, 0.07, 0.09, 0.10, 0.10, 0.09, 0.07, 0.03, -0.04,
        # 27-35: nose bridge down to the tip, then the nostrils
        0.12, 0.17, 0.23, 0.30, 0.15, 0.19, 0.21, 0.19, 0.15,
        # 36-47: eyes, corners at 0 and the lids over the eyeball a little forward
        0.00, 0.05, 0.05, 0.03, 0.05, 0.05, 0.03, 0.05, 0.05, 0.00, 0.05, 0.05,
        # 48-59: outer lips, 60-67: inner lips
        0.06, 0.12, 0.15, 0.16, 0.15, 0.12, 0.06, 0.12, 0.14, 0.15, 0.14, 0.12,
        0.08, 0.14, 0.15, 0.14, 0.08, 0.13, 0.14, 0.13,
    ],
    dtype=np.float64,
)

# Camera frame (OpenCV): x right, y down, z away from the camera, so "towards the camera" is -z.
MODEL = np.column_stack([MEAN_FACE, -DEPTH])


def camera_matrix(frame_size: tuple[int, int]) -> np.ndarray:
    w, h = frame_size
    focal = float(max(w, h))
    return np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]], np.float64)


def head_pose(landmarks: np.ndarray, frame_size: tuple[int, int]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of one face's 68 landmarks (frame pixels) in a frame of (w, h)."""
    points = np.asarray(landmarks, np.float64).reshape(68, 2)
    camera = camera_matrix(frame_size)
    # Start from a frontal face at the distance its width implies, so the iterative solver settles in
    # the right basin and never in the mirror solution behind the camera.
    width = np.ptp(points[:, 0]) or 1.0
    centre = points.mean(0)
    distance = camera[0, 0] / width
    start = np.array([(centre[0] - camera[0, 2]) / camera[0, 0], (centre[1] - camera[1, 2]) / camera[1, 1], 1.0])
    rvec, tvec = np.zeros((3, 1)), (start * distance).reshape(3, 1)
    ok, rvec, tvec = cv2.solvePnP(MODEL, points, camera, None, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return float("nan"), float("nan"), float("nan")
    rotation, _ = cv2.Rodrigues(rvec)
    forward = rotation @ np.array([0.0, 0.0, -1.0])  # where the face looks, in the camera frame
    across = rotation @ np.array([1.0, 0.0, 0.0])  # the face's left-to-right axis as the image shows it
    yaw = np.degrees(np.arctan2(forward[0], -forward[2]))
    pitch = np.degrees(np.arctan2(-forward[1], np.hypot(forward[0], forward[2])))
    roll = np.degrees(np.arctan2(across[1], across[0]))
    return float(yaw), float(pitch), float(roll)
