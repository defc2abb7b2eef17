"""Add-on preferences: which Python runs the engine, on which device, with which detector, and where the
work files go. Keyed by __package__, so they follow the extension wherever Blender installs it."""

import os
import platform
import shutil
import sys
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import contract, text
from .engine_client import ENGINE_PYTHON_ENV, venv_python
from .properties import RELATIVE

# The PyTorch wheel index of each backend Set up Engine installs (None: PyPI's own wheels, which carry MPS
# on Apple silicon). The torch version itself is the one engine-requirements.txt pins.
BACKENDS = {
    "CUDA": ("CUDA", "NVIDIA GPUs (CUDA 12.8 build of torch)", "https://download.pytorch.org/whl/cu128"),
    "ROCM": ("ROCm", "AMD GPUs on Linux (ROCm 6.4 build of torch)", "https://download.pytorch.org/whl/rocm6.4"),
    "MPS": ("Apple MPS", "Apple silicon GPUs (PyPI's macOS build of torch)", None),
    "CPU": ("CPU", "No GPU: the CPU-only build of torch, the smallest download",
            "https://download.pytorch.org/whl/cpu"),
}
# Why Set up Engine is off while Blender may not use the network.
SETUP_OFFLINE = "Set up Engine downloads a few GB: allow Online Access in Preferences > System > Network"


def detect_backend() -> str:
    """What this machine has: an NVIDIA driver's nvidia-smi, Apple silicon, ROCm's rocm-smi, else the CPU."""
    if shutil.which("nvidia-smi"):
        return "CUDA"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "MPS"
    if sys.platform.startswith("linux") and shutil.which("rocm-smi"):
        return "ROCM"
    return "CPU"


def user_data_folder() -> Path:
    """The per-user application data folder of this OS, which no Blender version owns."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "FaceReplace"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "FaceReplace"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "facereplace"


def prefs(context=None) -> "FaceReplacePreferences":
    return (context or bpy.context).preferences.addons[__package__].preferences


def engine_folder(context=None) -> Path:
    """Where Set up Engine puts the engine's venv: the preference, else the OS's user data folder. Not in
    Blender's per-version folders, so a Blender upgrade (and a farm worker) finds the same engine."""
    chosen = prefs(context).engine_folder
    return Path(bpy.path.abspath(chosen)) if chosen else user_data_folder() / "engine"


def managed_venv(context=None) -> Path:
    """The venv that Set up Engine makes."""
    return engine_folder(context) / "venv"


def extension_user_folder(name: str) -> Path:
    """A folder of the extension's own user folder (kept across extension updates): the engine's
    TORCH_HOME lives there, not in the user's home cache."""
    return Path(bpy.utils.extension_path_user(__package__, path=name, create=True))


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
        options=RELATIVE,
        description="The python of a venv that has the engine's packages (torch, OpenCV, dlib). "
        "Empty: the venv that Set up engine made",
    )
    device: EnumProperty(name="Device", items=contract.items("extract", "device"),
                         default=contract.default("extract", "device"))
    train_processes: IntProperty(
        name="Training GPUs",
        default=1, min=1, max=64,
        description="Train on this many GPUs of this machine, one process each (torchrun, DistributedDataParallel)",
    )
    detector: EnumProperty(name="Face Detector", items=contract.items("extract", "detector"),
                           default=contract.default("extract", "detector"))
    work_folder: StringProperty(
        name="Work Folder",
        subtype="DIR_PATH",
        options=RELATIVE,
        default="//facereplace/",
        description="Where facesets, models and converted layers go; '//' is the .blend's folder. "
        "For a render farm, use a path every worker sees",
    )
    engine_folder: StringProperty(
        name="Engine Folder",
        subtype="DIR_PATH",
        options=RELATIVE,
        description="Where Set up Engine makes the engine's venv, shared by every Blender version (and usable "
        "by a farm: point FACEREPLACE_ENGINE_PYTHON at its python). Empty: the user data folder of this OS",
    )
    backend: EnumProperty(
        name="GPU Backend",
        items=[(key, label, description) for key, (label, description, _index) in BACKENDS.items()],
        default=detect_backend(),
        description="Which build of torch Set up Engine installs; the default is what this machine has",
    )
    fan_weights: StringProperty(
        name="Detector Weights Folder",
        subtype="DIR_PATH",
        options=RELATIVE,
        description="A folder holding the FAN detector's weight files (the engine's --fan-weights), so FAN "
        "runs without the network. Empty: the extension's own cache, filled by Download Detector Weights",
    )
    cpu_threads: IntProperty(
        name="CPU Threads",
        default=0, min=0, max=256,
        description="Threads of an engine run on the CPU. 0: the engine shares the cores with the other "
        "engine runs, and leaves one core for Blender when started from its window",
    )
    use_passive_wait: BoolProperty(
        name="Passive CPU Wait",
        default=True,
        description="Engine threads sleep rather than spin while they wait (OMP_WAIT_POLICY=PASSIVE), so "
        "playback and renders stay smooth while an engine runs from Blender's window",
    )
    # Whether the engine is ready, and what is known of it: the only record of it the panels read.
    engine_status: StringProperty(name="Engine", description="What Check engine found")
    engine_ok: BoolProperty(name="Engine Works", description="Check engine or a finished run found a working engine")
    engine_error: StringProperty(name="Engine Error", description="Why the last Check engine failed")

    def draw(self, context):
        from . import jobs

        layout = self.layout
        col = layout.column()
        col.prop(self, "engine_python")
        if not self.engine_python:
            col.label(text=f"Using {engine_python(context)}", icon="INFO")
        col.prop(self, "engine_folder")
        col.prop(self, "backend")
        row = col.row(align=True)
        row.operator("facereplace.check_engine", icon="CHECKMARK")
        row.operator("facereplace.setup_engine", icon="IMPORT")
        row.operator("wm.path_open", text="Open Log", icon="TEXT").filepath = str(engine_folder(context) / "setup.log")
        job = jobs.active()
        if job is not None and job.stage in {"setup", "check"}:
            row = col.row(align=True)
            row.progress(factor=job.progress, type="BAR", text=job.text[:100])
            row.operator("facereplace.cancel", text="", icon="CANCEL")
        elif self.engine_ok:
            col.label(text=self.engine_status or "The engine works: Check Engine shows its versions", icon="CHECKMARK")
        elif self.engine_error:
            text.draw_wrapped(col, self.engine_error, context, icon="ERROR")
        else:
            col.label(text="Not checked yet: click Check Engine", icon="QUESTION")
        if not bpy.app.online_access:
            col.label(text=SETUP_OFFLINE, icon="INTERNET_OFFLINE")
        layout.separator()
        col = layout.column()
        col.prop(self, "device")
        col.prop(self, "train_processes")
        col.prop(self, "detector")
        row = col.row(align=True)
        row.prop(self, "fan_weights")
        row.operator("facereplace.download_weights", text="", icon="IMPORT")
        col.prop(self, "cpu_threads")
        col.prop(self, "use_passive_wait")
        col.prop(self, "work_folder")

register, unregister = bpy.utils.register_classes_factory((FaceReplacePreferences,))
