"""The faceset folder and its alignments file: the one format that extract writes and every later stage reads.

    FACESET/
      alignments.json          versioned JSON (never pickle), written atomically
      faces/000012_0.png       aligned face, RGB, face_size x face_size
      masks/hull/000012_0.png  landmark-hull mask, 8-bit, aligned space
      masks/extended/...       hull reaching up to the forehead, 8-bit, aligned space

Frame numbers are the source's own (1-based for video, the file's number for a sequence); a frame with
no face is still listed, with an empty "faces" list, so convert can write a blank layer for it.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import media
from .events import EngineError

FORMAT = "facereplace.alignments"
VERSION = 1
ALIGNMENTS_FILE = "alignments.json"


@dataclass
class Face:
    bbox: list[float]  # x0, y0, x1, y1 in frame pixels
    score: float  # detector confidence
    landmarks: list[list[float]]  # 68 x 2, frame pixels, smoothed over time (what the matrix is fit to)
    landmarks_raw: list[list[float]]  # 68 x 2, frame pixels, as detected
    matrix: list[list[float]]  # 2 x 3, frame pixels -> aligned pixels at face_size
    embedding: list[float]  # 128-D identity (dlib), from the raw frame
    image: str  # faceset-relative paths
    mask_hull: str
    mask_extended: str
    landmark_confidence: float | None = None  # mean per-point confidence where the backend gives one

    def aligned_landmarks(self) -> np.ndarray:
        from .faces.align import transform_points

        return transform_points(np.asarray(self.landmarks), np.asarray(self.matrix))


@dataclass
class Frame:
    number: int
    faces: list[Face] = field(default_factory=list)
    file: str | None = None  # the source file's name, for image sequences
    detections: int = 0  # faces the detector found, before identity selection


@dataclass
class Alignments:
    source: str  # absolute path of the shot
    source_kind: str  # "video" or "images"
    source_size: list[int]  # width, height of every frame
    source_frames: list[int]  # every frame number in the shot (not only the extracted ones)
    fps: float | None
    linear: bool  # True for scene-linear (EXR) shots
    face_size: int
    coverage: float
    detector: str
    settings: dict = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    complete: bool = False

    # -- queries

    def faces(self):
        """(frame number, face) for every face, in frame order."""
        for frame in self.frames:
            for face in frame.faces:
                yield frame.number, face

    def frame(self, number: int) -> Frame | None:
        return self._index().get(number)

    def _index(self) -> dict[int, Frame]:
        return {f.number: f for f in self.frames}

    # -- file format

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict, where: str = "alignments") -> "Alignments":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise EngineError(f"{where} is not a FaceReplace alignments file")
        if data.get("version") != VERSION:
            raise EngineError(f"{where} has alignments version {data.get('version')}; this engine reads {VERSION}")
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            frames = [Frame(**{**f, "faces": [Face(**face) for face in f["faces"]]}) for f in body.pop("frames")]
            return cls(**body, frames=frames)
        except (KeyError, TypeError) as e:
            raise EngineError(f"{where} is damaged or incomplete: {e}") from None

    def save(self, path: str | Path) -> None:
        media.write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Alignments":
        path = Path(path)
        if path.is_dir():
            path = path / ALIGNMENTS_FILE
        if not path.is_file():
            raise EngineError(f"alignments file not found: {path}")
        return cls.from_json(media.read_json(path), where=str(path))


@dataclass
class FaceSample:
    """One training face: paths plus landmarks in aligned space."""

    frame: int
    image: Path
    mask_hull: Path
    mask_extended: Path
    landmarks: np.ndarray  # 68 x 2, aligned pixels at the faceset's face_size


class Faceset:
    """A faceset folder opened for reading. Faces that curate moved aside (missing image) are skipped."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise EngineError(f"faceset folder not found: {self.folder}")
        self.alignments = Alignments.load(self.folder / ALIGNMENTS_FILE)
        if not self.alignments.complete:
            raise EngineError(f"faceset {self.folder} is incomplete: its extract did not finish (rerun it to resume)")
        self.face_size = self.alignments.face_size

    def samples(self) -> list[FaceSample]:
        out = []
        for number, face in self.alignments.faces():
            image = self.folder / face.image
            if image.is_file():
                out.append(
                    FaceSample(
                        frame=number,
                        image=image,
                        mask_hull=self.folder / face.mask_hull,
                        mask_extended=self.folder / face.mask_extended,
                        landmarks=face.aligned_landmarks(),
                    )
                )
        return out

    def __len__(self) -> int:
        return len(self.samples())
