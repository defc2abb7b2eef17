"""The face swap's state, saved in the .blend as scene properties: the two shots, each stage's settings and
its last results, so that reopening a file brings the panel back as it was left.

Paths are stored relative to the .blend where they can be ("//facereplace/..."), so a project folder
can move. What is only true while an engine runs (progress, it/s) is not here: see jobs.py.
"""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import contract
from .engine_client import ClientError
from .strips import find_strip, shot_of, strip_collection, strip_id

# The number Auto is stored under in a .blend, apart from the presets' (numbered by their place).
AUTO_NUMBER = 1000
# Blender 4.5 asks path properties to declare that they take "//" (relative to the .blend) paths.
RELATIVE = {"PATH_SUPPORTS_BLEND_RELATIVE"} if bpy.app.version >= (4, 5, 0) else set()


def _get_strip(shot) -> str:
    """The strip's current name: found by its id, so a rename shows (and keeps) the same strip. A .blend
    saved before strips had ids holds the name alone (under "strip")."""
    name = shot.get("strip_name", shot.get("strip", ""))
    strip = find_strip(shot.id_data.sequence_editor, shot.strip_id, name)
    return strip.name if strip is not None else name


def _set_strip(shot, name: str) -> None:
    shot["strip_name"] = name
    editor = shot.id_data.sequence_editor
    strip = strip_collection(editor).get(name) if editor is not None and name else None
    shot.strip_id = strip_id(strip) if strip is not None else ""


PROPERTIES = {"INT": IntProperty, "FLOAT": FloatProperty, "BOOL": BoolProperty}


def _property(verb: str, option_name: str, **overrides):
    """The Blender property of engine option `--option_name` of `verb`, as the engine's schema describes
    it (contract.property_spec), with the add-on's `overrides`."""
    kind, spec = contract.property_spec(verb, option_name, **overrides)
    return PROPERTIES[kind](**spec)


class FaceReplaceShot(bpy.types.PropertyGroup):
    source: EnumProperty(
        name="From", description="Where the shot is",
        items=[("STRIP", "Strip", "A movie or image strip of this scene's sequencer"),
               ("FOLDER", "Folder", "A folder holding an image sequence")],
        default="STRIP",
    )
    strip: StringProperty(name="Strip", description="The movie or image strip that holds the shot",
                          get=_get_strip, set=_set_strip)
    strip_id: StringProperty(name="Strip Id", description="The id stored on the strip (renames keep it)")
    folder: StringProperty(name="Folder", subtype="DIR_PATH", options=RELATIVE, description="A folder holding an image sequence")
    use_custom_range: BoolProperty(
        name="Custom Range", description="Use only part of the shot; off, the whole strip as trimmed")
    frame_first: IntProperty(name="First", default=1, description="First frame to use (timeline frame)")
    frame_last: IntProperty(name="Last", default=250, description="Last frame to use (timeline frame)")
    use_reference: BoolProperty(
        name="Pick Person",
        description="When the shot shows several people, keep the one who is the chosen face in the chosen frame",
    )
    reference_frame: IntProperty(name="Frame", default=1, description="Timeline frame that shows the person")
    reference_face: IntProperty(
        name="Face", min=0, description="Which face in that frame: 0 is the largest, 1 the next largest, ...")
    # The last extract's results.
    faceset: StringProperty(name="Faceset", subtype="DIR_PATH", options=RELATIVE, description="The faceset the last extract wrote")
    frames: IntProperty(name="Frames")
    frames_with_faces: IntProperty(name="Frames With Faces")
    frames_without_faces: StringProperty(name="Frames Without Faces", description="Shot frame numbers")
    signature: StringProperty(
        name="Shot Signature",
        description="What the faceset was extracted from: the shot, its frame numbers, face size, reference face")


