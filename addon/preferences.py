"""Add-on preferences: which Python runs the engine, on which device, with which detector, and where the
work files go. Keyed by __package__, so they follow the extension wherever Blender installs it."""

import os
import sys
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from .engine_client import ENGINE_PYTHON_ENV, venv_python
from .properties import RELATIVE


def prefs(context=None) -> "FaceReplacePreferences":
    return (context or bpy.context).preferences.addons[__package__].preferences


def managed_venv() -> Path:
    """The venv that Set up engine makes, in the extension's own user folder (it survives updates)."""
    return Path(bpy.utils.extension_path_user(__package__, path="engine-venv", create=False))


def engine_python(context=None) -> str:
    """The engine's Python: $FACEREPLACE_ENGINE_PYTHON (farm workers), the preference, the venv Set up
    engine made, or else Blender's own Python (which has the engine's packages where bpy was installed as a
    module into the engine's venv, as in this project's tests)."""
    chosen = os.environ.get(ENGINE_PYTHON_ENV) or prefs(context).engine_python
    if chosen:
        return bpy.path.abspath(chosen)
    made = venv_python(managed_venv())
    return str(made) if made.is_file() else sys.executable


class FaceReplacePreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_python: StringProperty(
        name="Engine Python",
        subtype="FILE_PATH",
        description="The python of a venv that has the engine's packages (torch, OpenCV, dlib). "
        "Empty: the venv that Set up engine made",
    )
    device: EnumProperty(
        name="Device",
        items=[("auto", "Auto", "A CUDA GPU when there is one, else the CPU"),
               ("cuda", "CUDA", "An NVIDIA GPU (an error without one)"), ("cpu", "CPU", "The processor")],
        default="auto",
    )
    train_processes: IntProperty(
        name="Training GPUs",
        default=1, min=1, max=64,
        description="Train on this many GPUs of this machine, one process each (torchrun, DistributedDataParallel)",
    )
    detector: EnumProperty(
        name="Face Detector",
        items=[("auto", "Auto", "FAN where its weights load (downloaded once), else dlib"),
               ("fan", "FAN", "face-alignment's S3FD and 2DFAN4: accurate, fast on a GPU; weights downloaded once"),
               ("dlib", "dlib", "dlib's HOG detector and 68-point predictor: works offline")],
        default="auto",
    )
    work_folder: StringProperty(
        name="Work Folder",
        subtype="DIR_PATH",
        options=RELATIVE,
        default="//facereplace/",
        description="Where facesets, models and converted layers go; '//' is the .blend's folder. "
        "For a render farm, use a path every worker sees",
    )
    engine_status: StringProperty(name="Engine", description="What Check engine found")
    engine_ok: BoolProperty(name="Engine Works", description="Check engine found a working engine")

    def draw(self, context):
        from . import jobs

        layout = self.layout
        col = layout.column()
        col.prop(self, "engine_python")
        if not self.engine_python:
            col.label(text=f"Using {engine_python(context)}", icon="INFO")
        row = col.row(align=True)
        row.operator("facereplace.check_engine", icon="CHECKMARK")
        row.operator("facereplace.setup_engine", icon="IMPORT")
        job = jobs.active()
        if job is not None and job.stage in {"setup", "check"}:
            row = col.row(align=True)
            row.progress(factor=job.progress, type="BAR", text=job.text[:100])
            row.operator("facereplace.cancel", text="", icon="CANCEL")
        elif self.engine_ok:
            col.label(text=self.engine_status, icon="CHECKMARK")
        elif jobs.last_report is not None and jobs.last_report[0] == "ERROR":
            col.label(text=jobs.last_report[1], icon="ERROR")
        else:
            col.label(text="Not checked yet: click Check Engine", icon="QUESTION")
        layout.separator()
        col = layout.column()
        col.prop(self, "device")
        col.prop(self, "train_processes")
        col.prop(self, "detector")
        col.prop(self, "work_folder")

register, unregister = bpy.utils.register_classes_factory((FaceReplacePreferences,))
