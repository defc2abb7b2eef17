"""Face detection and 68-point landmarks, two backends behind one interface.

- "fan": face-alignment's S3FD detector and 2DFAN4 landmarks; the accurate GPU default. Its weights come
  from a folder given with --fan-weights, or from the engine's weights folder (downloaded there at first
  use unless offline). Every file's SHA-256 is checked against the published one before it is unpickled,
  and then only with weights_only, so a weights file cannot run code; torch.hub is never used.
- "dlib": dlib's HOG (or CNN) detector and 68-point predictor, with weights that the
  face-recognition-models package ships, so it works with no network.
Both give the same iBUG 68-point scheme, so everything downstream is backend-agnostic.
"""

import hashlib
import importlib.util
import io
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..base import media
from ..base.events import EngineError
from ..base.options import Choice

log = logging.getLogger("engine")

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

    def __init__(self, cnn: bool = False):
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


@dataclass(frozen=True)
class WeightFile:
    """A published weight file: its name, where it is published, and the first hex digits of its SHA-256
    (which the name carries, torch.hub style)."""

    name: str
    url: str
    sha256_prefix: str


_FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/"
# The files the fan backend trusts. A file is unpickled (weights_only) only after its SHA-256 matched here.
FAN_WEIGHTS = {
    "detector": WeightFile("s3fd-619a316812.pth", _FAN_URL + "s3fd-619a316812.pth", "619a316812"),
    "landmarks": WeightFile("2DFAN4-11f355bf06.pth.tar", _FAN_URL + "2DFAN4-11f355bf06.pth.tar", "11f355bf06"),
}
MAX_WEIGHTS_BYTES = 1 << 30  # the published files are about 90 MB; a larger one is refused unread


