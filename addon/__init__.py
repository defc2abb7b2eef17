"""FaceReplace: face replacement in Blender's Video Sequence Editor.

The add-on is the user interface; the work is done by the engine (extract, train, convert), which runs
in its own Python as a subprocess and is bundled inside the extension. Nothing here imports torch.
Installed as an extension it lives as bl_ext.<repo>.facereplace, so every import is relative.
"""

from . import blend_panel, jobs, masks, operators, panels, preferences, previews, properties, work_files

MODULES = (preferences, properties, previews, operators, panels, masks, blend_panel, jobs, work_files)


def register() -> None:
    for module in MODULES:
        module.register()


def unregister() -> None:
    for module in reversed(MODULES):
        module.unregister()
