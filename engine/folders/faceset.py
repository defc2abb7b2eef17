"""The faceset folder, which this module alone lays out, and its alignments file: the one format that
extract writes and every later stage reads.

    FACESET/
      alignments.json          versioned JSON (never pickle), written atomically
      faces/000012_0.png       aligned face, RGB, face_size x face_size
      masks/hull/000012_0.png  landmark-hull mask, 8-bit, aligned space
      masks/extended/...       hull reaching up to the forehead, 8-bit, aligned space
      masks/learned/...        the occlusion matte `mask apply` draws (engine.stages.occlusion), when there is one
      mask_model/              the occlusion mask model `mask train` trains, unless told another folder
                               (a training folder as engine.base.checkpoints keeps it)
      extract.json             the settings of the extract that wrote it
      detections.jsonl         extract's first pass, every frame's detected faces (resumable)
      aside/                   faces curate moved aside, and moved.json, their record

Frame numbers are the source's own (1-based for video, the file's number for a sequence); a frame with
no face is still listed, with an empty "faces" list, so convert can write a blank layer for it.
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..base import media
from ..base.events import EngineError

FORMAT = "facereplace.alignments"
VERSION = 1
ALIGNMENTS_FILE = "alignments.json"
LEARNED_MASKS = "masks/learned"  # named as the faces: faces/000012_0.png -> masks/learned/000012_0.png
MASK_MODEL = "mask_model"  # the occlusion mask model (engine.stages.occlusion) when `mask train` is given no --model
FACESET_FOLDERS = ("faces", "masks/hull", "masks/extended")  # what extract writes into
EXTRACT_FILE = "extract.json"  # the settings of the extract that writes the faceset: a rerun must match them
DETECTIONS_FILE = "detections.jsonl"  # extract's first pass: every frame's detected faces, one frame a line
# Curate moves a face's files into aside/ (same relative paths), recorded in aside/moved.json. A face whose
# image is not in its place is not in the faceset: Faceset skips it, so training never sees it.
ASIDE_DIR = "aside"
MOVED_FILE = "moved.json"
ASIDE_FORMAT = "facereplace.aside"
ASIDE_VERSION = 1


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
        from ..faces.align import transform_points

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
    # Thumbnails of a few of the shot's frames (media.shot_signature): convert and evaluate check that
    # they are given the shot these alignments belong to. None in files older than the signature.
    signature: dict | None = None

    # -- queries

    def faces(self):
        """(frame number, face) for every face, in frame order."""
        for frame in self.frames:
            for face in frame.faces:
                yield frame.number, face

    def frame(self, number: int) -> Frame | None:
        """The frame numbered `number`, by an index built once (evaluate asks for every frame), and again
        only when `frames` is replaced or grows (extract appends as it goes)."""
        frames, count, index = self.__dict__.get("_frame_index", (None, 0, {}))  # not a field: never saved
        if frames is not self.frames or count != len(self.frames):
            index = {f.number: f for f in self.frames}
            self._frame_index = (self.frames, len(self.frames), index)
        return index.get(number)

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
            alignments = cls(**body, frames=frames)
        except (KeyError, TypeError, AttributeError) as e:
            raise EngineError(f"{where} is damaged or incomplete: {e}") from None
        alignments.check(where)
        return alignments

    def check(self, where: str) -> None:
        """Refuse values no extract writes (wrong types, NaN, a singular or absurd matrix, a frame listed
        twice), naming the frame: alignments may come from anyone, and every later stage trusts them."""
        def bad(what: str):
            return EngineError(f"{where} is damaged: {what}")

        if not (isinstance(self.source, str) and self.source_kind in ("video", "images") and isinstance(self.detector, str)
                and isinstance(self.settings, dict) and isinstance(self.linear, bool) and isinstance(self.complete, bool)):
            raise bad("source, source_kind, detector, settings, linear or complete has the wrong type")
        size = _numbers(self.source_size, (2,), integer=True)
        if size is None or size.min() < 1:
            raise bad(f"source_size {self.source_size!r} is not a width and height")
        if _numbers(self.source_frames, (None,), integer=True) is None:
            raise bad("source_frames is not a list of frame numbers")
        if not (isinstance(self.face_size, int) and not isinstance(self.face_size, bool) and 16 <= self.face_size <= 4096):
            raise bad(f"face_size {self.face_size!r} is not a size in pixels (16 to 4096)")
        if not (_finite(self.coverage) and 0 < self.coverage <= 1):
            raise bad(f"coverage {self.coverage!r} is not above 0 and at most 1")
        if self.fps is not None and not (_finite(self.fps) and self.fps > 0):
            raise bad(f"fps {self.fps!r} is not a positive number")
        every = self.settings.get("every", 1)
        if not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
            raise bad(f"settings.every {every!r} is not a whole number of frames")
        if self.signature is not None:
            _check_signature(self.signature, bad)
        seen = set()
        for frame in self.frames:
            if not isinstance(frame.number, int) or isinstance(frame.number, bool):
                raise bad(f"frame number {frame.number!r} is not a whole number")
            if frame.number in seen:
                raise bad(f"frame {frame.number} is listed twice")
            seen.add(frame.number)
            if not isinstance(frame.faces, list) or not (frame.file is None or isinstance(frame.file, str)):
                raise bad(f"frame {frame.number}: faces or file has the wrong type")
            for index, face in enumerate(frame.faces):
                _check_face(face, f"frame {frame.number} face {index}", size, self.face_size, bad)

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


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value, shape: tuple, integer: bool = False) -> np.ndarray | None:
    """`value` as an array of `shape` (None: any length) if it is nested lists of finite numbers, else None."""
    if not isinstance(value, list):
        return None
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):  # ragged lists
        return None
    if array.dtype.kind not in ("iu" if integer else "iuf") or array.ndim != len(shape):
        return None
    if any(want is not None and got != want for got, want in zip(array.shape, shape, strict=True)):
        return None
    return array if integer or np.isfinite(array).all() else None


def _check_signature(signature, bad) -> None:
    ok = isinstance(signature, dict) and _finite(signature.get("size")) and 1 <= signature["size"] <= 256
    frames = _numbers(signature.get("frames"), (None,), integer=True) if ok else None
    thumbnails = _numbers(signature.get("thumbnails"), (None, signature["size"] ** 2)) if ok else None
    if frames is None or thumbnails is None or len(frames) != len(thumbnails) or not len(frames):
        raise bad("its shot signature is not frame numbers with one thumbnail each")


def _check_face(face: Face, what: str, frame_size: np.ndarray, face_size: int, bad) -> None:
    for name, shape in (("bbox", (4,)), ("landmarks", (68, 2)), ("landmarks_raw", (68, 2)), ("matrix", (2, 3)),
                        ("embedding", (None,))):
        if _numbers(getattr(face, name), shape) is None:
            raise bad(f"{what}: {name} is not {' x '.join(str(n or 'N') for n in shape)} finite numbers")
    frame_side = int(frame_size.max())
    x0, y0, x1, y1 = face.bbox
    if not (x0 < x1 and y0 < y1 and x1 > 0 and y1 > 0 and x0 < frame_size[0] and y0 < frame_size[1]):
        raise bad(f"{what}: bbox {face.bbox} is not a box that overlaps the frame")
    for name in ("landmarks", "landmarks_raw"):  # a face may reach past the frame's edge, not far past it
        if np.abs(np.asarray(getattr(face, name), np.float64)).max() > 16 * frame_side:
            raise bad(f"{what}: {name} lie far outside the frame")
    for name in ("score", "landmark_confidence"):
        value = getattr(face, name)
        if not (_finite(value) or (value is None and name == "landmark_confidence")):
            raise bad(f"{what}: {name} {value!r} is not a number")
    for name in ("image", "mask_hull", "mask_extended"):
        if not isinstance(getattr(face, name), str):
            raise bad(f"{what}: {name} is not a file path")
    # The crop's side in frame pixels: a matrix that is singular, skewed, or frames a face far smaller
    # than a pixel or far larger than the frame would make convert allocate without bound.
    singular = np.linalg.svd(np.asarray(face.matrix, np.float64)[:, :2], compute_uv=False)
    if singular[1] <= 0 or singular[0] / singular[1] > 100:
        raise bad(f"{what}: matrix is singular or not a similarity")
    side = face_size / math.sqrt(singular[0] * singular[1])
    if not 4 <= side <= 16 * frame_side:
        raise bad(f"{what}: matrix frames a face {side:.3g} px wide in a frame {frame_side} px wide")


def check_alignments(alignments: Alignments, source: "media.FrameSource", where: Path) -> None:
    """`alignments` must be complete and describe `source`: its frame size and its frame numbers."""
    if not alignments.complete:
        raise EngineError(f"alignments {where} are incomplete: their extract did not finish (rerun it to resume)")
    if tuple(alignments.source_size) != tuple(source.size):
        w, h = alignments.source_size
        raise EngineError(
            f"alignments {where} are for a {w}x{h} shot but {source.path} is {source.size[0]}x{source.size[1]}"
        )
    if len(alignments.source_frames) != len(source.numbers):
        raise EngineError(
            f"alignments {where} are for a shot of {len(alignments.source_frames)} frames "
            f"but {source.path} has {len(source.numbers)}"
        )
    if list(alignments.source_frames) != list(source.numbers):
        raise EngineError(
            f"alignments {where} number their frames {alignments.source_frames[0]}-{alignments.source_frames[-1]} "
            f"but {source.path} numbers them {source.numbers[0]}-{source.numbers[-1]}"
        )


def check_same_shot(alignments: Alignments, source: "media.FrameSource", where, force: bool, warn) -> None:
    """Refuse a shot other than the one `alignments` were extracted from (by their signature), unless
    `force`: another clip of the same size and length would otherwise get faces drawn in the wrong places."""
    if alignments.signature is None:
        warn(f"{where} holds no shot signature (an older extract), so nothing checks that it belongs to "
             f"{source.path}")
    elif not media.same_shot(alignments.signature, source):
        message = f"{source.path} is not the shot the alignments {where} were extracted from: its frames look different"
        if not force:
            raise EngineError(f"{message} (--force uses them anyway)")
        warn(f"{message}; going on as --force asks")


@dataclass
class FaceSample:
    """One training face: paths plus landmarks in aligned space."""

    frame: int
    image: Path
    mask_hull: Path
    mask_extended: Path
    landmarks: np.ndarray  # 68 x 2, aligned pixels at the faceset's face_size
    mask_learned: Path | None = None  # where its learned occlusion matte is (or would be) written


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

    def kept_faces(self) -> list[tuple[int, Face]]:
        """(frame number, face) of each face curate has not moved aside."""
        return [(number, face) for number, face in self.alignments.faces() if self.paths(number, face)[0].is_file()]

    def samples(self) -> list[FaceSample]:
        out = []
        for number, face in self.kept_faces():
            image, hull, extended = self.paths(number, face)
            out.append(FaceSample(frame=number, image=image, mask_hull=hull, mask_extended=extended,
                                  landmarks=face.aligned_landmarks(), mask_learned=learned_mask(self.folder, face)))
        return out

    def paths(self, number: int, face: Face) -> tuple[Path, Path, Path]:
        """The face's image and masks in this folder; a path leading outside it is an EngineError."""
        where = f"{self.folder / ALIGNMENTS_FILE} frame {number}"
        return tuple(media.inside(self.folder, getattr(face, name), f"{where} {name}")
                     for name in ("image", "mask_hull", "mask_extended"))

    def __len__(self) -> int:
        return len(self.samples())


