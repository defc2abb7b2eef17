"""Sample shots made from public-domain photos that packages ship: scikit-image's astronaut (Eileen
Collins) and matplotlib's Grace Hopper. The demo, the tests and the benchmarks all start from these.

A clip moves the photo with a known similarity transform per frame (drift, zoom, roll, light), so a test
knows exactly where every landmark must land.
"""

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


def make_clip(
    photo: str = "astronaut",
    frames: int = 12,
    size: tuple[int, int] = (480, 360),
    scale: float = 1.0,
    motion: float = 1.0,
    light: float = 0.15,
):
    """(frames, matrices): RGB uint8 frames of `size` and the photo->frame matrix of each."""
    image = PHOTOS[photo]()
    matrices = clip_transforms(frames, size, photo, scale, motion)
    out = []
    for i, m in enumerate(matrices):
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
