"""Frames in (video, image sequence, EXR) and images out (PNG 8/16-bit, EXR), always written atomically.

Images inside the engine are RGB(A) numpy arrays: uint8 or uint16 for display-referred sources, float32
for scene-linear EXR. OpenCV's BGR order stays inside this module.
"""

import contextlib
import json
import os
import queue
import re
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .events import EngineError

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".bmp"}


# ---------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`, else remove it.

    A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
    half-written file, even if the process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def read_json(path: str | os.PathLike):
    """A JSON file's content; an unreadable or damaged file is an EngineError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read {path}: {e}") from None


def check_writable(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and prove we can write there, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as e:
        raise EngineError(f"output folder {folder} is not writable: {e.strerror or e}") from None
    return folder


# ---------------------------------------------------------------- colour


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, np.float32), 0.0, None)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def to_float(image: np.ndarray) -> np.ndarray:
    """Display-referred float in [0, 1] (sRGB), whatever the source's storage; EXR is taken as linear."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return np.clip(linear_to_srgb(image), 0.0, 1.0)


def to_srgb8(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB view of any frame, for detection and the model."""
    if image.dtype == np.uint8:
        return image
    return np.round(to_float(image) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------- reading


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB or RGBA (or single channel) array; uint8/uint16 for PNG/JPG/TIFF, float32 for EXR."""
    path = Path(path)
    if path.suffix.lower() == ".exr":
        return _read_exr(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise EngineError(f"cannot read image {path}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def _read_exr(path: Path) -> np.ndarray:
    import OpenEXR

    try:
        with OpenEXR.File(str(path)) as f:
            channels = f.channels()  # valid only while the file is open
            for name in ("RGBA", "RGB", "Y"):
                if name in channels:
                    return np.array(channels[name].pixels, dtype=np.float32)
            names = sorted(channels)
    except Exception as e:
        raise EngineError(f"cannot read EXR {path}: {e}") from None
    raise EngineError(f"EXR {path} has no RGB, RGBA or Y channels (has {names})")


def image_metadata(path: str | os.PathLike) -> dict:
    """The text metadata of a PNG (tEXt/iTXt) or the string attributes of an EXR header."""
    path = Path(path)
    if path.suffix.lower() == ".exr":
        import OpenEXR

        with OpenEXR.File(str(path)) as f:
            return {k: v for k, v in f.header().items() if isinstance(v, str)}
    from PIL import Image

    with Image.open(path) as im:
        return dict(getattr(im, "text", {}))


def _frame_number(name: str) -> int | None:
    digits = re.findall(r"\d+", Path(name).stem)
    return int(digits[-1]) if digits else None


class FrameSource:
    """A shot: a video file or a folder holding one image sequence. Frame numbers are what a user sees:
    1-based for video, the number in the file name for an image sequence (position+1 if names have none)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise EngineError(f"input not found: {self.path}")
        if self.path.is_dir():
            self._open_sequence()
        elif self.path.suffix.lower() in VIDEO_EXTENSIONS:
            self._open_video()
        else:
            raise EngineError(
                f"input {self.path} is not a video ({', '.join(sorted(VIDEO_EXTENSIONS))}) or a folder of images"
            )

    # -- opening

    def _open_video(self) -> None:
        self.kind = "video"
        cap = cv2.VideoCapture(str(self.path))
        ok, first = cap.read() if cap.isOpened() else (False, None)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or None
        cap.release()
        if not ok or count <= 0:
            raise EngineError(f"cannot decode video {self.path}: not a video or an unsupported codec")
        self.size = (first.shape[1], first.shape[0])
        self.numbers = list(range(1, count + 1))
        self.files = None
        self.linear = False

    def _open_sequence(self) -> None:
        self.kind = "images"
        files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise EngineError(f"folder {self.path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        numbers = [_frame_number(p.name) for p in files]
        if None in numbers or len(set(numbers)) != len(numbers):
            numbers = list(range(1, len(files) + 1))
        order = sorted(range(len(files)), key=lambda i: numbers[i])
        self.files = {numbers[i]: files[i] for i in order}
        self.numbers = [numbers[i] for i in order]
        self.fps = None
        self.linear = any(p.suffix.lower() == ".exr" for p in files)
        first = read_image(files[order[0]])
        self.size = (first.shape[1], first.shape[0])
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Differing frame sizes break every later stage, so refuse them up front (headers only)."""
        from PIL import Image

        for number, path in self.files.items():
            if path.suffix.lower() == ".exr":
                continue  # read in full later; EXR headers need OpenEXR, checked in frames()
            try:
                with Image.open(path) as im:
                    size = im.size
            except Exception:
                raise EngineError(f"cannot read image {path}") from None
            if size != self.size:
                raise EngineError(
                    f"frame {number} ({path.name}) is {size[0]}x{size[1]} but the sequence is "
                    f"{self.size[0]}x{self.size[1]}: all frames of a shot must be one size"
                )

    # -- selection and reading

    def select(self, frames: str | None = None, every: int = 1) -> list[int]:
        """Frame numbers in `frames` ("A-B" or "A", inclusive), every `every`-th; an error if outside."""
        if every < 1:
            raise EngineError(f"--every must be 1 or more, got {every}")
        numbers = self.numbers
        if frames:
            m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", frames)
            if not m:
                raise EngineError(f"frame range {frames!r} is not of the form A-B")
            a, b = int(m.group(1)), int(m.group(2) or m.group(1))
            if a > b:
                raise EngineError(f"frame range {frames}: start is after end")
            first, last = numbers[0], numbers[-1]
            if a < first or b > last:
                raise EngineError(f"frame range {a}-{b} is outside the shot's frames {first}-{last}")
            numbers = [n for n in numbers if a <= n <= b]
            if not numbers:
                raise EngineError(f"frame range {a}-{b} holds no frames of the shot")
        return numbers[::every]

    def frames(self, numbers: list[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (frame number, RGB image) for `numbers` (all by default), in order."""
        wanted = self.numbers if numbers is None else sorted(numbers)
        if self.kind == "images":
            for n in wanted:
                image = read_image(self.files[n])
                if (image.shape[1], image.shape[0]) != self.size:
                    raise EngineError(f"frame {n} has another size than the rest of the sequence")
                if image.ndim == 2:
                    image = np.repeat(image[..., None], 3, axis=2)
                yield n, image[..., :3]
            return
        yield from self._video_frames(wanted)

    def _video_frames(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        if not wanted:
            return
        cap = cv2.VideoCapture(str(self.path))
        try:
            position = wanted[0]
            if position > 1:
                cap.set(cv2.CAP_PROP_POS_FRAMES, position - 1)
            targets = set(wanted)
            while position <= wanted[-1]:
                ok, frame = cap.read()
                if not ok:
                    raise EngineError(f"video {self.path} ended or failed to decode at frame {position}")
                if position in targets:
                    yield position, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                position += 1
        finally:
            cap.release()


class Prefetch:
    """Decodes a shot's frames on a thread, `depth` ahead of the consumer, so the detector or the model
    never waits on the decoder. Use it as a context manager: leaving the block (a consumer's error
    included) stops the reader instead of leaving it blocked on a full queue.

    `timer()`, if given, is a context manager wrapped around each decode, for stage timings.
    """

    def __init__(self, source: "FrameSource", numbers: list[int], depth: int = 8, timer=None):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(source, numbers, timer), daemon=True)
        self.thread.start()

    def _read(self, source, numbers, timer) -> None:
        try:
            frames = source.frames(numbers)
            while True:
                with timer() if timer else contextlib.nullcontext():
                    item = next(frames, None)
                if item is None or not self._put(item):
                    break
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)
        self._put(None)

    def _put(self, item) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while (item := self.queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- writing


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_with_text(png: bytes, metadata: dict[str, str]) -> bytes:
    """Insert iTXt chunks right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    chunks = b"".join(
        _png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + str(value).encode("utf-8"))
        for key, value in metadata.items()
    )
    return png[:33] + chunks + png[33:]


def encode_png(image: np.ndarray, metadata: dict[str, str] | None = None, compression: int = 3) -> bytes:
    """PNG bytes of a uint8 or uint16 array with 1, 3 or 4 channels (RGB order)."""
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise EngineError("PNG encoding failed")
    return _png_with_text(buf.tobytes(), metadata) if metadata else buf.tobytes()


def write_exr(path: str | os.PathLike, image: np.ndarray, metadata: dict[str, str] | None = None) -> None:
    """32-bit float EXR (Y, RGB or RGBA), ZIP-compressed, with `metadata` as string header attributes."""
    import OpenEXR

    image = np.ascontiguousarray(image, dtype=np.float32)
    name = {1: "Y", 3: "RGB", 4: "RGBA"}[1 if image.ndim == 2 else image.shape[2]]
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    header.update({k: str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp, OpenEXR.File(header, {name: image}) as f:
        f.write(str(tmp))


def write_image(path: str | os.PathLike, image: np.ndarray, metadata: dict[str, str] | None = None) -> None:
    """Atomically write PNG (uint8/uint16), EXR (float) or JPEG, by the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".exr":
        write_exr(path, image, metadata)
    elif suffix == ".png":
        write_bytes(path, encode_png(image, metadata))
    elif suffix in (".jpg", ".jpeg"):
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise EngineError(f"JPEG encoding failed for {path}")
        write_bytes(path, buf.tobytes())
    else:
        raise EngineError(f"cannot write images of type {suffix}")


def contact_sheet(tiles: list[np.ndarray], columns: int, labels: list[str] | None = None) -> np.ndarray:
    """Tiles (RGB uint8, one size) in a grid, each optionally captioned, for people to look at."""
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * h, columns * w, 3), 32, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        cell = np.ascontiguousarray(tile[..., :3])
        if labels:
            cv2.putText(cell, labels[i], (3, h - 5), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, h / 400), (255, 255, 0), 1,
                        cv2.LINE_AA)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = cell
    return sheet
