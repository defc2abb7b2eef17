"""The work folders travel with the .blend: Save As into another folder re-bases the scenes' "//" paths
(facesets, models, previews, outputs, mask models) onto the new file, as Blender remaps its own (strips,
images), so the new .blend still finds the work beside the old one.

Save Copy leaves the open file where it was: its paths are re-based only while the copy is written.
"""

import os

import bpy
from bpy.app.handlers import persistent

from .paths import rebased

# The scene properties that hold the add-on's settings.
SETTINGS = ("facereplace", "facereplace_masks")
PATH_SUBTYPES = {"DIR_PATH", "FILE_PATH"}

# (owner, property, value before the save) of the paths re-based for the save in progress.
_before: list[tuple[object, str, str]] = []


def path_properties(group):
    """(owner, property name) of every path a settings group holds, its nested groups' included."""
    for prop in group.bl_rna.properties:
        if prop.identifier == "rna_type":  # the group's own type, not a group it holds
            continue
        if prop.type == "POINTER" and isinstance(getattr(group, prop.identifier), bpy.types.PropertyGroup):
            yield from path_properties(getattr(group, prop.identifier))
        elif prop.type == "STRING" and prop.subtype in PATH_SUBTYPES and not prop.is_readonly:
            yield group, prop.identifier


def _folder(filepath: str) -> str:
    return os.path.normcase(os.path.abspath(os.path.dirname(filepath))) if filepath else ""


@persistent
def _rebase(filepath, *_args) -> None:
    """save_pre: the .blend is about to be written to `filepath`."""
    _before.clear()
    old, new = _folder(bpy.data.filepath), _folder(filepath)
    if not old or not new or old == new:
        return
    for scene in bpy.data.scenes:
        if scene.library is not None:
            continue  # linked from another file, which keeps its own paths
        for name in SETTINGS:
            if (group := getattr(scene, name, None)) is None:
                continue
            for owner, prop in path_properties(group):
                value = getattr(owner, prop)
                if (moved := rebased(value, os.path.dirname(bpy.data.filepath), os.path.dirname(filepath))) != value:
                    _before.append((owner, prop, value))
                    setattr(owner, prop, moved)


@persistent
def _restore(*_args) -> None:
    """save_post_fail: the file was not written, so the open one keeps its paths."""
    for owner, prop, value in _before:
        setattr(owner, prop, value)
    _before.clear()


@persistent
def _settle(filepath, *_args) -> None:
    """save_post: a copy was written (the open file stayed where it was), so the open file keeps its paths."""
    if _folder(bpy.data.filepath) != _folder(filepath):
        _restore()
    _before.clear()


HANDLERS = ((bpy.app.handlers.save_pre, _rebase), (bpy.app.handlers.save_post, _settle),
            (bpy.app.handlers.save_post_fail, _restore))


def register() -> None:
    for handlers, handler in HANDLERS:
        handlers.append(handler)


def unregister() -> None:
    for handlers, handler in HANDLERS:
        if handler in handlers:
            handlers.remove(handler)