def read_face_image(path: Path, face_size: int | None, grey: bool = False) -> np.ndarray:
    """A faceset's image as uint8: a face in RGB (a grey one in three channels), or with `grey` a mask in
    one channel (a colour one's first). One that is not `face_size` px square (None: any size) is an
    EngineError naming it, whoever made it a 1x1 or a 64 px image in a 128 px faceset."""
    image = media.to_srgb8(media.read_image(path))
    if grey:
        image = image[..., 0] if image.ndim == 3 else image
    else:
        image = np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]
    if face_size is not None and image.shape[:2] != (face_size, face_size):
        raise EngineError(f"{'mask' if grey else 'face'} {path} is not {face_size} px, the size of its faceset's faces")
    return np.ascontiguousarray(image)


def learned_mask(folder: str | Path, face: Face) -> Path:
    """Where the learned occlusion matte of `face` lives in the faceset `folder` (it may not exist yet)."""
    return media.inside(folder, f"{LEARNED_MASKS}/{Path(face.image).name}", f"{folder} learned mask of {face.image}")


# ---------------------------------------------------------------- extract.json, detections.jsonl


def check_extract_settings(folder: Path, settings: dict) -> None:
    """An output folder holding another extract's work is refused, not mixed with this one."""
    previous = folder / EXTRACT_FILE
    if previous.is_file():
        try:
            old = json.loads(previous.read_text())
        except (ValueError, RecursionError):
            old = None
        if old != settings:
            raise EngineError(
                f"{folder} holds an extract with other settings or another source; "
                f"use a new --output folder or delete it"
            )
    elif any(p.name != media.LOCK_FILE for p in folder.iterdir()):
        raise EngineError(f"output folder {folder} is not empty and holds no extract; choose an empty folder")


