"""The Blend sub-panel: the face layer over B's shot: FaceReplace Blend values, tuned live, and Bake."""

import bpy

from . import blend, strips
from .core.results import converted_feather
from .engine_client import ClientError
from .operators import resolved
from .panels import FaceReplacePanel


def face_strip_over_b(scene):
    """The face layer the add-on added over B's shot, or None."""
    try:
        shot = strips.shot_of(scene, scene.facereplace.b, "B")
    except ClientError:
        return None
    return strips.result_strips(scene, shot.key or shot.name).get("face")


class FACEREPLACE_OT_bake_blend(bpy.types.Operator):
    bl_idname = "facereplace.bake_blend"
    bl_label = "Bake to Convert"
    bl_description = ("Move the face layer's live Erode and Feather into the Convert settings (added to what it "
                      "was converted with) and set them back to neutral, so the next convert and the farm do "
                      "what you see; colour, grain and edge blur stay on the strip")
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        scene = strips.edited_scene(context)
        face = face_strip_over_b(scene)
        if face is None or blend.blend_node(face) is None:
            self.report({"ERROR"}, "no face layer with a FaceReplace Blend modifier: add the result strips first")
            return {"CANCELLED"}
        try:
            output = resolved(scene.facereplace.convert.output, "convert first: there are no results yet")
            converted = converted_feather(strips.read_manifest(output))
        except ClientError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        moved = blend.bake(face, scene.facereplace.convert, converted)
        self.report({"INFO"}, f"Convert settings now: {', '.join(moved)}; convert again to apply" if moved
                    else "Erode and Feather are neutral: nothing to bake")
        return {"FINISHED"}


class SEQUENCER_PT_facereplace_blend(FaceReplacePanel, bpy.types.Panel):
    bl_label = "Blend"
    bl_parent_id = "SEQUENCER_PT_facereplace"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        face = face_strip_over_b(strips.edited_scene(context))
        node = blend.blend_node(face) if face is not None else None
        if node is None:
            layout.label(text="Add the result strips to blend the face live" if blend.has_compositor_modifier()
                         else "Grade the face with its Color Balance modifier (Blender 5.0+ blends live)")
            return
        col = layout.column()
        for item in blend.INPUTS:
            col.prop(node.inputs[item.name], "default_value", text=item.name)
        layout.operator("facereplace.bake_blend", icon="EXPORT")


CLASSES = (FACEREPLACE_OT_bake_blend, SEQUENCER_PT_facereplace_blend)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
