"""Image files shown in the panel (the live training preview, the aligned-face thumbnails) as icons.

A preview collection caches each file by path; a file that changed on disk since it was loaded (the
training preview is rewritten every few hundred iterations) is loaded again.
"""

import os

import bpy.utils.previews

_collection = None
_loaded: dict[str, int] = {}  # path -> mtime_ns of the loaded copy


def icon(path: str) -> int:
    """The icon id of the image at `path` (0 if there is none), reloaded when the file has changed."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return 0
    if _collection is None:
        return 0
    if _loaded.get(path) != mtime:
        if path in _collection:
            del _collection[path]
        _collection.load(path, path, "IMAGE")
        _loaded[path] = mtime
    return _collection[path].icon_id


def reload(path: str | None) -> None:
    """Load a file that was just rewritten, so the next redraw shows it."""
    if path:
        icon(path)


def register() -> None:
    global _collection
    _collection = bpy.utils.previews.new()


def unregister() -> None:
    global _collection
    bpy.utils.previews.remove(_collection)
    _collection = None
    _loaded.clear()
