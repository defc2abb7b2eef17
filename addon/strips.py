"""Shots and strips: a shot's own frame numbers <-> frames of the timeline, and the result strips (plate,
face layer, matte) that the add-on adds and, on a rerun, replaces.

The engine numbers a movie's frames from 1 and an image sequence's frames by the number in each file's
name; a strip shows them from its frame_start, minus whatever its handles trim. Every frame number a
user types (frame ranges, the reference frame) is a timeline frame; the engine only ever sees its own.
"""

import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import bpy

from . import blend, placement
from .core import results
from .core.results import frame_rules
from .engine_client import ClientError
from .paths import blend_absolute, blend_relative

TAG = "facereplace"  # custom property on the strips the add-on adds: "plate", "face" or "matte"
TAG_SHOT = "facereplace_target"  # ... and the key of the shot they belong to (Shot.key; saved in .blend files)
STRIP_ID = "facereplace_id"  # custom property: a strip's id, which a rename keeps
FPS_TOLERANCE = 0.01


def keeps_relative(settings) -> bool:
    """Whether result strips get "//"-relative folders: where the scene keeps its convert output relative
    (a saved .blend, a "//" work folder)."""
    return bool(bpy.data.filepath) and settings.convert.output.startswith("//")


def edited_scene(context):
    """The scene the sequencer shows: Blender 5.0 gives the sequencer its own (the workspace's sequencer
    scene); before that, or while none is set, it is the window's scene."""
    return getattr(context, "sequencer_scene", None) or context.scene


def strip_collection(editor):
    """The top-level strips (Blender 4.4 renamed `sequences` to `strips`)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def strip_id(strip) -> str:
    """The strip's stable id, given to it the first time a shot names it."""
    if not strip.get(STRIP_ID):
        strip[STRIP_ID] = uuid.uuid4().hex[:12]
    return strip[STRIP_ID]


def find_strip(editor, identifier: str, name: str):
    """The strip with `identifier` (a renamed strip is still found), else the one called `name`."""
    if editor is None:
        return None
    strips = strip_collection(editor)
    if identifier:
        found = next((s for s in strips if s.get(STRIP_ID) == identifier), None)
        if found is not None:
            return found
    return strips.get(name) if name else None


def fps_mismatch(strip, scene) -> str:
    """A warning when a movie strip's frame rate is not the scene's (its frames then drift against the
    timeline), else ""."""
    fps = getattr(strip, "fps", 0.0)
    scene_fps = scene.render.fps / scene.render.fps_base
    if fps and abs(fps - scene_fps) > FPS_TOLERANCE:
        return f"{strip.name} is {fps:g} fps but the scene {scene_fps:g} fps: set the scene's frame rate to match"
    return ""


@dataclass(frozen=True)
class Shot:
    """A shot as the engine reads it (`input`, frame `numbers`) and where the timeline shows it:
    numbers[i] is on timeline frame start + i."""

    name: str  # the strip's name, or the folder's
    input: Path  # a movie file or an image folder
    numbers: tuple[int, ...]
    start: int
    strip: str | None  # None for a folder that is not in the sequencer
    channel: int = 1
    key: str = ""  # what its result strips are tagged with: the strip's id, or the folder's name
    colorspace: str = ""  # the strip's colour space in Blender's OCIO config; "" for a folder: the engine's default

    @property
    def end(self) -> int:
        """The timeline frame after the last one."""
        return self.start + len(self.numbers)

    @property
    def frames(self) -> str:
        """The engine's --frames for this shot."""
        return f"{self.numbers[0]}-{self.numbers[-1]}"

    def number_at(self, frame: int) -> int:
        """The shot's own frame number shown on timeline `frame`."""
        if not self.start <= frame < self.end:
            raise ClientError(f"frame {frame} is outside {self.name} (frames {self.start}-{self.end - 1})")
        return self.numbers[frame - self.start]

    def frame_of(self, number: int) -> int | None:
        """The timeline frame that shows the shot's frame `number`, or None if it shows none."""
        return self.start + self.numbers.index(number) if number in self.numbers else None

    def within(self, first: int, last: int) -> "Shot":
        """The part of the shot on timeline frames first..last (inclusive)."""
        lo, hi = max(first, self.start), min(last, self.end - 1)
        if lo > hi:
            raise ClientError(f"frames {first}-{last} are outside {self.name} (frames {self.start}-{self.end - 1})")
        return replace(self, numbers=self.numbers[lo - self.start : hi - self.start + 1], start=lo)


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """"101-200", "150" or "1-100,150-250" (timeline frames, inclusive) as [(first, last), ...]; Blender's
    "1..100" and Flamenco's chunks ("26,27": two frames) too."""
    try:
        return frame_rules.parse_ranges(text)
    except ValueError as e:
        raise ClientError(str(e)) from None


