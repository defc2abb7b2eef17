"""The Masks sub-panel: occlusion mattes (engine.stages.occlusion) learned from a few frames that the artist labels
with Blender's own Mask tools.

Label Current Frame makes one Mask datablock per labelled frame of shot A or B: a "Face" layer already
holding the face's outline (from the faceset's landmarks, the extended mask's reach) and an empty
"Occluders" layer that subtracts, where the artist draws the hand or the microphone over the footage in
the Movie Clip or Image editor's Mask mode. Train Masks rasterises every label Mask with Blender's
compositor (its Mask node: feather and layer blending as Blender draws them), headless too, into
frame-sized images named by the shot's frame numbers (white = face, black = occluder or background), and
runs `engine mask train`; Apply Masks runs `engine mask apply`, which writes the faceset's masks/learned/.
"""

import json
from pathlib import Path

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import contract, jobs
from .core import engine_args, panel_state
from .core.done import MaskApplyDone, MaskTrainDone, read
from .engine_client import ClientError, engine_command
from .jobs import Step
from .operators import (
    SIDES,
    TRAIN_STOP_GRACE_S,
    EngineOperator,
    _faceset,
    resolved,
    run_env,
    stored,
    work_folder,
)
from .panels import FaceReplacePanel, _busy
from .preferences import engine_python, prefs
from .properties import RELATIVE
from .strips import absolute, edited_scene, shot_of

FRAME_KEY = "facereplace_label_frame"  # a label Mask's custom properties: the shot's frame number it labels,
SIDE_KEY = "facereplace_label_side"  # ... and the shot, A or B
FACE_LAYER, OCCLUDER_LAYER = "Face", "Occluders"
# How far above the brows the face outline reaches, as a share of the brow-to-chin height: where the
# extended mask's fading top (engine.faces.masks.FOREHEAD 0.3, FOREHEAD_FADE 0.5) is half on, so a label
# starts as the region convert replaces.
FOREHEAD = 0.225
LABEL_NAME = "mask_{:06d}.png"  # what `engine mask train --labels` reads: the shot's frame number in the name


class FaceReplaceMasks(bpy.types.PropertyGroup):
    side: EnumProperty(name="Shot", items=SIDES, default="B", description="The shot whose frames are labeled")
    iterations: IntProperty(name="Iterations", default=600, min=1, soft_max=5000,
                            description="Train the mask model up to this many iterations (counted over resumes)")
    model: StringProperty(name="Mask Model", subtype="DIR_PATH", options=RELATIVE, description="The mask model folder")
    iteration: IntProperty(name="Iterations Done")
    labelled_iou: FloatProperty(name="IoU on the Labels", precision=3)
    applied: IntProperty(name="Faces Masked")


def label_masks(side: str) -> list:
    """The label Masks of shot `side`, in frame order."""
    return sorted((m for m in bpy.data.masks if m.get(SIDE_KEY) == side and FRAME_KEY in m), key=lambda m: m[FRAME_KEY])


def labelled_frames(scene, side: str) -> list[str]:
    """The labelled frames of shot `side` as the artist labelled them: timeline frames where the shot still
    shows them, else ("shot frame 22") the shot's own number."""
    try:
        shot = shot_of(scene, getattr(scene.facereplace, side.lower()), side)
    except ClientError:
        shot = None
    numbers = [m[FRAME_KEY] for m in label_masks(side)]
    frames = [shot.frame_of(n) if shot is not None else None for n in numbers]
    return [str(frame) if frame is not None else f"shot frame {n}" for n, frame in zip(numbers, frames, strict=True)]


def _alignments(faceset: Path) -> dict:
    try:
        return json.loads((faceset / contract.folder("faceset")["alignments"]).read_text())
    except (OSError, ValueError) as e:
        raise ClientError(f"cannot read the faceset's alignments ({faceset}): {e}") from None


def face_outline(landmarks: list) -> list[tuple[float, float]]:
    """The face's outline in frame pixels: the convex hull of the 68 points with the brows raised to the
    forehead, as the extended mask draws it (Andrew's monotone chain; no numpy needed)."""
    chin = landmarks[8]
    brow_x, brow_y = sum(p[0] for p in landmarks[17:27]) / 10, sum(p[1] for p in landmarks[17:27]) / 10
    up = (FOREHEAD * (brow_x - chin[0]), FOREHEAD * (brow_y - chin[1]))
    points = sorted({(p[0] + up[0], p[1] + up[1]) if 17 <= i < 27 else (p[0], p[1]) for i, p in enumerate(landmarks)})

    def half(ordered):
        chain = []
        for p in ordered:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return half(points) + half(points[::-1])


