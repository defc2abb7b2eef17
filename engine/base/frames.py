"""Frame numbers, frame ranges and convert's manifest of each frame's files: the rules the engine and the
Blender add-on both follow.

Standard library only, and no import of the rest of the engine: the add-on (which has no numpy) loads
this very file from the bundled engine, so the two sides cannot drift apart. Errors are ValueError with
a message meant for the user; each side turns them into its own error type.
"""

import re
from pathlib import Path

# The files that make up an image-sequence folder, and the videos a shot can be.
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".dpx", ".bmp"}
VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
_RANGE = re.compile(r"\s*(-?\d+)\s*(?:(?:-|\.\.)\s*(-?\d+)\s*)?")
MANIFEST_FILE = "manifest.json"  # convert's record of an output folder (engine/folders/output.py writes it)
_FILE_PATTERN = re.compile(r"[^%]*%0?\d{0,2}d[^%]*")  # a file name with one printf frame-number field


def sequence_files(folder: Path) -> list[Path]:
    """The image files of a sequence folder, in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def parse_range(text: str) -> tuple[int, int]:
    """"101-200" or "150" (inclusive; Blender's "101..200" too) as (first, last)."""
    m = _RANGE.fullmatch(text)
    if not m:
        raise ValueError(f"frame range {text!r} is not of the form FIRST-LAST")
    first, last = int(m.group(1)), int(m.group(2) or m.group(1))
    if first > last:
        raise ValueError(f"frame range {text.strip()}: start is after end")
    return first, last


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """"1-100,150-250" as [(1, 100), (150, 250)]; Flamenco's chunks ("26,27": two frames) too."""
    ranges = []
    for part in text.split(","):
        if not _RANGE.fullmatch(part):
            raise ValueError(f"frame range {text!r} is not of the form FIRST-LAST, FIRST..LAST or 1-50,80-90")
        ranges.append(parse_range(part))
    return ranges


def frame_runs(numbers) -> list[tuple[int, int]]:
    """Frame numbers as runs of consecutive frames: [65, 66, 67, 90] as [(65, 67), (90, 90)]."""
    runs: list[list[int]] = []
    for number in sorted(set(numbers)):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return [(first, last) for first, last in runs]


def format_ranges(numbers) -> str:
    """Frame numbers as the ranges parse_ranges reads: [65, 66, 67, 90] as "65-67,90"."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in frame_runs(numbers))


def frame_number(name: str) -> int | None:
    """The frame number a file's name carries: the last number in its stem, or None."""
    digits = re.findall(r"\d+", Path(name).stem)
    return int(digits[-1]) if digits else None


def sequence_numbers(names: list[str]) -> list[int]:
    """The frame numbers of an image sequence's files `names` (sorted): the last number in each name, or
    the position in name order (from 1) when some name has none or two share one."""
    numbers = [frame_number(name) for name in names]
    if None in numbers or len(set(numbers)) != len(numbers):
        return list(range(1, len(names) + 1))
    return numbers


def frame_file(pattern: str, number: int) -> str:
    """Frame `number`'s file by a printf `pattern` ("face/face_%06d.png"), as convert's manifest names them."""
    if not isinstance(pattern, str) or not _FILE_PATTERN.fullmatch(pattern):
        raise ValueError(f"pattern {pattern!r} is not a file name with one %d for the frame")
    return pattern % number


def check_manifest(manifest, path) -> dict:
    """Convert's manifest (its parsed JSON, read from `path`), checked as far as its readers (evaluate,
    the add-on's result strips) rely on it: a face layer pattern with one frame number, the source's size,
    frame numbers and path."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "face" not in manifest["files"]:
        raise ValueError(f"{path} is not a FaceReplace convert manifest (no face layer pattern)")
    try:
        frame_file(manifest["files"]["face"], 0)
    except ValueError as e:
        raise ValueError(f"{path}: the face layer {e}") from None
    size, numbers, source = manifest.get("source_size"), manifest.get("frame_numbers"), manifest.get("source", "")
    if not (size is None or (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size))):
        raise ValueError(f"{path}: source_size {size!r} is not a width and height")
    if not (numbers is None or (isinstance(numbers, list) and numbers and all(type(v) is int for v in numbers))):
        raise ValueError(f"{path}: frame_numbers is not a list of frame numbers")
    if not isinstance(source, str):
        raise ValueError(f"{path}: source {source!r} is not a path")
    return manifest