def sequence_numbers(folder: Path) -> dict[str, int]:
    """{file name: frame number} as the engine numbers an image folder (engine/base/frames.py)."""
    try:
        names = [p.name for p in frame_rules.sequence_files(folder)]
    except OSError as e:
        raise ClientError(f"cannot read folder {folder}: {e.strerror or e}") from None
    if not names:
        raise ClientError(f"folder {folder} holds no images ({', '.join(sorted(frame_rules.IMAGE_EXTENSIONS))})")
    return dict(zip(names, frame_rules.sequence_numbers(names), strict=True))


def absolute(path: str) -> Path:
    """A path as Blender stores it ("//" relative to the .blend) made absolute and normal, so the same
    file always gives the same engine arguments (and so the same faceset folder) wherever the .blend is."""
    return Path(blend_absolute(path, os.path.dirname(bpy.data.filepath)))


def shot_from_strip(strip) -> Shot:
    """The visible (trimmed) part of a movie or image strip."""
    if len(getattr(strip, "retiming_keys", ())):
        raise ClientError(f"strip {strip.name} is retimed: FaceReplace needs one frame of the shot per timeline "
                          f"frame (clear its retiming, or render it to a new strip first)")
    first = strip.frame_final_start - int(strip.frame_start)  # index of the first visible frame
    count = strip.frame_final_end - strip.frame_final_start
    if strip.type == "MOVIE":
        path = absolute(strip.filepath)
        first, last = max(first, 0), min(first + count, strip.frame_duration)
        numbers = tuple(range(first + 1, last + 1))
    elif strip.type == "IMAGE":
        path = absolute(strip.directory)
        by_name = sequence_numbers(path)
        names = [e.filename for e in strip.elements][max(first, 0) : first + count]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ClientError(f"strip {strip.name}: {missing[0]} is missing from {path}")
        numbers = tuple(by_name[n] for n in names)
    else:
        raise ClientError(f"strip {strip.name} is a {strip.type.lower()} strip; pick a movie or image strip")
    if not path.exists():
        raise ClientError(f"strip {strip.name}: {path} does not exist")
    if not numbers:
        raise ClientError(f"strip {strip.name} shows none of its frames (check its trims)")
    # The first shown frame of the content (handles dragged past the content only hold a frame).
    start = int(strip.frame_start) + max(first, 0)
    return Shot(strip.name, path, numbers, start, strip.name, strip.channel, strip.get(STRIP_ID) or strip.name,
                strip.colorspace_settings.name)


def ocio_config() -> str:
    """The OpenColorIO config Blender runs with: $OCIO when set, else the one it ships."""
    return os.environ.get("OCIO") or os.path.join(bpy.utils.resource_path("LOCAL"), "datafiles", "colormanagement",
                                                   "config.ocio")


def colour_args(shot: Shot) -> list:
    """The engine's colour options for `shot`: its strip's colour space, named in Blender's config, so
    the engine reads the plate as Blender shows it."""
    return ["--colorspace", shot.colorspace, "--ocio-config", ocio_config()] if shot.colorspace else []


def shot_from_folder(folder: str) -> Shot:
    """An image folder outside the sequencer: its frames sit on the timeline from its first number on."""
    path = absolute(folder)
    if not path.is_dir():
        raise ClientError(f"folder not found: {path}")
    numbers = tuple(sorted(sequence_numbers(path).values()))
    return Shot(path.name, path, numbers, numbers[0], None, key=path.name)


def shot_of(scene, shot_settings, side: str) -> Shot:
    """The shot a side of the panel names (strip or folder), cut to its custom range if one is set."""
    if shot_settings.source == "STRIP":
        strip = find_strip(scene.sequence_editor, shot_settings.strip_id, shot_settings.strip)
        if strip is None and shot_settings.strip_id:  # it was picked, so it was deleted (its name may be an old one)
            raise ClientError(f"shot {side}: its strip was deleted from the sequencer; pick {side}'s shot again")
        if strip is None:
            raise ClientError(f"shot {side}: no strip named {shot_settings.strip!r} in the sequencer; pick one")
        shot = shot_from_strip(strip)
    else:
        if not shot_settings.folder:
            raise ClientError(f"shot {side}: pick a folder of images")
        shot = shot_from_folder(shot_settings.folder)
    if shot_settings.use_custom_range:
        shot = shot.within(shot_settings.frame_first, shot_settings.frame_last)
    return shot


# ---------------------------------------------------------------- result strips


def result_strips(scene, shot_key: str) -> dict[str, object]:
    """{"face": strip, "matte": strip, "plate": strip} that the add-on added for the shot keyed `shot_key`."""
    editor = scene.sequence_editor
    if editor is None:
        return {}
    return {s[TAG]: s for s in strip_collection(editor) if s.get(TAG) and s.get(TAG_SHOT) == shot_key}


def orphan_keys(scene) -> set[str]:
    """The shot keys of result strips whose plate is gone from the sequencer (a deleted B): a later Add
    Result Strips over the plate picked again replaces them."""
    editor = scene.sequence_editor
    if editor is None:
        return set()
    strips = list(strip_collection(editor))
    living = {s.get(STRIP_ID) for s in strips} | {s.get(TAG_SHOT) for s in strips if s.get(TAG) == "plate"}
    return {s.get(TAG_SHOT) for s in strips if s.get(TAG) in {"face", "matte"}} - living