def weights_folder() -> Path:
    """Where the engine keeps the weights it downloads: $FACEREPLACE_WEIGHTS, else the user's cache."""
    if os.environ.get("FACEREPLACE_WEIGHTS"):
        return Path(os.environ["FACEREPLACE_WEIGHTS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "facereplace" / "weights"


def download(spec: WeightFile, path: Path, progress=None) -> None:
    """Fetch `spec` into a temp file beside `path`; it becomes `path` only once its hash matched.
    `progress(done, total)` hears of each chunk (total 0 when the server does not say)."""
    log.info("downloading %s to %s", spec.url, path)
    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(spec.url, timeout=60)
    except OSError as e:  # URLError is an OSError: no network, or a server that refused
        raise _download_failed(spec, e) from None
    with response, media.atomic_path(path) as tmp:  # its failed writes (a full disk) say "cannot write"
        total = int(response.headers.get("Content-Length") or 0)
        with open(tmp, "wb") as out:
            for chunk in _chunks(response, spec):
                digest.update(chunk)
                out.write(chunk)
                if out.tell() > MAX_WEIGHTS_BYTES:
                    raise EngineError(f"the download of {spec.url} is larger than any weights file; nothing was kept")
                if progress is not None:
                    progress(out.tell(), total)
        if not digest.hexdigest().startswith(spec.sha256_prefix):
            raise EngineError(f"the download of {spec.url} does not match its published SHA-256; nothing was kept")


def _chunks(response, spec: WeightFile):
    """The download's chunks; a read that fails (a dropped connection) is an EngineError naming the URL."""
    while True:
        try:
            chunk = response.read(1 << 20)
        except OSError as e:
            raise _download_failed(spec, e) from None
        if not chunk:
            return
        yield chunk


def _download_failed(spec: WeightFile, error: OSError) -> EngineError:
    return EngineError(f"could not download {spec.url} ({getattr(error, 'reason', error)})")


def verified_bytes(spec: WeightFile, path: Path) -> bytes:
    """The bytes of `path`, refused unless they are the published `spec` (size, then SHA-256)."""
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise EngineError(f"{path} is not the published {spec.name}: it is {path.stat().st_size >> 20} MB")
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if not found.startswith(spec.sha256_prefix):
        raise EngineError(
            f"{path} is not the published {spec.name}: its SHA-256 starts {found[:10]}, not {spec.sha256_prefix}; "
            f"delete it and get the file again"
        )
    return data


def _read_verified(spec: WeightFile, path: Path) -> dict:
    """The state dict in `path`, unpickled (weights_only) from the very bytes whose hash was checked."""
    data = verified_bytes(spec, path)
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a file that matches the hash loads; this is a torch that cannot read it
        raise EngineError(f"cannot load {path}: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EngineError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fan_state_dicts(folder: str | Path | None = None, offline: bool = False) -> dict[str, dict]:
    """The verified state dict of each of FAN_WEIGHTS, by role. From `folder` (--fan-weights, never written
    to), else from weights_folder(), which missing files are downloaded into unless `offline`."""
    if folder is not None:
        folder = Path(folder)
        missing = [w.name for w in FAN_WEIGHTS.values() if not (folder / w.name).is_file()]
        if missing:
            raise EngineError(f"--fan-weights {folder} lacks {', '.join(missing)}")
    else:
        folder = weights_folder()
        missing = [w for w in FAN_WEIGHTS.values() if not (folder / w.name).is_file()]
        if missing and offline:
            raise EngineError(
                f"the fan backend's weights are not in {folder} and --offline forbids downloading them; "
                f"put {' and '.join(w.name for w in missing)} there or pass --fan-weights DIR, "
                f"or use --detector dlib, which works offline"
            )
        for spec in missing:
            try:
                download(spec, folder / spec.name)
            except EngineError as e:
                raise EngineError(
                    f"the fan backend could not get its weights: {e}; put {spec.name} in {folder} "
                    f"or pass --fan-weights DIR, or use --detector dlib, which works offline"
                ) from None
    return {role: _read_verified(spec, folder / spec.name) for role, spec in FAN_WEIGHTS.items()}


def _fan_networks(states: dict[str, dict], device: str):
    """face-alignment's own S3FD detector and 2DFAN4 landmark network, holding `states`, wired so that its
    landmark code runs them. Its constructors would fetch weights through torch.hub, so they are bypassed."""
    import face_alignment
    import torch
    from face_alignment.detection.core import FaceDetector
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.detection.sfd.sfd_detector import SFDDetector
    from face_alignment.models import FAN

    class Detector(SFDDetector):
        def __init__(self, net):
            FaceDetector.__init__(self, device, verbose=False)
            self.face_detector = net
            self.filter_threshold = 0.5  # SFDDetector's default

    class Landmarks(face_alignment.FaceAlignment):
        def __init__(self, detector, net):  # the attributes that FaceAlignment's landmark methods read
            self.device, self.dtype, self.verbose = device, torch.float32, False
            self.landmarks_type = face_alignment.LandmarksType.TWO_D
            self.flip_input = False
            self.max_batch_size = 8  # faces of one frame per landmark forward pass
            self.face_detector = detector
            self.face_alignment_net = net

    nets = {"detector": s3fd(), "landmarks": FAN(4)}
    for role, net in nets.items():
        try:
            net.load_state_dict(states[role])
        except RuntimeError as e:
            raise EngineError(f"{FAN_WEIGHTS[role].name} does not fit face-alignment's network: {e}") from None
        net.to(device).eval()
    return Landmarks(Detector(nets["detector"]), nets["landmarks"])


class FanDetector:
    name = "fan"

    def __init__(self, device: str = "cpu", fan_weights: str | Path | None = None, offline: bool = False):
        self.device = str(device)
        self.model = _fan_networks(fan_state_dicts(fan_weights, offline), self.device)

    def _landmarks(self, image: np.ndarray, boxes) -> list[Detection]:
        if len(boxes) == 0:
            return []
        landmarks, scores, _ = self.model.get_landmarks_from_image(
            image, detected_faces=boxes, return_landmark_score=True
        )
        return [
            Detection(
                bbox=np.asarray(box[:4], np.float64),
                score=float(box[4]),
                landmarks=np.asarray(points, np.float64)[:, :2],
                landmark_confidence=float(np.mean(point_scores)),
            )
            for box, points, point_scores in zip(boxes, landmarks, scores, strict=True)
        ]

    def detect(self, image: np.ndarray) -> list[Detection]:
        return self._landmarks(image, self.model.face_detector.detect_from_image(image))

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Frames of one size go through the detector as one batch; landmarks follow face by face."""
        if len(images) == 1 or len({im.shape for im in images}) != 1:
            return [self.detect(image) for image in images]
        import torch

        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device)
        boxes = self.model.face_detector.detect_from_batch(batch)
        return [self._landmarks(image, found) for image, found in zip(images, boxes, strict=True)]


@dataclass(frozen=True)
class Backend:
    """A detector backend: its class, its entry in the add-on's menu, whether it runs on torch (and so on
    --device; a backend that does not is made without a device), the options it takes, as extract's
    command line declares them (argparse keywords by option name), and the frames per call it batches on
    CUDA by default."""

    make: type
    choice: Choice
    on_torch: bool
    options: dict
    cuda_batch: int = 1


BACKENDS = {
    "fan": Backend(FanDetector, Choice(
        "FAN", "face-alignment's S3FD and 2DFAN4: accurate, fast on a GPU; weights downloaded once"), True, {
        "fan_weights": {"help": "folder holding the fan backend's weight files, for offline use"},
        "offline": {"action": "store_true",
                    "help": "never reach the network: fan needs its weights on disk, auto falls back to dlib"}},
        cuda_batch=8),
    "dlib": Backend(DlibDetector, Choice("dlib", "dlib's HOG detector and 68-point predictor: works offline"), False,
                    {"cnn": {"action": "store_true", "help": "dlib backend: the CNN detector instead of HOG"}}),
}
# --detector: "auto" (fan, else dlib) and each backend, as the add-on's Face Detector menu shows them.
DETECTORS = {"auto": Choice("Auto", "FAN where its weights load (downloaded once), else dlib"),
             **{name: backend.choice for name, backend in BACKENDS.items()}}


def on_torch(name: str) -> bool:
    """Whether the detector `name` may run on torch, so that --device matters to it."""
    return name == "auto" or BACKENDS[name].on_torch


def make_detector(name: str = "auto", device: str = "cpu", **options):
    """A detector by backend name, given whichever of `options` its backend declares in BACKENDS. "auto"
    is fan where its weights load, else dlib with a warning. offline: never reach the network (fan then
    needs its weights on disk)."""
    if name == "auto":
        try:
            return make_detector("fan", device, **options)
        except EngineError as e:
            log.warning("%s; using the dlib backend", e)
            return make_detector("dlib", device, **options)
    if name not in BACKENDS:
        raise EngineError(f"unknown detector {name!r}; choose from auto, {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    return backend.make(*([device] if backend.on_torch else []),
                        **{key: value for key, value in options.items() if key in backend.options})
