"""The engine's contract with the add-on (`python -m engine schema`): the values, labels and defaults of
every menu that sets an engine option, and each folder's file names, so the add-on restates none.

The answer the engine gave at the last Check Engine is kept in the extension's user folder; before the
engine has answered, the copy generated from the engine and bundled as engine_schema.json stands in
(tests/test_schema.py fails if that copy and the engine's answer differ). Menus are built when the
add-on registers, so a changed answer shows from Blender's next start.
"""

import json
import sys
from pathlib import Path

BUNDLED = Path(__file__).with_name("engine_schema.json")
ANSWER_FILE = "engine_schema.json"  # the last engine's answer, in the extension's user folder


def _answer_path() -> Path | None:
    """Where the engine's last answer is kept; None where the add-on runs outside an extension, or outside
    Blender (plain tests of the bpy-free core, which must not pull bpy in)."""
    bpy = sys.modules.get("bpy")
    if bpy is None:
        return None
    try:
        return Path(bpy.utils.extension_path_user(__package__, path="", create=True)) / ANSWER_FILE
    except (ValueError, OSError):
        return None


def load() -> dict:
    """The engine's last answer, else the bundled copy; an answer from another engine version (before the
    extension was updated) is not used, since its menus may lack what this add-on asks for."""
    bundled = json.loads(BUNDLED.read_text(encoding="utf-8"))
    path = _answer_path()
    try:
        answer = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        answer = None
    if isinstance(answer, dict) and answer.get("engine") == bundled["engine"] and isinstance(answer.get("verbs"), dict):
        return answer
    return bundled


def save(answer: dict) -> None:
    """Keep the engine's answer (Check Engine's) for the menus of the next start."""
    path = _answer_path()
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(answer), encoding="utf-8")  # in its order: the menus' order
        tmp.replace(path)


SCHEMA = load()


def option(verb: str, name: str) -> dict:
    return SCHEMA["verbs"][verb][name]


def items(verb: str, name: str) -> list[tuple[str, str, str, int]]:
    """EnumProperty items of the engine option `--name` of `verb`, each numbered by its place: a .blend
    stores a choice by its number, so the engine adds new values at the end."""
    return [(value, c["label"], c["description"], number)
            for number, (value, c) in enumerate(option(verb, name)["choices"].items())]


def default(verb: str, name: str) -> str:
    return option(verb, name)["default"]


def folder(kind: str) -> dict:
    """The file names of a faceset, model or output folder."""
    return SCHEMA["folders"][kind]