def remove_result_strips(scene, shot_key: str) -> None:
    strips = strip_collection(scene.sequence_editor) if scene.sequence_editor else None
    for strip in result_strips(scene, shot_key).values():
        strips.remove(strip)


def layer_out_of_step(scene, shot: Shot) -> str:
    """Why the face layer or matte added over a strip shot no longer sits over its frames ("" while they
    do, or while there are none): its plate was moved, slipped or trimmed after they were added."""
    if shot.strip is None:
        return ""  # a folder's plate is one of the result strips: they move together
    plate = placement.shown(shot.start, shot.numbers, shot.start, shot.end)
    layers = result_strips(scene, shot.key or shot.name)
    for kind in ("face", "matte"):
        if (layer := layers.get(kind)) is None:
            continue
        numbers = frame_rules.sequence_numbers([e.filename for e in layer.elements])
        shown = placement.shown(int(layer.frame_start), numbers, layer.frame_final_start, layer.frame_final_end)
        if reason := placement.out_of_step(plate, shown):
            return f"{layer.name} is out of step with {shot.name}: {reason}"
    return ""


def _free_channel(strips, lowest: int, count: int, start: int, end: int) -> int:
    return results.free_channel([(s.channel, s.frame_final_start, s.frame_final_end) for s in strips], lowest, count, start, end)


def _image_strip(strips, name, folder: Path, files: list[str], channel, start, tag, shot_key, fit="ORIGINAL",
                 relative=False):
    strip = strips.new_image(name=name, filepath=str(folder / files[0]), channel=channel, frame_start=start,
                             fit_method=fit)
    for file in files[1:]:
        strip.elements.append(file)
    if relative:  # stored like the scene's own paths, so the project folder can move
        strip.directory = blend_relative(str(folder), os.path.dirname(bpy.data.filepath)) + "/"
    strip[TAG] = tag
    strip[TAG_SHOT] = shot_key
    return strip


def _match_placement(strip, plate) -> None:
    """Put a layer exactly over the plate: same transform, crop and flips."""
    for name in ("offset_x", "offset_y", "scale_x", "scale_y", "rotation", "origin", "filter"):
        setattr(strip.transform, name, getattr(plate.transform, name))
    for name in ("min_x", "max_x", "min_y", "max_y"):
        setattr(strip.crop, name, getattr(plate.crop, name))
    strip.use_flip_x, strip.use_flip_y = plate.use_flip_x, plate.use_flip_y


def read_manifest(output: Path) -> dict:
    """convert's manifest in `output`, its colour space named in the OCIO config Blender runs with."""
    return results.read_manifest(output, ocio_config())


def add_result_strips(scene, shot: Shot, output: Path, relative: bool = False) -> dict[str, object]:
    """Add the face layer (Alpha Over, with the FaceReplace Blend modifier) and the muted matte on the
    channels above B's shot `shot`, frame-aligned with it, replacing the ones an earlier run added, and any
    left over a deleted plate (the blend values tuned on the earlier face layer carry over). A folder shot gets its plate added below them.
    `relative` stores their folders "//"-relative to the .blend."""
    plan = results.plan_results(output, shot.numbers, ocio_config())
    key = shot.key or shot.name
    replaced = [key, *sorted(orphan_keys(scene) - {key})]  # also those left over a deleted plate
    earlier = next((face for k in replaced if (face := result_strips(scene, k).get("face")) is not None), None)
    tuned = blend.values(earlier) if earlier is not None else None
    for k in replaced:
        remove_result_strips(scene, k)
    strips = strip_collection(scene.sequence_editor_create())
    added = {}
    if shot.strip is None:
        channel = _free_channel(strips, 1, 3, shot.start, shot.end)
        files = {n: name for name, n in sequence_numbers(shot.input).items()}
        plate = _image_strip(strips, f"{shot.name} plate", shot.input, [files[n] for n in shot.numbers],
                             channel, shot.start, "plate", key, fit="FIT", relative=relative)
        added["plate"] = plate
    else:
        plate = find_strip(scene.sequence_editor, shot.key, shot.strip)
    channel = _free_channel(strips, plate.channel + 1, 2, shot.start, shot.end)
    face = _image_strip(strips, f"{shot.name} face", plan.faces[0].parent, [p.name for p in plan.faces],
                        channel, shot.start, "face", key, relative=relative)
    face.blend_type = "ALPHA_OVER"
    face.alpha_mode = plan.alpha_mode
    if plan.colorspace:  # the space the engine wrote the layers in; a matte is data, never colour-converted
        face.colorspace_settings.name = plan.colorspace
    blend.add_blend_modifier(face, scene, tuned, plan.feather)
    matte = _image_strip(strips, f"{shot.name} matte", plan.mattes[0].parent, [p.name for p in plan.mattes],
                         channel + 1, shot.start, "matte", key, relative=relative)
    matte.mute = True
    if plan.colorspace:
        matte.colorspace_settings.name = "Non-Color"
    for layer in (face, matte):
        _match_placement(layer, plate)
    added.update(face=face, matte=matte)
    return added
