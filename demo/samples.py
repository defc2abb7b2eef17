"""Sample shots made from public-domain photos that packages ship: scikit-image's astronaut (Eileen
Collins) and matplotlib's Grace Hopper. The demo, the tests and the benchmarks all start from these.

A clip moves the photo with a known similarity transform per frame (drift, zoom, roll, light), so a test
knows exactly where every landmark must land.
"""

import functools
import math
from pathlib import Path

import cv2
import numpy as np


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def grace_hopper() -> np.ndarray:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


PHOTOS = {"astronaut": astronaut, "grace_hopper": grace_hopper}

# Face centres in the photos (pixels), so a clip keeps the face in view.
FACE_CENTRES = {"astronaut": (220.0, 125.0), "grace_hopper": (273.0, 232.0)}


def clip_transforms(frames: int, size: tuple[int, int], photo: str, scale: float = 1.0, motion: float = 1.0):
    """One 2x3 photo->frame matrix per frame: a slow drift, a zoom of +-8% and a roll of +-6 degrees."""
    cx, cy = FACE_CENTRES[photo]
    w, h = size
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        angle = motion * 6.0 * math.sin(2 * math.pi * t)
        zoom = scale * (1.0 + motion * 0.08 * math.sin(2 * math.pi * t * 0.5 + 0.3))
        dx = motion * 0.06 * w * math.sin(2 * math.pi * t + 1.0)
        dy = motion * 0.04 * h * math.cos(2 * math.pi * t)
        m = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
        m[:, 2] += (w / 2 + dx - cx, h / 2 + dy - cy)
        out.append(m)
    return out


@functools.cache
def photo_landmarks(photo: str) -> np.ndarray:
    """The photo's 68 landmarks (dlib), found once."""
    from engine.faces.detect import make_detector

    return max(make_detector("dlib").detect(PHOTOS[photo]()), key=lambda d: d.area).landmarks


def open_mouth(image: np.ndarray, landmarks: np.ndarray, opening: float) -> np.ndarray:
    """The photo with its jaw dropped by `opening` (a share of the eye distance) and the gap between the
    lips dark, as a mouth opens: everything below the upper lip's inner edge moves down, most under the
    mouth's middle, fading out toward the cheeks and below the chin."""
    points = np.asarray(landmarks, np.float64)
    drop = opening * np.linalg.norm(points[45] - points[36])
    centre_x, width = points[[48, 54], 0].mean(), points[54, 0] - points[48, 0]
    chin, face_height = points[8, 1], points[8, 1] - points[27, 1]
    upper = points[60:65]  # the upper lip's inner edge, left to right

    def shift(x, y):
        across = np.exp(-(((x - centre_x) / (0.35 * width)) ** 2))
        below_chin = np.clip(1.0 - (y - chin) / (0.4 * face_height), 0.0, 1.0)
        line = np.interp(x, upper[:, 0], upper[:, 1])
        return drop * across * below_chin * (y > line)

    h, w = image.shape[:2]
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
    map_y = (grid_y - shift(grid_x, grid_y)).astype(np.float32)
    out = cv2.remap(image, grid_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    lower = points[[64, 65, 66, 67, 60]]  # the lower lip's inner edge, right to left, where it moved to
    lower = lower + np.stack([np.zeros(5), shift(lower[:, 0], lower[:, 1] + 1.0)], axis=1)
    gap = np.round(np.concatenate([upper, lower]) * 16).astype(np.int32)
    cv2.fillPoly(out, [gap], (60, 25, 30), lineType=cv2.LINE_AA, shift=4)
    return out


def make_clip(
    photo: str = "astronaut",
    frames: int = 12,
    size: tuple[int, int] = (480, 360),
    scale: float = 1.0,
    motion: float = 1.0,
    light: float = 0.15,
    mouth: float = 0.0,
):
    """(frames, matrices): RGB uint8 frames of `size` and the photo->frame matrix of each. With `mouth`,
    the mouth opens and closes twice over the clip, at most by that share of the eye distance."""
    image = PHOTOS[photo]()
    matrices = clip_transforms(frames, size, photo, scale, motion)
    out = []
    for i, m in enumerate(matrices):
        if mouth:
            opening = mouth * (0.5 - 0.5 * math.cos(4 * math.pi * i / max(frames - 1, 1)))
            image = open_mouth(PHOTOS[photo](), photo_landmarks(photo), opening)
        frame = cv2.warpAffine(image, m, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        gain = 1.0 + light * math.sin(2 * math.pi * i / max(frames, 1))
        out.append(np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return out, matrices


def two_faces_frame(size: tuple[int, int] = (960, 400)) -> np.ndarray:
    """Both people side by side in one frame, for identity selection."""
    w, h = size
    canvas = np.zeros((h, w, 3), np.uint8)
    for k, photo in enumerate(("astronaut", "grace_hopper")):
        m = clip_transforms(1, (w // 2, h), photo, scale=0.9, motion=0.0)[0]
        canvas[:, k * (w // 2) : (k + 1) * (w // 2)] = cv2.warpAffine(
            PHOTOS[photo](), m, (w // 2, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
        )
    return canvas


def write_sequence(folder: str | Path, frames, start: int = 1, ext: str = ".png") -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{start + i:04d}{ext}"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def write_video(path: str | Path, frames, fps: float = 24.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
