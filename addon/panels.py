"""The "Face Swap" tab of the sequencer's sidebar: shots, extract, train, convert, in the order of the work."""

import os

import bpy

from . import contract, jobs, previews, text
from .core import panel_state
from .engine_client import ClientError
from .operators import results_out_of_step, same_shot_message, shot_problem, stale_message, work_folder
from .preferences import SETUP_OFFLINE, prefs
from .strips import TAG, absolute, edited_scene, find_strip, fps_mismatch, strip_collection

# The columns of train's preview grid, as the panel labels them.
PREVIEW_COLUMNS = tuple(c.strip().replace("->", "→") for c in contract.folder("model")["preview_columns"].split(","))


class FaceReplacePanel:
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Face Swap"


def _image(layout, path: str, scale: float) -> None:
    """Draw an image file (a preview grid, a contact sheet) as a large icon, if it exists, with a button
    that shows it full size."""
    if path and os.path.isfile(full := bpy.path.abspath(path)):
        layout.template_icon(icon_value=previews.icon(full), scale=scale)
        layout.operator("facereplace.open_image", icon="IMAGE").filepath = full


def _busy(stage: str) -> bool:
    job = jobs.active()
    return job is not None and job.stage == stage


class SEQUENCER_PT_facereplace(FaceReplacePanel, bpy.types.Panel):
    bl_label = "Face Swap"

    def draw(self, context):
        layout = self.layout
        job = jobs.active()
        if job is not None:
            row = layout.row(align=True)
            row.progress(factor=job.progress, type="BAR", text=job.text[:60])
            row.operator("facereplace.cancel", text="", icon="CANCEL")
            for warning in job.warnings[-2:]:
                layout.label(text=warning, icon="ERROR")
        elif jobs.last_report is not None:
            level, message = jobs.last_report
            text.draw_wrapped(layout.box(), message, context, icon="ERROR" if level == "ERROR" else "INFO")
        preferences = prefs(context)
        if not preferences.engine_ok and job is None:
            failed = bool(preferences.engine_error)
            layout.label(text="The engine does not run: set it up" if failed else "Engine not checked yet",
                         icon="ERROR" if failed else "QUESTION")
            row = layout.row(align=True)
            row.operator("facereplace.check_engine", text="Check", icon="CHECKMARK")
            row.operator("facereplace.setup_engine", icon="IMPORT")
            if not bpy.app.online_access:
                text.draw_wrapped(layout, SETUP_OFFLINE, context, icon="INTERNET_OFFLINE")
        scene = edited_scene(context)
        if refusal := same_shot_message(scene):
            layout.label(text=refusal, icon="ERROR")
        for side in ("A", "B"):
            if stale := stale_message(scene, side):
                layout.label(text=stale, icon="ERROR")
        if drift := results_out_of_step(scene):
            layout.label(text=drift, icon="ERROR")
            layout.operator("facereplace.add_strips", text="Put Back in Step", icon="FILE_REFRESH")
        row = layout.row(align=True)
        try:
            row.operator("wm.path_open", text="Open Work Folder", icon="FILE_FOLDER").filepath = str(work_folder(scene))
        except ClientError:
            pass  # an unsaved .blend with a "//" work folder has none yet
        if jobs.last_log is not None:
            row.operator("wm.path_open", text="Open Log", icon="TEXT").filepath = str(jobs.last_log)


class SEQUENCER_PT_facereplace_shots(FaceReplacePanel, bpy.types.Panel):
    bl_label = "Shots"
    bl_parent_id = "SEQUENCER_PT_facereplace"

    def draw(self, context):
        settings = edited_scene(context).facereplace
        editor = edited_scene(context).sequence_editor
        for side, title in (("A", "A: the face to put in"), ("B", "B: the shot's face, replaced")):
            shot = getattr(settings, side.lower())
            box = self.layout.box()
            box.label(text=title)
            box.row().prop(shot, "source", expand=True)
            row = box.row(align=True)
            if shot.source == "STRIP":
                if editor is not None:
                    row.prop_search(shot, "strip", editor, "strips" if hasattr(editor, "strips") else "sequences",
                                    text="", icon="SEQUENCE")
                else:
                    row.label(text="The sequencer has no strips yet")
                row.operator("facereplace.use_active_strip", text="", icon="EYEDROPPER").side = side
            else:
                row.prop(shot, "folder", text="")
            # Only B's frames must sit on the timeline's (A's are faces to learn from, at any rate).
            strip = find_strip(editor, shot.strip_id, shot.strip) if shot.source == "STRIP" and side == "B" else None
            if strip is not None and (warning := fps_mismatch(strip, edited_scene(context))):
                box.label(text=warning, icon="ERROR")
            if problem := shot_problem(edited_scene(context), side):
                box.label(text=problem, icon="ERROR")
            row = box.row(align=True)
            row.prop(shot, "use_custom_range")
            sub = row.row(align=True)
            sub.active = shot.use_custom_range
            sub.prop(shot, "frame_first")
            sub.prop(shot, "frame_last")


