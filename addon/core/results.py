"""Convert's output folder as the result strips need it: its manifest (read with the engine's own check,
engine/base/frames.py), and the plan of the strips: which files each strip holds, in which alpha mode and
colour space, on which channels."""

import json
from dataclasses import dataclass
from pathlib import Path

from ..engine_client import ClientError, shared_module

frame_rules = shared_module("frames")  # the engine's frame-numbering rules and its manifest check
# The face layer's alpha as convert's manifest names it -> Blender's strip alpha mode.
ALPHA_MODES = {"straight": "STRAIGHT", "premultiplied": "PREMUL"}
MAX_CHANNEL = 128
SHOWN_MISSING = 5  # how many missing frames an error names


def read_manifest(output: Path, ocio_config: str) -> dict:
    """convert's manifest.json in `output`: its face layers' alpha, file patterns, settings and colour space
    (the space convert wrote the layers in, when it is a name in `ocio_config`, the config Blender runs
    with; "" for layers converted without one: Blender's defaults for PNG and EXR then hold)."""
    path = output / frame_rules.MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        raise ClientError(f"cannot read {path}: convert the shot again") from None
    try:
        frame_rules.check_manifest(manifest, path)
    except ValueError as e:
        raise ClientError(f"{e}: convert the shot again") from None
    if manifest.get("layers"):  # exr-multilayer: each file holds only the face's box, and its mattes
        raise ClientError(f"{output} holds multilayer EXRs, for compositing applications: Blender reads only "
                          f"their face's box, unplaced; convert with Format PNG 16-bit or OpenEXR for strips")
    if "matte" not in manifest["files"]:
        raise ClientError(f"cannot read {path}: convert the shot again")
    if manifest.get("alpha") not in ALPHA_MODES:
        raise ClientError(f"{path} names no known alpha ({manifest.get('alpha')!r}): convert the shot again")
    settings = manifest.get("settings")
    colorspace = manifest.get("colorspace", "") if manifest.get("ocio_config") == ocio_config else ""
    return {"alpha": manifest["alpha"], "files": {kind: manifest["files"][kind] for kind in ("face", "matte")},
            "settings": settings if isinstance(settings, dict) else {}, "colorspace": colorspace}


def converted_feather(manifest: dict) -> float:
    """The width of the soft edge the layers were converted with (convert's feather, in pixels); 0 unknown."""
    try:
        return max(float(manifest["settings"].get("feather") or 0.0), 0.0)
    except (TypeError, ValueError, AttributeError, KeyError):
        return 0.0


def result_file(output: Path, manifest: dict, kind: str, number: int) -> Path | None:
    """Frame `number`'s face layer or matte as the manifest names it, if it is there (inside `output`)."""
    try:
        path = output / frame_rules.frame_file(manifest["files"][kind], number)
    except ValueError as e:
        raise ClientError(f"{output}: the {kind} {e}: convert the shot again") from None
    return path if path.resolve().is_relative_to(output.resolve()) and path.is_file() else None


@dataclass(frozen=True)
class ResultPlan:
    """The face layer and matte strips of a shot: their files in the shot's frame order, and how Blender
    reads them."""

    faces: list[Path]
    mattes: list[Path]
    alpha_mode: str  # Blender's strip alpha mode of the face layer
    colorspace: str  # the layers' colour space; "" for Blender's defaults
    feather: float  # convert's feather, for the blend modifier's soft edge


def plan_results(output: Path, numbers: tuple[int, ...], ocio_config: str) -> ResultPlan:
    """The result strips of a shot whose frame `numbers` convert wrote into `output`; refused while any
    frame's face layer or matte is missing."""
    manifest = read_manifest(output, ocio_config)
    layers = {kind: [result_file(output, manifest, kind, n) for n in numbers] for kind in ("face", "matte")}
    missing = [n for n, face, matte in zip(numbers, layers["face"], layers["matte"], strict=True)
               if face is None or matte is None]
    if missing:
        shown = ", ".join(map(str, missing[:SHOWN_MISSING])) + (" ..." if len(missing) > SHOWN_MISSING else "")
        raise ClientError(f"{output} lacks {len(missing)} of the shot's frames ({shown}): convert them first")
    return ResultPlan(layers["face"], layers["matte"], ALPHA_MODES[manifest["alpha"]], manifest["colorspace"],
                      converted_feather(manifest))


def free_channel(occupied: list[tuple[int, int, int]], lowest: int, count: int, start: int, end: int) -> int:
    """The lowest channel >= `lowest` with `count` channels free over timeline frames start..end-1, given
    the (channel, first frame, end frame) of the strips already there."""
    for channel in range(lowest, MAX_CHANNEL - count + 2):
        if not any(channel <= c < channel + count and first < end and last > start for c, first, last in occupied):
            return channel
    raise ClientError(f"no {count} free channels above channel {lowest} for frames {start}-{end - 1}")
