"""convert --format exr-multilayer: one EXR per frame holding the face layer, its mattes and its placement.

Channels follow the `layer.channel` convention that Nuke, Fusion and Blender's compositor read as layers
(Blender shows them as passes of the Image node):

    face.R face.G face.B face.A   the face layer, scene-linear, premultiplied unless --alpha straight
    matte.Y                       the layer's alpha (the final, eroded and feathered matte)
    occlusion.Y                   where the learned mask found an occluder over a face (1), when one was used:
                                  a holdout matte, 0 off the faces as outside the data window
    hull.Y                        the landmark hull of every face, hard-edged

The data window covers only the faces' box (the convert margin included), the display window the whole
frame, so a 4K frame with a small face stores and reads only the face's pixels. A frame with no face
gets a 1x1 data window of zeros. Header attributes: the synthetic-media marking convert puts in every
file, `facereplace_model_hash`, and `facereplace_matrices`: per face, the 2x3 `matrix` (frame pixels ->
aligned pixels at `patch_size`) and its `inverse`, pixel centres at integer coordinates.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..base import media
from ..faces import align, masks

LAYERS = ("face", "matte", "occlusion", "hull")


@dataclass
class FaceMattes:
    """One face's placement and its aligned-space mattes (patch_size x patch_size, 0..1)."""

    matrix: np.ndarray  # 2x3, frame pixels -> aligned pixels
    landmarks: np.ndarray  # 68x2, aligned pixels
    occlusion: np.ndarray | None = None  # the learned mask, 1 = face, 0 = occluder; None when none was used


def to_frame(aligned: np.ndarray, matrix: np.ndarray, box) -> np.ndarray:
    """An aligned-space matte warped into frame pixels over `box` (x0, y0, x1, y1), by the exact inverse
    of `matrix`; zero outside the aligned square."""
    x0, y0, x1, y1 = box
    to_box = (np.vstack([matrix, [0, 0, 1]]) @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]]))[:2]
    return cv2.warpAffine(np.asarray(aligned, np.float32), to_box, (x1 - x0, y1 - y0),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def face_mattes(faces: list[FaceMattes], size: int, box) -> dict[str, np.ndarray]:
    """The hull and, where any face has a learned matte, occlusion mattes of a frame over `box`: the
    faces' union for the hull; for occlusion, the union of what each face's matte marks as occluder."""
    w, h = box[2] - box[0], box[3] - box[1]
    hull = np.zeros((h, w), np.float32)
    occlusion = np.zeros((h, w), np.float32)
    for face in faces:
        covered = to_frame(masks.hull_mask(face.landmarks, size), face.matrix, box)
        hull = np.maximum(hull, covered)
        if face.occlusion is not None:
            occluder = 1 - np.asarray(face.occlusion, np.float32)
            occlusion = np.maximum(occlusion, to_frame(occluder, face.matrix, box))
    mattes = {"hull": hull}
    if any(face.occlusion is not None for face in faces):
        mattes["occlusion"] = occlusion
    return mattes


def header_matrices(faces: list[FaceMattes], size: int) -> str:
    return json.dumps({
        "patch_size": size,
        "faces": [{"matrix": np.round(f.matrix, 9).tolist(), "inverse": np.round(align.invert_matrix(f.matrix), 9).tolist()}
                  for f in faces],
    })


def write(path: str | Path, frame_size, box, rgba: np.ndarray | None, mattes: dict[str, np.ndarray],
          metadata: dict[str, str]) -> None:
    """Write one frame's layers. `rgba` (h x w x 4 float, the face layer as it is to be stored) and each
    matte (h x w) cover `box` (x0, y0, x1, y1, clipped to the frame); `rgba` None is a frame with no face."""
    import OpenEXR

    width, height = frame_size
    if rgba is None:
        box, rgba, mattes = (0, 0, 1, 1), np.zeros((1, 1, 4), np.float32), {"hull": np.zeros((1, 1), np.float32)}
    x0, y0, x1, y1 = box
    channels = {f"face.{c}": np.ascontiguousarray(rgba[..., i], np.float32) for i, c in enumerate("RGBA")}
    channels["matte.Y"] = np.ascontiguousarray(rgba[..., 3], np.float32)
    channels.update({f"{name}.Y": np.ascontiguousarray(m, np.float32) for name, m in mattes.items()})
    header = {
        "compression": OpenEXR.ZIP_COMPRESSION,
        "type": OpenEXR.scanlineimage,
        "displayWindow": ((0, 0), (width - 1, height - 1)),
        "dataWindow": ((x0, y0), (x1 - 1, y1 - 1)),
        **{k: str(v) for k, v in metadata.items()},
    }
    with media.atomic_path(path) as tmp, OpenEXR.File(header, channels) as f:
        f.write(str(tmp))


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """{layer: full-frame float32 pixels (h x w x 4 for face, h x w for the mattes)} and the header, with
    the data window placed in the display window (zero outside it)."""
    import OpenEXR

    with OpenEXR.File(str(path)) as f:
        header = dict(f.header())
        (dx0, dy0), (dx1, dy1) = header["displayWindow"]
        (x0, y0), (x1, y1) = header["dataWindow"]
        channels = {name: np.array(c.pixels, np.float32) for name, c in f.channels().items()}
    width, height = int(dx1 - dx0 + 1), int(dy1 - dy0 + 1)
    window = (slice(int(y0 - dy0), int(y1 - dy0 + 1)), slice(int(x0 - dx0), int(x1 - dx0 + 1)))
    layers = {}
    for layer in LAYERS:  # OpenEXR's reader groups face.R, .G, .B, .A into one "face" of 4 channels
        name = layer if layer == "face" else f"{layer}.Y"
        if name in channels:
            full = np.zeros((height, width) + channels[name].shape[2:], np.float32)
            full[window] = channels[name]
            layers[layer] = full
    return layers, header
