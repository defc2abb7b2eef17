"""One canonical face template, the similarity transform that maps a face onto it, and the warps.

A "matrix" everywhere in the engine is the 2x3 affine that maps frame pixels to aligned-face pixels at
the faceset's face size. Convert inverts exactly this matrix to put a face back, so nothing is refit.
"""

import cv2
import numpy as np

# The 68-point mean face (iBUG 300-W order), in units of the landmark bounding box centred on 0. It is
# the generalised-Procrustes mean of dlib landmarks on public-domain photos and talking-head frames,
# made left/right symmetric, so no one face's asymmetry is baked into every alignment.
MEAN_FACE = np.array(
    [
        # 0-16: jaw
        (-0.5000, -0.3576), (-0.4899, -0.2155), (-0.4680, -0.0759), (-0.4422,  0.0602),
        (-0.3970,  0.1878), (-0.3214,  0.3002), (-0.2266,  0.3933), (-0.1209,  0.4679),
        ( 0.0000,  0.4912), ( 0.1209,  0.4679), ( 0.2266,  0.3933), ( 0.3214,  0.3002),
        ( 0.3970,  0.1878), ( 0.4422,  0.0602), ( 0.4680, -0.0759), ( 0.4899, -0.2155),
        ( 0.5000, -0.3576),
        # 17-26: brows
        (-0.4217, -0.4090), (-0.3582, -0.4735), (-0.2626, -0.4912), (-0.1643, -0.4795),
        (-0.0747, -0.4425), ( 0.0747, -0.4425), ( 0.1643, -0.4795), ( 0.2626, -0.4912),
        ( 0.3582, -0.4735), ( 0.4217, -0.4090),
        # 27-35: nose
        ( 0.0000, -0.3603), ( 0.0000, -0.2626), ( 0.0000, -0.1666), ( 0.0000, -0.0677),
        (-0.1025, -0.0256), (-0.0532, -0.0048), ( 0.0000,  0.0123), ( 0.0532, -0.0048),
        ( 0.1025, -0.0256),
        # 36-47: eyes
        (-0.3010, -0.3580), (-0.2460, -0.3816), (-0.1855, -0.3803), (-0.1312, -0.3423),
        (-0.1901, -0.3358), (-0.2505, -0.3370), ( 0.1312, -0.3423), ( 0.1855, -0.3803),
        ( 0.2460, -0.3816), ( 0.3010, -0.3580), ( 0.2505, -0.3370), ( 0.1901, -0.3358),
        # 48-67: mouth
        (-0.1918,  0.1400), (-0.1237,  0.1146), (-0.0533,  0.1032), ( 0.0000,  0.1164),
        ( 0.0533,  0.1032), ( 0.1237,  0.1146), ( 0.1918,  0.1400), ( 0.1268,  0.2108),
        ( 0.0573,  0.2454), ( 0.0000,  0.2521), (-0.0573,  0.2454), (-0.1268,  0.2108),
        (-0.1637,  0.1450), (-0.0536,  0.1372), ( 0.0000,  0.1443), ( 0.0536,  0.1372),
        ( 0.1637,  0.1450), ( 0.0549,  0.1855), ( 0.0000,  0.1938), (-0.0549,  0.1855),    ],
    dtype=np.float64,
)

# Fit on brows, nose, eyes and mouth: the jaw line slides with yaw and would tilt the fit.
ALIGN_POINTS = np.arange(17, 68)
# Where the template's centre sits in the crop: a little below the middle, to leave room for the forehead.
FACE_CENTRE = np.array([0.5, 0.56])
# Share of the crop's width that the landmark box fills.
DEFAULT_COVERAGE = 0.625

REGIONS = {
    "jaw": np.arange(0, 17),
    "brows": np.arange(17, 27),
    "nose": np.arange(27, 36),
    "left_eye": np.arange(36, 42),
    "right_eye": np.arange(42, 48),
    "mouth": np.arange(48, 68),
}


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) taking src to dst, as 2x3.

    Umeyama (1991): the SVD of the cross-covariance gives the rotation; a reflection is never allowed.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / (src_c**2).sum(1).mean()
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_dst - scale * rotation @ mu_src
    return matrix


def template_points(size: int, coverage: float = DEFAULT_COVERAGE) -> np.ndarray:
    """The mean face in aligned-crop pixels for a crop of `size`."""
    return (FACE_CENTRE + MEAN_FACE * coverage) * size


def alignment_matrix(landmarks: np.ndarray, size: int, coverage: float = DEFAULT_COVERAGE) -> np.ndarray:
    """The 2x3 matrix that maps frame pixels onto the template in a `size` crop."""
    landmarks = np.asarray(landmarks, np.float64)
    return umeyama(landmarks[ALIGN_POINTS], template_points(size, coverage)[ALIGN_POINTS])


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def scale_matrix(matrix: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """The same alignment for a crop of another size (the model's, say)."""
    return np.asarray(matrix, np.float64) * (to_size / from_size)


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Cut the aligned face out of a frame; outside the frame is filled by reflection, not black."""
    return cv2.warpAffine(
        image, np.asarray(matrix, np.float64), (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101
    )
