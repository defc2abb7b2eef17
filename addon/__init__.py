"""FaceReplace: face replacement in Blender's Video Sequence Editor.

The add-on is the user interface; the work is done by the engine (extract, train, convert), which runs
in its own Python as a subprocess and is bundled inside the extension. Nothing here imports torch.
Installed as an extension it lives as bl_ext.<repo>.facereplace, so every import is relative.

Two layers, as glTF-Blender-IO keeps io/ apart from blender/: core/ holds what the add-on decides (the
engine's argument lists, convert's manifest, the result strips' plan, what the panels show, the engine's
`done` events) from plain values and imports no bpy, so plain pytest tests it; the modules beside it
read the scene into those values and write the answers back. The Blender modules are imported only when
the add-on registers, so importing the package (and its core) needs no Blender.
"""


def _modules() -> tuple:
    from . import blend_panel, jobs, masks, operators, panels, preferences, previews, properties, work_files

    return (preferences, properties, previews, operators, panels, masks, blend_panel, jobs, work_files)


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
