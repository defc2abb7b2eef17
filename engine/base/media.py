"""Frames in (video, image sequence) and images out, always written atomically.

Still images (DPX, TIFF, EXR, PNG, JPEG, ...) are read and written through OpenImageIO, their size
checked from the header before any pixel is decoded; video stays on OpenCV's decoder. Images inside the
engine are RGB(A) numpy arrays: uint8 or uint16 for integer files (DPX's 10 and 12 bits scaled to 16),
float32 for float ones (EXR). What the values mean is the plate's colour space (engine.base.colorspace).
OpenCV's BGR order stays inside this module.
"""

import contextlib
import contextvars
import errno
import fnmatch
import functools
import json
import os
import queue
import re
import shutil
import stat
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import portalocker

from . import colorspace
from .events import EngineError
from .frames import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, parse_range, sequence_files, sequence_numbers

# ---------------------------------------------------------------- atomic writes


def _read_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (changing it races threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file: mkstemp's 0600 would hide outputs
# A temp file's name keeps this much of its target's stem, so it is no longer than the target's name plus 14
# characters: a deep output path that fits Windows' 260 characters keeps fitting while it is written.
TEMP_STEM = 16


def set_file_mode(fd: int) -> None:
    """Give the open file `fd` FILE_MODE. Windows has only a read-only bit, which mkstemp leaves off, and
    (before Python 3.13) no chmod of an open file: there the file keeps what it has."""
    if os.chmod in os.supports_fd:
        os.chmod(fd, FILE_MODE)


# Test hook: a write whose target name matches this glob pauses after its temp file is complete and
# before the rename, and says so on stderr, so a test can kill it exactly there. Unset, it does nothing.
PAUSE_BEFORE_RENAME = "FACEREPLACE_PAUSE_BEFORE_RENAME"
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?|\.write-test\.[a-z0-9_]{8}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, complete=None):
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`, else remove it.

    A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
    half-written file, even if the process is killed mid-write (`sweep_temp_files` removes what is left).
    A write that fails (a full disk: OSError, or torch's RuntimeError) or that `complete(temp path)` finds
    cut short (a library that ignores a failed write) is an EngineError naming the file and the free space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:TEMP_STEM]}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    try:
        set_file_mode(fd)
    finally:
        os.close(fd)
    try:
        try:
            yield Path(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            raise write_failed(path, _why(e)) from None
        if not (complete or _not_empty)(Path(tmp)):
            raise write_failed(path, "the file came out cut short")
        _pause_for_tests(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _not_empty(path: Path) -> bool:
    return path.stat().st_size > 0


def _why(error: Exception) -> str:
    """Why a write failed, in the words __main__ uses for a full disk."""
    number = getattr(error, "errno", None)
    if number in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the disk"
    return "it is a link" if number == errno.ELOOP else getattr(error, "strerror", None) or str(error)


def write_failed(path: Path, reason: str) -> EngineError:
    """The error of a write that did not complete: the file, why, and the room left on its disk."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free on its disk"
    except OSError:
        free = "the free space on its disk unknown"
    return EngineError(f"cannot write {path}: {reason.splitlines()[0] if reason else 'failed'} ({free})")


def _pause_for_tests(path: Path, tmp: str) -> None:
    pattern = os.environ.get(PAUSE_BEFORE_RENAME)
    if pattern and fnmatch.fnmatch(path.name, pattern):
        print(f"paused before rename: {tmp}", file=sys.stderr, flush=True)
        while True:  # until the test kills it (signal.pause does not exist on Windows)
            time.sleep(3600)


def sweep_temp_files(folder: str | os.PathLike) -> None:
    """Remove the temp files that writes killed mid-way left in `folder` and below (atomic_path's names),
    never through a link: a linked subfolder is not entered (a linked `folder` is refused by the
    run's check_writable before it sweeps)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for root, _, files in os.walk(folder):  # os.walk enters no linked folder
        for name in files:
            if TEMP_NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))


@contextlib.contextmanager
def write_errors(path: str | os.PathLike):
    """A write to `path` in the block that fails (a full disk) as an EngineError naming it and the free space."""
    try:
        yield
    except OSError as e:
        raise write_failed(Path(path), _why(e)) from None


def open_appending(path: str | os.PathLike):
    """`path` opened to append text (a log a killed run resumes after), never through a link, which would
    write outside its folder. Wrap its writes in `write_errors`."""
    with write_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    return os.fdopen(fd, "a", newline="")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, lambda tmp: tmp.stat().st_size == len(data)) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def read_json(path: str | os.PathLike):
    """A JSON file's content; an unreadable or damaged file is an EngineError naming it."""
    if not Path(path).is_file():  # a FIFO or a device would block or never end
        raise EngineError(f"cannot read {path}: not a file")
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read {path}: {e}") from None
    except RecursionError:
        raise EngineError(f"cannot read {path}: its JSON is nested too deeply") from None


def check_writable(folder: str | os.PathLike, subfolders=()) -> Path:
    """Create `folder` if needed and prove we can write there, before any work starts. `subfolders` (relative
    paths) are where the run will write inside it: each is refused if it, or a folder on the way to it, is
    a link, which would lead the run's writes (and its sweep of killed writes) out of the folder."""
    folder = Path(folder)
    for name in subfolders:
        path = folder
        for part in Path(name).parts:
            path = path / part
            if path.is_symlink():
                raise EngineError(f"{path} is a link: a run writes only into real folders inside {folder} "
                                  f"(replace the link with a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as e:
        raise EngineError(f"output folder {folder} is not writable: {e.strerror or e}") from None
    return folder


# ---------------------------------------------------------------- files from strangers


def inside(folder: str | os.PathLike, relative, what: str) -> Path:
    """`folder / relative` for a path read from a file someone else may have written: refused with an
    EngineError naming `what` (the entry) unless it is relative and stays inside `folder`, symlinks
    resolved, so no faceset, model or output folder can make a run read, move or write elsewhere."""
    folder = Path(folder)
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise EngineError(f"{what}: {relative!r} is not a file path")
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise EngineError(f"{what}: {relative!r} points outside {folder} (absolute paths and .. are refused)")
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise EngineError(f"{what}: {relative!r} leads outside {folder} through a link")
    return path


LOCK_FILE = ".facereplace.lock"
_held_locks: "contextvars.ContextVar[contextlib.ExitStack | None]" = contextvars.ContextVar("locks", default=None)


def holds_folder_locks(function):
    """Mark a stage's function: locks it takes with `lock_folder` are released when it returns or raises."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            token = _held_locks.set(stack)
            try:
                return function(*args, **kwargs)
            finally:
                _held_locks.reset(token)

    return wrapper


def lock_folder(folder: str | os.PathLike, shared: bool = False) -> None:
    """Take `folder`'s lock until the enclosing `holds_folder_locks` function ends: exclusive for the one
    run that writes a folder, `shared` for runs that may write it side by side (farm chunks of one
    convert). It is an OS lock (portalocker: flock on POSIX, LockFileEx on Windows) on
    FOLDER/.facereplace.lock, so a killed run never leaves it held; readers take none. A folder in use is
    an EngineError naming the run that holds it."""
    stack = _held_locks.get()
    if stack is None:
        raise RuntimeError("lock_folder is for functions marked holds_folder_locks")
    folder = Path(folder)
    lock = stack.enter_context(_open_lock_file(folder / LOCK_FILE))
    flags = portalocker.LockFlags.SHARED if shared else portalocker.LockFlags.EXCLUSIVE
    try:
        portalocker.lock(lock, flags | portalocker.LockFlags.NON_BLOCKING)
    except portalocker.AlreadyLocked:
        raise EngineError(f"{folder} is in use by another run (pid {_lock_holder(lock)})") from None
    except portalocker.LockException as e:
        cause = e.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return  # a filesystem without locks (some network mounts): run, as before locks
        raise EngineError(f"cannot lock {folder}: {getattr(cause, 'strerror', None) or e}") from None
    if not shared:  # the holder's pid, for the message another run gets; blanked on a clean exit
        try:
            _write_at_start(lock, str(os.getpid()))
        except OSError as e:  # a full disk: the first byte a run writes is often this record's
            raise write_failed(folder / LOCK_FILE, _why(e)) from None
        stack.callback(_write_at_start, lock, "")


LOCK_HOLDER_WIDTH = 32  # the lock file's one record: a pid, padded, so it is overwritten, never truncated


@contextlib.contextmanager
def _open_lock_file(path: Path):
    """The lock file, opened for reading and writing (created if missing) only if it is a plain file of
    its folder: a symbolic link (dangling or not, refused by O_NOFOLLOW where the OS has it) or a hard link
    could make writing the holder's pid write a file elsewhere."""
    if path.is_symlink():
        raise EngineError(f"{path} is a link: the lock must be a plain file of its folder (remove the link)")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:  # it became a link since the check
            raise EngineError(f"{path} is a link: the lock must be a plain file of its folder (remove the link)") from None
        raise EngineError(f"output folder {path.parent} is not writable: {e.strerror or e}") from None
    with os.fdopen(fd, "r+b", buffering=0) as lock:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_nlink > 1:
            raise EngineError(f"{path} is not a plain file of its folder (a link to another file?): remove it")
        yield lock


def _write_at_start(lock, text: str) -> None:
    lock.seek(0)
    lock.write(text.ljust(LOCK_HOLDER_WIDTH).encode())


def _lock_holder(lock) -> str:
    """The pid the holder wrote, or 'unknown' (Windows keeps a locked file's bytes from other processes)."""
    try:
        lock.seek(0)
        return lock.read(LOCK_HOLDER_WIDTH).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


MAX_PIXELS = "FACEREPLACE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 16384 * 8192  # a 16K x 8K frame; a float RGBA frame this size takes 2 GiB


def max_pixels() -> int:
    """The largest image (width x height) the engine decodes: $FACEREPLACE_MAX_PIXELS or the default."""
    value = os.environ.get(MAX_PIXELS)
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise EngineError(f"{MAX_PIXELS}={value!r} is not a positive whole number of pixels")
    return limit


def check_dimensions(width: int, height: int, what) -> None:
    """Refuse an image whose size (from its header) would not fit in memory, before it is decoded."""
    if width < 1 or height < 1 or width * height > max_pixels():
        raise EngineError(f"{what} is {width}x{height} pixels: more than the {max_pixels()} pixels this engine "
                          f"decodes (set {MAX_PIXELS} to raise the limit)")


# ---------------------------------------------------------------- pixels that are not numbers


def finite_pixels(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """`pixels` with every NaN or infinite sample (a damaged or badly rendered float plate) set to 0, and
    how many there were: one such sample would otherwise turn a whole face, its colour match and its
    matte into NaN. Integer pixels come back as they are."""
    if pixels.dtype.kind != "f":
        return pixels, 0
    bad = ~np.isfinite(pixels)
    count = int(np.count_nonzero(bad))
    return (np.where(bad, 0, pixels).astype(pixels.dtype), count) if count else (pixels, 0)


def non_finite_warning(counts: dict[int, int], where: str) -> str:
    """The one warning of a shot whose frames (number -> count) held NaN or infinite samples `where`."""
    frames = sorted(counts)
    return (f"{sum(counts.values())} samples of the plate {where} are NaN or infinite, in {len(frames)} frames "
            f"(the first: {frames[0]}); they were taken as 0: check the plate's render")


# ---------------------------------------------------------------- colour


def to_float(image: np.ndarray) -> np.ndarray:
    """Display-referred float in [0, 1] (sRGB), whatever the source's storage; EXR is taken as linear."""
    if image.dtype in (np.uint8, np.uint16):
        return colorspace.as_float(image)
    return np.clip(colorspace.linear_to_srgb(image), 0.0, 1.0)


def to_srgb8(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB view of any frame, for detection and the model."""
    if image.dtype == np.uint8:
        return image
    return np.round(to_float(image) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------- reading


def _oiio():
    import OpenImageIO

    return OpenImageIO


def _oiio_error(otherwise: str) -> str:
    """OpenImageIO's last error (reading it clears it), first line only."""
    message = _oiio().geterror().strip()
    return message.splitlines()[0] if message else otherwise


class _Picture:
    """An image file opened for reading: the part (subimage) holding its picture and that part's
    channels, known from the header alone."""

    def __init__(self, path: Path):
        oiio = _oiio()
        config = oiio.ImageSpec()
        config.attribute("oiio:UnassociatedAlpha", 1)  # PNG/TIFF alpha as stored, not premultiplied on read
        self.path = path
        if not path.is_file():  # a FIFO or a device would block the read or never end
            raise EngineError(f"cannot read image {path}: not a file")
        self.input = oiio.ImageInput.open(str(path), config)
        if self.input is None:
            raise EngineError(f"cannot read image {path}: {_oiio_error('not an image it knows')}")
        try:
            self.subimage, self.channels = self._find_picture()
            self.spec = self.input.spec()
        except BaseException:
            self.input.close()
            raise

    def _find_picture(self) -> tuple[int, list[int]]:
        """The first part with R, G, B (or Y) channels, a layer's (name.R ...) included; its channel indices."""
        seen, subimage = [], 0
        while self.input.seek_subimage(subimage, 0):
            names = list(self.input.spec().channelnames)
            for prefix in [""] + sorted({n.rsplit(".", 1)[0] + "." for n in names if "." in n}):
                if all(prefix + c in names for c in "RGB"):
                    wanted = [prefix + c for c in ("RGBA" if prefix + "A" in names else "RGB")]
                    return subimage, [names.index(n) for n in wanted]
                if prefix + "Y" in names:
                    wanted = [prefix + "Y"] + ([prefix + "A"] if prefix + "A" in names else [])
                    return subimage, [names.index(n) for n in wanted]
            seen += names
            subimage += 1
        raise EngineError(f"image {self.path} has no RGB, RGBA or Y channels (has {sorted(set(seen))})")

    @property
    def size(self) -> tuple[int, int]:
        """The display window: the frame, wherever the data window lies."""
        return self.spec.full_width, self.spec.full_height

    def check(self) -> None:
        what = f"image {self.path}"
        check_dimensions(*self.size, what)
        check_dimensions(self.spec.width, self.spec.height, what)

    def read(self) -> np.ndarray:
        oiio, spec = _oiio(), self.spec
        basetype = spec.format.basetype
        kind = ("uint8" if basetype == oiio.UINT8 else
                "float" if basetype in (oiio.HALF, oiio.FLOAT, oiio.DOUBLE) else "uint16")
        # Only the picture's channels (OpenImageIO puts a part's R, G, B, A or Y, A first): an EXR of a
        # thousand layers would otherwise take as much memory as a frame a thousand times larger.
        first, last = min(self.channels), max(self.channels) + 1
        data = self.input.read_image(self.subimage, 0, first, last, kind)
        if data is None or self.input.has_error:  # a file cut short reads as zeros, with an error
            reason = self.input.geterror().strip() or _oiio_error("damaged")
            raise EngineError(f"cannot read image {self.path}: {reason.splitlines()[0]}")
        data = data.reshape(spec.height, spec.width, last - first)
        if self.channels != list(range(first, last)):
            data = data[..., [c - first for c in self.channels]]
        if (spec.x, spec.y, spec.width, spec.height) != (spec.full_x, spec.full_y, *self.size):
            data = self._in_display_window(data)  # a data window: pixels outside it are 0, as OpenEXR says
        return data[..., 0] if data.shape[2] == 1 else np.ascontiguousarray(data)

    def _in_display_window(self, data: np.ndarray) -> np.ndarray:
        spec = self.spec
        frame = np.zeros((spec.full_height, spec.full_width, data.shape[2]), data.dtype)
        x0, y0 = max(spec.x, spec.full_x), max(spec.y, spec.full_y)
        x1 = min(spec.x + spec.width, spec.full_x + spec.full_width)
        y1 = min(spec.y + spec.height, spec.full_y + spec.full_height)
        if x1 > x0 and y1 > y0:
            frame[y0 - spec.full_y:y1 - spec.full_y, x0 - spec.full_x:x1 - spec.full_x] = \
                data[y0 - spec.y:y1 - spec.y, x0 - spec.x:x1 - spec.x]
        return frame

    def __enter__(self) -> "_Picture":
        return self

    def __exit__(self, *exc) -> None:
        self.input.close()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """An image's width and height, from its header only."""
    with _Picture(Path(path)) as picture:
        return picture.size


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB or RGBA (or single channel) array in the frame's display window: uint8/uint16 for integer files,
    float32 for float ones. The header's size is checked before the pixels are decoded."""
    with _Picture(Path(path)) as picture:
        picture.check()
        return picture.read()


def image_metadata(path: str | os.PathLike) -> dict:
    """The text metadata of a PNG (tEXt/iTXt, read raw: OpenImageIO parses XMP away) or the string
    attributes of another format's header."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        from PIL import Image

        if not path.is_file():
            raise EngineError(f"cannot read image {path}: not a file")
        with Image.open(path) as im:
            return dict(getattr(im, "text", {}))
    with _Picture(path) as picture:
        return {a.name: a.value for a in picture.spec.extra_attribs if isinstance(a.value, str)}


def _capture(path: Path) -> cv2.VideoCapture:
    """OpenCV's decoder of a video, its frames turned as the file's rotation metadata says (a phone's
    portrait clip), as Blender shows them, so layers line up with the strip in the sequencer."""
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


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
        cap = _capture(self.path)
        if cap.isOpened():
            size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if size[0] > 0 and size[1] > 0:
                check_dimensions(*size, f"video {self.path}")
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
        files = sequence_files(self.path)
        if not files:
            raise EngineError(f"folder {self.path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        numbers = sequence_numbers([p.name for p in files])
        order = sorted(range(len(files)), key=lambda i: numbers[i])
        self.files = {numbers[i]: files[i] for i in order}
        self.numbers = [numbers[i] for i in order]
        self.fps = None
        first = read_image(files[order[0]])
        self.linear = first.dtype.kind == "f"  # float files: scene-linear unless a colour space says otherwise
        self.size = (first.shape[1], first.shape[0])
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Differing frame sizes break every later stage, so refuse them up front (headers only)."""
        for number, path in self.files.items():
            size = image_size(path)
            if size != self.size:
                raise EngineError(
                    f"frame {number} ({path.name}) is {size[0]}x{size[1]} but the sequence is "
                    f"{self.size[0]}x{self.size[1]}: all frames of a shot must be one size"
                )

    # -- selection and reading

    def select(self, frames: str | None = None, every: int = 1) -> list[int]:
        """Frame numbers in `frames` ("FIRST-LAST" or "N", inclusive), every `every`-th; an error if outside."""
        if every < 1:
            raise EngineError(f"--every must be 1 or more, got {every}")
        numbers = self.numbers
        if frames:
            try:
                a, b = parse_range(frames)
            except ValueError as e:
                raise EngineError(str(e)) from None
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
        cap = _capture(self.path)
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


SIGNATURE_FRAMES = 3  # frames of a shot whose thumbnails sign it
SIGNATURE_SIZE = 32  # thumbnail side: blind to grading and re-encoding, not to another take's content
SAME_SHOT = 0.7  # least mean correlation of the thumbnails for two shots to count as one: a linear EXR copy
# with a clipped highlight scores about 0.87, another shot of the same size about 0.1


def _thumbnail(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(np.ascontiguousarray(to_srgb8(finite_pixels(image)[0])[..., :3]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (SIGNATURE_SIZE, SIGNATURE_SIZE), interpolation=cv2.INTER_AREA)


def shot_signature(source: FrameSource) -> dict:
    """A few frames of the shot (fixed positions inside it) as small grey thumbnails, stored with the
    alignments so a later stage can tell this shot from another of the same size and length."""
    count = len(source.numbers)
    picks = sorted({source.numbers[(2 * i + 1) * count // (2 * SIGNATURE_FRAMES)] for i in range(SIGNATURE_FRAMES)})
    thumbnails = [_thumbnail(image).ravel().tolist() for n in picks for _, image in source.frames([n])]
    return {"frames": picks, "size": SIGNATURE_SIZE, "thumbnails": thumbnails}


def same_shot(signature: dict, source: FrameSource) -> bool:
    """Whether `source` looks like the shot `signature` was taken from: its thumbnails of the same frames
    correlate (a regrade, a re-encode or a linear EXR copy do; another shot does not)."""
    scores, numbers = [], set(source.numbers)
    for number, recorded in zip(signature["frames"], signature["thumbnails"], strict=True):
        if number not in numbers:
            return False
        (_, image), = source.frames([number])
        a = _thumbnail(image).astype(np.float64).ravel()
        b = np.asarray(recorded, np.float64)
        if a.std() < 1 or b.std() < 1:  # a flat frame (black, a slate) has no pattern: compare its level
            scores.append(1.0 if abs(a.mean() - b.mean()) < 8 else 0.0)
        else:
            scores.append(float(np.corrcoef(a, b)[0, 1]))
    return bool(scores) and float(np.mean(scores)) >= SAME_SHOT


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
    """PNG bytes of a uint8 or uint16 array with 1, 3 or 4 channels (RGB order), for a PNG held in memory
    (OpenImageIO's Python binding writes files only)."""
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


# What each written format stores: the numpy types it takes, and its OpenImageIO settings.
WRITE_TYPES = {".exr": (np.float32,), ".png": (np.uint8, np.uint16), ".jpg": (np.uint8,), ".jpeg": (np.uint8,),
               ".tif": (np.uint8, np.uint16, np.float32), ".tiff": (np.uint8, np.uint16, np.float32),
               ".dpx": (np.uint8, np.uint16)}
WRITE_SETTINGS = {".exr": {"compression": "zip"}, ".png": {"png:compressionLevel": 3},
                  ".jpg": {"Compression": "jpeg:95"}, ".jpeg": {"Compression": "jpeg:95"},
                  ".tif": {"compression": "zip"}, ".tiff": {"compression": "zip"}}


def write_image(path: str | os.PathLike, image: np.ndarray, metadata: dict[str, str] | None = None,
                bits: int | None = None) -> None:
    """Atomically write an image by its file's extension (EXR float; PNG, TIFF, DPX 8/16-bit; JPEG 8-bit),
    with `metadata` as string attributes of its header. `bits` stores fewer bits than the array holds
    (10 for a 10-bit DPX from uint16)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_TYPES:
        raise EngineError(f"cannot write images of type {suffix}")
    image = np.asarray(image)
    if image.dtype not in WRITE_TYPES[suffix]:
        if suffix != ".exr":
            raise ValueError(f"{suffix} takes {', '.join(t.__name__ for t in WRITE_TYPES[suffix])}, got {image.dtype}")
        image = image.astype(np.float32)
    oiio = _oiio()
    image = np.ascontiguousarray(image if image.ndim == 3 else image[..., None])
    height, width, channels = image.shape
    spec = oiio.ImageSpec(width, height, channels, {np.uint8: "uint8", np.uint16: "uint16"}.get(image.dtype.type, "float"))
    spec.channelnames = {1: ("Y",), 2: ("Y", "A"), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}[channels]
    if channels in (2, 4):
        spec.alpha_channel = channels - 1
    spec.attribute("oiio:UnassociatedAlpha", 1)  # write the colour as given: straight stays straight
    spec.attribute("DateTime", "")  # no write time in EXR/TIFF headers: a rerun writes the same bytes
    if bits:
        spec.attribute("oiio:BitsPerSample", bits)
    for key, value in {**WRITE_SETTINGS.get(suffix, {}), **(metadata or {})}.items():
        spec.attribute(key, value if isinstance(value, int) else str(value))
    with atomic_path(path, functools.partial(_image_complete, suffix)) as tmp:
        output = oiio.ImageOutput.create(str(tmp))
        if output is None or not output.open(str(tmp), spec) or not output.write_image(image) or not output.close():
            raise write_failed(path, _oiio_error("failed"))


PNG_END = b"\0\0\0\0IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with
JPEG_END = b"\xff\xd9"


def _image_complete(suffix: str, path: Path) -> bool:
    """Whether an image file OpenImageIO wrote is whole: its writers of PNG, JPEG and DPX ignore a failed
    write (a full disk) and leave a file cut short. A PNG and a JPEG end with their end marker; a DPX
    is as long as its header says. TIFF and EXR writers report their failures."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if suffix == ".png" or suffix in (".jpg", ".jpeg"):
            end = PNG_END if suffix == ".png" else JPEG_END
            f.seek(max(size - len(end), 0))
            return f.read() == end
        if suffix == ".dpx":
            header = f.read(20)
            order = ">" if header[:4] == b"SDPX" else "<"
            return len(header) == 20 and size >= struct.unpack(order + "I", header[16:20])[0]
    return size > 0


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