class FaceReplaceTrain(bpy.types.PropertyGroup):
    preset: EnumProperty(
        name="Preset",
        items=contract.items("train", "preset") + [("AUTO", "Auto", "The engine's own choice for a new model: " + ", ".join(
            f"{preset} on {device}" for device, preset in contract.SCHEMA["default_presets"].items()), AUTO_NUMBER)],
        default="AUTO",
    )
    size: EnumProperty(
        name="Resolution",
        items=[("PRESET", "Preset's", "The preset's own resolution")]
        + [(str(size), f"{size} px", "") for size in contract.SCHEMA["sizes"]],
        default="PRESET",
        description="Model resolution: a new model only (a resumed model keeps its own)",
    )
    architecture: EnumProperty(
        name="Architecture",
        items=[("PRESET", "Preset's", "The preset's own architecture", AUTO_NUMBER)] + contract.items("train", "architecture"),
        default="PRESET",
        description="How the model draws the faces: a new model only (a resumed one keeps its own)",
    )
    iterations: _property("train", "iterations", default=20000,
                          description="Stop after this many iterations in all (a resumed run counts on)")
    # The late phase and the adversarial phase (engine train's --no-warp-after, --lr-dropout, --gan-weight).
    late_phase: _property("train", "no-warp-after", max=0.99, subtype="FACTOR",
                          description="From this share of the iterations, train without the random warp and with "
                                      "learning-rate dropout, which sharpens a converged model (0: off; 0.8 is the "
                                      "measured best on a CPU)")
    lr_dropout: _property("train", "lr-dropout", min=0.01, subtype="FACTOR")  # Blender has no open bound
    gan_weight: _property("train", "gan-weight", soft_max=1.0)
    time_budget: _property("train", "time-budget", default=0.0, subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE",
                           description="Stop after this long (0: no limit); the model is saved first")
    enhancer_iterations: _property("enhance", "iterations", name="Enhancer Iterations", default=0, min=0,
                                   description="After the face model, train its enhancer (A's face at 2-4 times the "
                                               "model's size, learnt from A's faces; convert then uses it) to this "
                                               "many iterations (engine enhance); 0: none")
    base_model: StringProperty(
        name="Base Model", subtype="DIR_PATH", options=RELATIVE,
        description="Start a new model from this model's weights (engine train --init-from): a base made with "
                    "engine train --pretrain on other people's faces, or any model of the same preset and "
                    "resolution. A pair then learns in a fraction of the iterations (docs/train.md)")
    # The model and how far it got.
    model: StringProperty(name="Model", subtype="DIR_PATH", options=RELATIVE, description="The model folder")
    iteration: IntProperty(name="Iterations Done")
    loss_a: FloatProperty(name="Loss A", precision=4)
    loss_b: FloatProperty(name="Loss B", precision=4)
    preview: StringProperty(name="Preview", subtype="FILE_PATH", options=RELATIVE, description="The latest preview grid")


# The options the engine marks for the panel (balance_expressions, ...): one property each, named as the option.
FaceReplaceTrain.__annotations__.update(
    {prop: _property("train", name) for prop, name in contract.panel_options("train").items()})


class FaceReplaceConvert(bpy.types.PropertyGroup):
    mask: EnumProperty(name="Mask", items=contract.items("convert", "mask"), default=contract.default("convert", "mask"))
    erode: _property("convert", "erode", soft_min=-32, soft_max=32, subtype="PIXEL")
    use_auto_feather: BoolProperty(name="Auto Feather", default=True,
                                   description="A soft edge of 6% of the face's width")
    # whole pixels in the panel, as .blend files store it; the engine's default is Auto Feather's
    feather: _property("convert", "feather", kind="INT", default=8, soft_max=64, subtype="PIXEL",
                       description="Width of the mask's soft edge in pixels")
    detail: _property("convert", "detail", soft_max=2.0)
    edge_match: _property("convert", "edge-match")
    plate_mouth: _property("convert", "plate-mouth")
    color: EnumProperty(name="Color Match", items=contract.items("convert", "color"),
                        default=contract.default("convert", "color"))
    format: EnumProperty(name="Format", items=contract.items("convert", "format"),
                         default=contract.default("convert", "format"))
    output: StringProperty(name="Output", subtype="DIR_PATH", options=RELATIVE, description="The folder of face layers and mattes")
    frames: IntProperty(name="Frames Converted")
    frames_with_faces: IntProperty(name="Frames With Faces")


def _target_frames(settings) -> str:
    """B's timeline frames as "first-last" (a farm job's default range); empty while B is unset."""
    try:
        shot = shot_of(settings.id_data, settings.b, "B")
    except ClientError:
        return ""
    return f"{shot.start}-{shot.end - 1}"


class FaceReplaceSettings(bpy.types.PropertyGroup):
    a: PointerProperty(type=FaceReplaceShot, name="A", description="A, the face to put in: a shot of that person")
    b: PointerProperty(type=FaceReplaceShot, name="B", description="B, the shot's face: the shot whose face is replaced")
    face_size: IntProperty(name="Face Size", default=256, min=64, max=1024, subtype="PIXEL",
                           description="Size of the aligned faces extract writes (at least the model's resolution)")
    target_frames: StringProperty(name="B's Frames", get=_target_frames,
                                  description="The timeline frames of B's shot, as a farm job converts them")
    train: PointerProperty(type=FaceReplaceTrain)
    convert: PointerProperty(type=FaceReplaceConvert)


CLASSES = (FaceReplaceShot, FaceReplaceTrain, FaceReplaceConvert, FaceReplaceSettings)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    bpy.types.Scene.facereplace = PointerProperty(type=FaceReplaceSettings)


def unregister() -> None:
    del bpy.types.Scene.facereplace
    _unregister_classes()