class DetectionsLog:
    """FACESET/detections.jsonl, extract's first pass, appended a frame a line as detection goes: a
    killed extract resumes after the last whole line. Open it (`with`) to append."""

    SYNC_S = 1.0  # a killed process loses nothing the OS has; an fsync this often guards power loss

    def __init__(self, folder: Path):
        self.path = Path(folder) / DETECTIONS_FILE

    def read(self) -> dict[int, list[dict]]:
        """Frames already detected. A last line cut short by a kill is dropped and the file trimmed to match."""
        path = self.path
        done: dict[int, list[dict]] = {}
        if path.is_symlink():  # its trimming and appending would reach the link's target
            raise EngineError(f"{path} is a link: extract writes its own file there (remove the link)")
        if not path.is_file():
            return done
        good_bytes = 0
        with open(path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    done[int(record["frame"])] = record["faces"]
                except (ValueError, KeyError, TypeError, RecursionError):
                    break
                good_bytes += len(line)
        if good_bytes != path.stat().st_size:
            os.truncate(path, good_bytes)
        return done

    def __enter__(self) -> "DetectionsLog":
        self._file = media.open_appending(self.path)
        self._synced = time.monotonic()
        return self

    def append(self, number: int, faces: list[dict]) -> None:
        with media.write_errors(self.path):
            self._file.write(json.dumps({"frame": number, "faces": faces}) + "\n")

    def flush(self) -> None:
        with media.write_errors(self.path):
            self._file.flush()
            if time.monotonic() - self._synced > self.SYNC_S:
                os.fsync(self._file.fileno())
                self._synced = time.monotonic()

    def __exit__(self, *exc) -> None:
        with media.write_errors(self.path):
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()


# ---------------------------------------------------------------- aside/


def face_file(folder: Path, relative: str, what: str) -> Path | None:
    """Where a face's file is now: in place, or aside after an --apply; None if neither. A path leading
    outside the faceset is an EngineError naming `what`."""
    for path in face_places(folder, relative, what):
        if path.is_file():
            return path
    return None


def face_places(folder: Path, relative: str, what: str) -> tuple[Path, Path]:
    """A face file's place in the faceset and its place aside, both checked to stay inside the faceset."""
    return media.inside(folder, relative, what), media.inside(folder / ASIDE_DIR, relative, what)


def read_aside(folder: Path) -> list[dict]:
    """The faces aside/moved.json records as moved aside (each path checked to stay inside the faceset)."""
    path = folder / ASIDE_DIR / MOVED_FILE
    if not path.is_file():
        return []
    data = media.read_json(path)
    if not isinstance(data, dict) or data.get("format") != ASIDE_FORMAT or not isinstance(data.get("faces"), list):
        raise EngineError(f"{path} is not a FaceReplace aside record")
    for i, entry in enumerate(data["faces"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("files"), list) and "frame" in entry
                and entry.get("image") in entry["files"]):
            raise EngineError(f"{path} entry {i} is damaged: it needs a frame, an image and the files moved")
        for relative in entry["files"]:
            face_places(folder, relative, f"{path} entry {i}")
    return data["faces"]


def _write_aside(folder: Path, entries: list[dict]) -> None:
    media.write_json(folder / ASIDE_DIR / MOVED_FILE, {"format": ASIDE_FORMAT, "version": ASIDE_VERSION, "faces": entries})


def aside_images(folder: Path) -> set[str]:
    """The faces aside now: recorded, and their image is in aside/ (so missing from its place)."""
    return {e["image"] for e in read_aside(folder) if (folder / ASIDE_DIR / e["image"]).is_file()}


def _move(source: Path, destination: Path) -> bool:
    """Rename `source` to `destination` if it is there and the destination is free; True if it moved."""
    if not source.is_file() or destination.exists():
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)
    return True


