"""Face detection and 68-point landmarks, two backends behind one interface.

- "fan": face-alignment's S3FD detector and 2DFAN4 landmarks; the accurate GPU default. Its weights come
  from the web at first use (cached by torch.hub), or from a folder given with --fan-weights.
- "dlib": dlib's HOG (or CNN) detector and 68-point predictor, with weights that the
  face-recognition-models package ships, so it works with no network.
Both give the same iBUG 68-point scheme, so everything downstream is backend-agnostic.
"""

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..events import EngineError

log = logging.getLogger("engine")

FAN_WEIGHT_FILES = ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar")


@dataclass
class Detection:
    bbox: np.ndarray  # x0, y0, x1, y1 in frame pixels
    score: float
    landmarks: np.ndarray  # 68 x 2, frame pixels
    landmark_confidence: float | None = None

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))


def dlib_model_path(name: str) -> Path:
    """A model file of face-recognition-models, found without importing it (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise EngineError("the dlib backend needs the face-recognition-models package (pip install face-recognition-models)")
    path = Path(spec.origin).parent / "models" / name
    if not path.is_file():
        raise EngineError(f"face-recognition-models is missing {name}; reinstall it")
    return path


class DlibDetector:
    name = "dlib"

    # HOG finds faces down to about 80 px, 40 px with one upsampling; large frames are shrunk to this
    # long side first (then upsampled once), which keeps 1080p fast and still finds faces of ~100 px.
    # Upsampling costs 4x but is kept always: its tighter boxes give the predictor better landmarks.
    DETECT_SIDE = 800

    def __init__(self, device: str = "cpu", cnn: bool = False):
        import dlib

        self.cnn = cnn
        if cnn:
            self.detector = dlib.cnn_face_detection_model_v1(str(dlib_model_path("mmod_human_face_detector.dat")))
        else:
            self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
        self._dlib = dlib

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = np.ascontiguousarray(image)
        scale = min(1.0, self.DETECT_SIDE / max(image.shape[:2]))
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        if self.cnn:
            found = self.detector(small, 1)
            rects, scores = [d.rect for d in found], [d.confidence for d in found]
        else:
            rects, scores, _ = self.detector.run(small, 1, 0.0)
        out = []
        for rect, score in zip(rects, scores, strict=True):
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float64) / scale
            full = self._dlib.rectangle(*(int(round(v)) for v in box))
            shape = self.predictor(image, full)
            points = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
            out.append(Detection(bbox=box, score=float(score), landmarks=points))
        return out

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Detection]]:
        return [self.detect(image) for image in images]


class FanDetector:
    name = "fan"

    def __init__(self, device: str = "cpu", weights: str | Path | None = None):
        import face_alignment
        import torch

        if weights is not None:
            weights = Path(weights)
            missing = [f for f in FAN_WEIGHT_FILES if not (weights / f).is_file()]
            if missing:
                raise EngineError(f"--fan-weights {weights} lacks {', '.join(missing)}")
            # face-alignment looks in <torch hub dir>/checkpoints; point the hub at a folder whose
            # checkpoints/ is the user's weights folder.
            hub = weights.parent / f".{weights.name}-hub"
            hub.mkdir(exist_ok=True)
            link = hub / "checkpoints"
            if not link.exists():
                link.symlink_to(weights.resolve(), target_is_directory=True)
            torch.hub.set_dir(str(hub))
        try:
            self.model = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D,
                device=str(device),
                flip_input=False,
                face_detector="sfd",
                compile=False,
            )
        except OSError as e:  # URLError is an OSError: no network, or a download that failed
            hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
            raise EngineError(
                f"the fan backend could not get its S3FD/2DFAN4 weights ({getattr(e, 'reason', e)}); "
                f"put {' and '.join(FAN_WEIGHT_FILES)} in {hub_dir} or pass --fan-weights DIR, "
                f"or use --detector dlib, which works offline"
            ) from None
        self.device = str(device)

    def _to_detections(self, landmarks, scores, boxes) -> list[Detection]:
        out = []
        for points, point_scores, box in zip(landmarks or [], scores or [], boxes or [], strict=False):
            out.append(
                Detection(
                    bbox=np.asarray(box[:4], np.float64),
                    score=float(box[4]) if len(box) > 4 else 1.0,
                    landmarks=np.asarray(points, np.float64)[:, :2],
                    landmark_confidence=float(np.mean(point_scores)),
                )
            )
        return out

    def detect(self, image: np.ndarray) -> list[Detection]:
        result = self.model.get_landmarks_from_image(image, return_bboxes=True, return_landmark_score=True)
        return self._to_detections(*result)

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """On CUDA, frames of one size go through the detector as one batch."""
        if "cuda" not in self.device or len({im.shape for im in images}) != 1:
            return [self.detect(image) for image in images]
        import torch

        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device)
        landmarks, scores, boxes = self.model.get_landmarks_from_batch(
            batch, return_bboxes=True, return_landmark_score=True
        )
        if landmarks is None:
            return [[] for _ in images]
        return [self._to_detections(*r) for r in zip(landmarks, scores, boxes, strict=True)]


BACKENDS = {"fan": FanDetector, "dlib": DlibDetector}


def make_detector(name: str = "auto", device: str = "cpu", fan_weights: str | Path | None = None, cnn: bool = False):
    """A detector by backend name. "auto" is fan where its weights load, else dlib with a warning."""
    if name == "dlib":
        return DlibDetector(device, cnn=cnn)
    if name == "fan":
        return FanDetector(device, weights=fan_weights)
    if name == "auto":
        try:
            return FanDetector(device, weights=fan_weights)
        except EngineError as e:
            log.warning("%s; using the dlib backend", e)
            return DlibDetector(device, cnn=cnn)
    raise EngineError(f"unknown detector {name!r}; choose from auto, {', '.join(BACKENDS)}")