def to_mask_space(point, width: int, height: int) -> tuple[float, float]:
    """Frame pixels (y down) -> a Mask's coordinates: 0..1 across the frame's longer side, centred, y up
    (measured: a 320x240 frame's mask square (0.25..0.75)^2 rasterises to pixels 80..240 x 40..200)."""
    side = max(width, height)
    return (0.5 + (point[0] - width / 2) / side, 0.5 - (point[1] - height / 2) / side)


def _add_spline(layer, points) -> None:
    spline = layer.splines.new()
    spline.use_cyclic = True
    spline.points.add(len(points) - 1)
    for point, co in zip(spline.points, points, strict=True):
        point.co = co
        point.handle_left_type = point.handle_right_type = "VECTOR"


def make_label(scene, side: str) -> bpy.types.Mask:
    """The label Mask of the current frame of shot `side` (made, with the face outlines, if new)."""
    settings = scene.facereplace
    faceset = _faceset(scene, side)
    number = shot_of(scene, getattr(settings, side.lower()), side).number_at(scene.frame_current)
    alignments = _alignments(faceset)
    width, height = alignments["source_size"]
    faces = next((f["faces"] for f in alignments["frames"] if f["number"] == number), [])
    if not faces:
        raise ClientError(f"frame {scene.frame_current} (shot frame {number}) has no face in {side}'s faceset: label another")
    name = f"FaceReplace {side} {number:06d}"
    mask = bpy.data.masks.get(name)
    if mask is None:
        mask = bpy.data.masks.new(name)
        face_layer = mask.layers.new(name=FACE_LAYER)
        for face in faces:
            _add_spline(face_layer, [to_mask_space(p, width, height) for p in face_outline(face["landmarks"])])
        mask.layers.new(name=OCCLUDER_LAYER).blend = "MERGE_SUBTRACT"
        mask.layers.active = mask.layers[OCCLUDER_LAYER]
        mask.use_fake_user = True  # a label is kept in the .blend even while no editor shows it
    mask[FRAME_KEY], mask[SIDE_KEY] = number, side
    return mask


def export_labels(scene, side: str, folder: Path) -> int:
    """Rasterise every label Mask of shot `side` into `folder` (its old labels removed first) at the shot's
    size, with the compositor in a scene of its own, and return how many were written."""
    masks = label_masks(side)
    if not masks:
        raise ClientError(f"no frame of {side} is labeled yet: Label Current Frame on a few frames, draw the occluders")
    width, height = _alignments(_faceset(scene, side))["source_size"]
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("mask_*.png"):
        old.unlink()
    render_scene = bpy.data.scenes.new("FaceReplace Label Render")
    tree = bpy.data.node_groups.new("FaceReplace Label Render", "CompositorNodeTree")
    try:
        render = render_scene.render
        render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
        render.use_sequencer = False
        render.image_settings.file_format = "PNG"
        render.image_settings.color_mode = "BW"
        render_scene.view_settings.view_transform = "Standard"  # white stays 1.0, not a tone-mapped grey
        render_scene.compositing_node_group = tree
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        node = tree.nodes.new("CompositorNodeMask")
        tree.links.new(node.outputs[0], tree.nodes.new("NodeGroupOutput").inputs[0])
        for mask in masks:
            node.mask = mask
            render.filepath = str(folder / LABEL_NAME.format(mask[FRAME_KEY]))
            bpy.ops.render.render(write_still=True, scene=render_scene.name)
    finally:
        bpy.data.scenes.remove(render_scene)
        bpy.data.node_groups.remove(tree)
    return len(masks)


def _model_folder(scene, side: str) -> Path:
    masks = scene.facereplace_masks
    return absolute(masks.model) if masks.model else work_folder(scene) / f"mask_model_{side.lower()}"