class SEQUENCER_PT_facereplace_extract(FaceReplacePanel, bpy.types.Panel):
    bl_label = "Extract"
    bl_parent_id = "SEQUENCER_PT_facereplace"

    def draw(self, context):
        layout = self.layout
        settings = edited_scene(context).facereplace
        row = layout.row(align=True)
        row.operator("facereplace.extract", text="Extract A").side = "A"
        row.operator("facereplace.extract", text="Extract B").side = "B"
        row.operator("facereplace.extract", text="Both", icon="PLAY").side = "BOTH"
        layout.prop(settings, "face_size")
        scene = edited_scene(context)
        for side in ("A", "B"):
            shot = getattr(settings, side.lower())
            box = layout.box()
            header = box.row()
            header.label(text=panel_state.extract_header(side, bool(shot.faceset), shot.frames_with_faces, shot.frames))
            if stale := stale_message(scene, side):
                box.label(text=stale, icon="ERROR")
            if shot.frames_without_faces:
                box.label(text=f"No face: frames {shot.frames_without_faces}", icon="ERROR")
            row = box.row(align=True)
            row.prop(shot, "use_reference")
            sub = row.row(align=True)
            sub.active = shot.use_reference
            sub.prop(shot, "reference_frame")
            sub.operator("facereplace.reference_frame", text="", icon="TIME").side = side
            sub.prop(shot, "reference_face")


class SEQUENCER_PT_facereplace_contact_sheets(FaceReplacePanel, bpy.types.Panel):
    """The contact sheets, folded away by default so the panel stays short."""

    bl_label = "Contact Sheets"
    bl_parent_id = "SEQUENCER_PT_facereplace_extract"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        settings = edited_scene(context).facereplace
        for side in ("A", "B"):
            shot = getattr(settings, side.lower())
            if shot.faceset:
                self.layout.label(text=f"{side}: aligned faces and masks")
                _image(self.layout, os.path.join(shot.faceset, "contact_sheet.png"), scale=9.0)


class SEQUENCER_PT_facereplace_train(FaceReplacePanel, bpy.types.Panel):
    bl_label = "Train"
    bl_parent_id = "SEQUENCER_PT_facereplace"

    def draw(self, context):
        layout = self.layout
        train = edited_scene(context).facereplace.train
        col = layout.column()
        col.prop(train, "preset")
        col.prop(train, "size")
        col.prop(train, "architecture")
        col.prop(train, "base_model")
        col.prop(train, "iterations")
        col.prop(train, "time_budget")
        for prop in contract.panel_options("train"):  # the options the engine marks for the panel
            col.prop(train, prop)
        col.prop(train, "enhancer_iterations")
        col = layout.column()
        col.prop(train, "late_phase")
        late = col.column()
        late.active = train.late_phase > 0  # both act in the late phase only
        late.prop(train, "lr_dropout")
        late.prop(train, "gan_weight")
        row = layout.row(align=True)
        if _busy("train"):
            row.operator("facereplace.cancel", text="Stop and Save", icon="PAUSE")
        elif train.model:
            row.operator("facereplace.train", text="Resume", icon="PLAY").resume = True
            row.operator("facereplace.train", text="New Model", icon="FILE_NEW").resume = False
        else:
            row.operator("facereplace.train", text="Start Training", icon="PLAY").resume = False
        job = jobs.active()
        live = job.live if _busy("train") else {}
        # A run into another folder (New Model, a farm task) is not the scene's model: none of its figures show.
        into = panel_state.training_into(job.step.stop_file.parent if _busy("train") else None,
                                         absolute(train.model) if train.model else None)
        if into:
            layout.label(text=f"New model: {into}", icon="FILE_NEW")
            shown = {"iteration": 0, "loss_a": 0.0, "loss_b": 0.0, "preview": ""}
        else:
            layout.prop(train, "model")  # also where to pick a model trained elsewhere (a farm, torchrun)
            shown = {"iteration": train.iteration, "loss_a": train.loss_a, "loss_b": train.loss_b, "preview": train.preview}
        preview = live.get("preview") or shown["preview"]
        if preview:
            row = layout.row(align=True)
            for column in PREVIEW_COLUMNS:
                row.label(text=column)
        _image(layout, preview, scale=12.0)
        col = layout.column(align=True)
        for line in panel_state.train_figures(live, shown):
            col.label(text=line)


class SEQUENCER_PT_facereplace_convert(FaceReplacePanel, bpy.types.Panel):
    bl_label = "Convert"
    bl_parent_id = "SEQUENCER_PT_facereplace"

    def draw(self, context):
        layout = self.layout
        convert = edited_scene(context).facereplace.convert
        col = layout.column()
        col.prop(convert, "mask")
        col.prop(convert, "erode")
        row = col.row(align=True)
        row.prop(convert, "use_auto_feather")
        sub = row.row(align=True)
        sub.active = not convert.use_auto_feather
        sub.prop(convert, "feather")
        col.prop(convert, "color")
        col.prop(convert, "detail")
        col.prop(convert, "edge_match")
        col.prop(convert, "plate_mouth")
        col.prop(convert, "format")
        settings = edited_scene(context).facereplace
        if settings.target_frames:
            layout.label(text=f"B: timeline frames {settings.target_frames}")
        row = layout.row(align=True)
        row.operator("facereplace.convert", icon="PLAY").frames = ""
        row.operator("facereplace.add_strips", icon="SEQ_STRIP_DUPLICATE")
        layout.prop(convert, "output")  # empty: the work folder's output/; set it before the first convert
        if convert.frames:
            layout.label(text=f"{convert.frames} frames converted, faces in {convert.frames_with_faces}")
        editor = edited_scene(context).sequence_editor
        if editor is not None:
            ours = [s for s in strip_collection(editor) if s.get(TAG)]
            for strip in ours:
                layout.label(text=f"{strip.name}: channel {strip.channel}" + (" (muted)" if strip.mute else ""),
                             icon="SEQ_STRIP_META")


CLASSES = (
    SEQUENCER_PT_facereplace,
    SEQUENCER_PT_facereplace_shots,
    SEQUENCER_PT_facereplace_extract,
    SEQUENCER_PT_facereplace_contact_sheets,
    SEQUENCER_PT_facereplace_train,
    SEQUENCER_PT_facereplace_convert,
)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