def move_aside(folder: str | Path, flagged: list[dict], alignments: Alignments | None = None) -> int:
    """Move the flagged faces' image and masks into FACESET/aside/; returns how many faces moved.

    The record is written before any file moves, so a run killed half-way leaves every moved file
    listed, and --restore (or another --apply) finishes the job from whatever state it finds."""
    folder = Path(folder)
    alignments = alignments or Alignments.load(folder)
    by_image = {face.image: face for _, face in alignments.faces()}
    entries = read_aside(folder)
    recorded = {e["image"] for e in entries}
    new = []
    for s in flagged:
        face = by_image[s["image"]]
        for name in ("image", "mask_hull", "mask_extended"):
            face_places(folder, getattr(face, name), f"{folder / ALIGNMENTS_FILE} frame {s['frame']} {name}")
        if face.image in recorded or not (folder / face.image).is_file():
            continue
        new.append({"frame": s["frame"], "image": face.image,
                    "files": [face.image, face.mask_hull, face.mask_extended], "reasons": s["flags"]})
    if not new:
        return 0
    _write_aside(folder, entries + new)
    for entry in new:
        for relative in entry["files"]:
            _move(folder / relative, folder / ASIDE_DIR / relative)
    return len(new)


def restore_aside(folder: Path, entries: list[dict], progress=None) -> tuple[int, list[dict], list[str]]:
    """Move the faces `entries` (read_aside's) back to their places: (faces restored, entries still aside,
    files found both in place and aside, which are left in both since overwriting either could lose a
    face). `progress(i, entry)` after each face."""
    remaining, restored, conflicts = [], 0, []
    for i, entry in enumerate(entries, 1):
        for relative in entry["files"]:
            _move(folder / ASIDE_DIR / relative, folder / relative)
        left = [r for r in entry["files"] if (folder / ASIDE_DIR / r).is_file()]
        if left:
            conflicts += [r for r in left if (folder / r).is_file()]
            remaining.append(entry)
        else:
            restored += 1
        if progress:
            progress(i, entry)
    if entries:
        _write_aside(folder, remaining)
    return restored, remaining, conflicts