def mask_train_step(scene) -> Step:
    masks = scene.facereplace_masks
    side = masks.side
    faceset = _faceset(scene, side)
    work = work_folder(scene)
    labels = work / f"mask_labels_{side.lower()}"
    count = export_labels(scene, side, labels)
    model = _model_folder(scene, side)
    args = engine_args.mask_train_args(faceset, labels, model, masks.iterations)
    argv = engine_command(engine_python(), "mask", args, prefs().device)

    def finish(scene, summary: dict) -> str:
        done = read(MaskTrainDone, summary)
        result = scene.facereplace_masks
        result.model = stored(model)
        result.iteration, result.labelled_iou = done.iterations, done.labelled_iou
        return (f"Train Masks: {count} labeled frames, {result.iteration} iterations, "
                f"IoU on the labels {result.labelled_iou:.3f}")

    return Step("Train Masks", argv, finish, stop_file=engine_args.stop_file(model), log=work / "logs" / "mask_train.log",
                grace_s=TRAIN_STOP_GRACE_S, env=run_env())


def mask_apply_step(scene) -> Step:
    masks = scene.facereplace_masks
    side = masks.side
    faceset = _faceset(scene, side)
    model = resolved(masks.model, "train the masks first")
    argv = engine_command(engine_python(), "mask", engine_args.mask_apply_args(faceset, model), prefs().device)

    def finish(scene, summary: dict) -> str:
        done = read(MaskApplyDone, summary)
        scene.facereplace_masks.applied = done.faces
        return (f"Apply Masks: {done.faces} faces of {side} masked ({done.written} written); "
                f"Convert's Mask Learned uses them")

    return Step("Apply Masks", argv, finish, log=work_folder(scene) / "logs" / "mask_apply.log", env=run_env())


class FACEREPLACE_OT_mask_label(bpy.types.Operator):
    """Make (or open) the label Mask of the current frame: the face outline is drawn; draw the occluders
    in its Occluders layer"""

    bl_idname = "facereplace.mask_label"
    bl_label = "Label Current Frame"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        scene = edited_scene(context)
        try:
            mask = make_label(scene, scene.facereplace_masks.side)
        except ClientError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        for area in context.screen.areas if context.screen else []:  # show it where masks are drawn
            if area.type in {"CLIP_EDITOR", "IMAGE_EDITOR"}:
                space = area.spaces.active
                space.mode = "MASK"
                space.mask = mask
        self.report({"INFO"}, f"{mask.name}: draw the occluders in its {OCCLUDER_LAYER} layer (Mask mode of the "
                              f"Movie Clip or Image editor)")
        return {"FINISHED"}


class FACEREPLACE_OT_mask_train(EngineOperator, bpy.types.Operator):
    """Rasterize the labeled frames and train the mask model on them"""

    bl_idname = "facereplace.mask_train"
    bl_label = "Train Masks"
    stage = "mask_train"

    def steps(self, scene):
        return [mask_train_step(scene)]


class FACEREPLACE_OT_mask_apply(EngineOperator, bpy.types.Operator):
    """Write the learned occlusion matte of every face of the shot's faceset"""

    bl_idname = "facereplace.mask_apply"
    bl_label = "Apply Masks"
    stage = "mask_apply"

    def steps(self, scene):
        return [mask_apply_step(scene)]


class SEQUENCER_PT_facereplace_masks(FaceReplacePanel, bpy.types.Panel):
    bl_label = "Masks"
    bl_parent_id = "SEQUENCER_PT_facereplace"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        masks = edited_scene(context).facereplace_masks
        layout.row().prop(masks, "side", expand=True)
        labelled = labelled_frames(edited_scene(context), masks.side)
        layout.operator("facereplace.mask_label", icon="MOD_MASK")
        layout.label(text=panel_state.labelled_line(labelled))
        layout.prop(masks, "iterations")
        row = layout.row(align=True)
        if _busy("mask_train"):
            row.operator("facereplace.cancel", text="Stop and Save", icon="PAUSE")
        else:
            row.operator("facereplace.mask_train", icon="PLAY")
        row.operator("facereplace.mask_apply", icon="CHECKMARK")
        layout.prop(masks, "model")
        job = jobs.active()
        live = job.live if _busy("mask_train") or _busy("mask_apply") else {}
        col = layout.column(align=True)
        for line in panel_state.mask_figures(live, masks.iteration, masks.labelled_iou, masks.applied):
            col.label(text=line)


CLASSES = (FaceReplaceMasks, FACEREPLACE_OT_mask_label, FACEREPLACE_OT_mask_train, FACEREPLACE_OT_mask_apply,
           SEQUENCER_PT_facereplace_masks)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.facereplace_masks = PointerProperty(type=FaceReplaceMasks)


def unregister() -> None:
    del bpy.types.Scene.facereplace_masks
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
