"""Synthetic occluders with exact ground truth, pasted over a sample clip: a hand-like shape that slides
across the mouth and chin, and a microphone on a bar that rises toward the cheek. The tests and the demo
use them to teach and check the learned occlusion mattes (engine.stages.occlusion).
"""

import math

import cv2
import numpy as np

from engine.faces.masks import extended_mask

from . import samples

# A hand seen from the front, fingers up, in units of the palm's width, x right and y down: the wrist,
# the thumb out to the right, four fingers with gaps between them, back down the left side.
_FINGERS = [(0.39, -0.78), (0.13, -0.98), (-0.13, -1.02), (-0.39, -0.88)]  # (centre x, tip y)
_HAND = np.array(
    [(-0.45, 1.2), (0.45, 1.2), (0.55, 0.3), (0.92, 0.02), (1.02, -0.2), (0.86, -0.26), (0.5, -0.04)]
    + [p for x, tip in _FINGERS for p in ((x + 0.12, -0.08), (x + 0.12, tip + 0.07), (x, tip), (x - 0.12, tip + 0.07),
                                           (x - 0.12, -0.08))]
    + [(-0.5, 0.3)],
    np.float64,
)
HAND_COLOUR = (196, 132, 104)
MIC_COLOUR = (46, 46, 52)


def clip_landmarks(photo: str, matrices) -> list[np.ndarray]:
    """The 68 landmarks of `photo` in each frame of a clip made with these photo->frame matrices."""
    points = samples.photo_landmarks(photo)
    return [points @ m[:, :2].T + m[:, 2] for m in matrices]


def _shaded(shape: tuple[int, int], colour, rng: np.random.Generator, angle: float) -> np.ndarray:
    """A flat colour with a soft light gradient and fine noise, so the occluder is not one flat value."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    gradient = 0.8 + 0.4 * ((x * math.cos(angle) + y * math.sin(angle)) / max(h, w) % 1.0)
    noise = rng.normal(1.0, 0.04, (h, w)).astype(np.float32)
    return np.clip(np.float32(colour) * (gradient * noise)[..., None], 0, 255).astype(np.uint8)


def occluder_masks(landmarks: np.ndarray, shape: tuple[int, int], t: float) -> dict[str, np.ndarray]:
    """The hand and the microphone at clip time t in [0, 1], as boolean masks of a frame of `shape`."""
    h, w = shape
    eyes = landmarks[36:48].mean(0)
    chin, mouth = landmarks[8], landmarks[48:60].mean(0)
    face_width = np.linalg.norm(landmarks[16] - landmarks[0])
    # The hand slides from the left cheek across the mouth to the right one.
    palm = 0.34 * face_width
    centre = mouth + np.array([(t - 0.5) * 0.9 * face_width, 0.95 * palm])
    angle = math.radians(-15 + 30 * t)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    hand = np.zeros((h, w), np.uint8)
    cv2.fillPoly(hand, [np.round((_HAND @ rotation.T * palm + centre) * 16).astype(np.int32)], 1, shift=4)
    # The microphone: a bar from below the frame's right side, its head rising from the jaw to the cheek.
    head = np.array([landmarks[13][0] + 0.05 * face_width,
                     chin[1] - (0.15 + 0.35 * math.sin(math.pi * t)) * (chin[1] - eyes[1])])
    foot = head + np.array([0.5, 1.0]) * face_width * 1.5
    mic = np.zeros((h, w), np.uint8)
    cv2.line(mic, tuple(np.round(head * 16).astype(int)), tuple(np.round(foot * 16).astype(int)), 1,
             max(2, round(0.12 * face_width)), shift=4)
    cv2.circle(mic, tuple(np.round(head * 16).astype(int)), round(0.14 * face_width * 16), 1, -1, shift=4)
    return {"hand": hand.astype(bool), "mic": mic.astype(bool)}


def occlude(frames: list[np.ndarray], landmarks: list[np.ndarray], seed: int = 0):
    """(occluded frames, occluder masks, face labels): each frame with the hand and the microphone pasted
    over it; per frame the union of the occluders and the label a user would paint (the extended face
    mask, white, minus the occluders), both boolean, the frame's size."""
    rng = np.random.default_rng(seed)
    out, occluders, labels = [], [], []
    for i, (frame, points) in enumerate(zip(frames, landmarks, strict=True)):
        h, w = frame.shape[:2]
        t = i / max(len(frames) - 1, 1)
        shapes = occluder_masks(points, (h, w), t)
        frame = frame.copy()
        for name, colour in (("hand", HAND_COLOUR), ("mic", MIC_COLOUR)):
            frame[shapes[name]] = _shaded((h, w), colour, rng, 0.7 if name == "hand" else 2.0)[shapes[name]]
        occluder = shapes["hand"] | shapes["mic"]
        side = max(h, w)
        face = extended_mask(points, side)[:h, :w] >= 0.5
        out.append(frame)
        occluders.append(occluder)
        labels.append(face & ~occluder)
    return out, occluders, labels


def draw_outlines(layer, occluder: np.ndarray, to_mask_space) -> None:
    """What an artist does in Blender's Mask editor: trace each occluder's outline as a closed spline in
    the Mask `layer` (a bpy MaskLayer); `to_mask_space(point, width, height)` maps frame pixels to it."""
    h, w = occluder.shape
    contours, _ = cv2.findContours(occluder.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        points = contour[:, 0].astype(np.float64) + 0.5  # pixel centres
        spline = layer.splines.new()
        spline.use_cyclic = True
        spline.points.add(len(points) - 1)
        for point, xy in zip(spline.points, points, strict=True):
            point.co = to_mask_space(xy, w, h)
            point.handle_left_type = point.handle_right_type = "VECTOR"
