"""Paths the .blend keeps and folders named after what the user named, the same on Windows, macOS and Linux.

No bpy here. `paths` is the OS's path module (os.path); the tests pass ntpath and posixpath to check that
a .blend saved on one OS finds its files on the other.
"""

import hashlib
import os

# Names Windows gives to devices in every folder, whatever the extension: a folder called CON cannot be made.
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10))}
# Characters no folder name may hold on Windows (macOS and Linux forbid only the slash); control characters too.
FORBIDDEN = set('<>:"/\\|?*')


def blend_relative(path: str, blend_folder: str, paths=os.path) -> str:
    """`path` as the .blend keeps it when it lies beside the .blend: "//" and the rest relative to
    `blend_folder`, with forward slashes whatever the OS (bpy.path.relpath writes backslashes on Windows,
    which macOS and Linux read as part of a name)."""
    return "//" + paths.relpath(path, blend_folder).replace("\\", "/")


def blend_absolute(stored: str, blend_folder: str, paths=os.path) -> str:
    """A path the .blend keeps made absolute and normal under this OS's rules: "//" is `blend_folder`, and
    either slash separates the rest (a .blend saved on Windows by Blender itself or an older add-on
    holds backslashes)."""
    if stored.startswith("//"):
        stored = paths.join(blend_folder, *stored[2:].replace("\\", "/").split("/"))
    return paths.normpath(stored)


def rebased(stored: str, old_folder: str, new_folder: str, paths=os.path) -> str:
    """A path the .blend keeps, for the same file once the .blend is saved from `old_folder` into
    `new_folder` (Save As): a "//" path is made relative to the new folder, as Blender remaps its own
    paths, so the work beside the old .blend is still found. Absolute paths stay; a path on another
    drive than the new .blend (Windows) becomes absolute."""
    if not stored.startswith("//") or not old_folder:
        return stored
    target = blend_absolute(stored, old_folder, paths)
    try:
        return blend_relative(target, new_folder, paths)
    except ValueError:  # ntpath: no relative path from one drive to another
        return target


def not_reserved(name: str) -> str:
    """`name` (already cleaned of the characters Windows forbids, as bpy.path.clean_name does) as a folder
    name Windows can make: one it reserves for a device (CON, AUX, COM1, ...) gets a trailing _."""
    return f"{name}_" if name.upper() in WINDOWS_RESERVED else name


def folder_name(name: str) -> str:
    """A folder name for what the user named `name` (a scene), as they wrote it where every OS allows it:
    unicode letters and spaces kept; a character Windows forbids, a control character, a trailing dot or
    space made "_" and then a short hash of the exact name added, so "a/b" and "a_b" never share a folder."""
    safe = "".join("_" if c in FORBIDDEN or ord(c) < 32 else c for c in name)
    safe = safe.rstrip(" .") + "_" * (len(safe) - len(safe.rstrip(" ."))) or "_"
    if safe != name:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:6]
    return not_reserved(safe)
