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


# ---------------------------------------------------------------- properties from the engine's options

PROPERTY_TYPES = {"int": "INT", "float": "FLOAT", "bool": "BOOL"}
INT_LIMIT = 2**31 - 1  # a Blender IntProperty's bound: wider engine ranges (a seed's) are left unbounded


def property_spec(verb: str, option_name: str, schema: dict | None = None, **overrides) -> tuple[str, dict]:
    """("INT", "FLOAT" or "BOOL", the keywords of that Blender property) for the engine option
    `--option_name` of `verb`: its label, help, default and range as the schema publishes them, then `overrides` (where
    the add-on means something else by the value, as 0 for no time budget). No bpy: plain tests build it."""
    published = (schema or SCHEMA)["verbs"][verb][option_name]
    kind = overrides.pop("kind", None) or PROPERTY_TYPES[published["type"]]
    spec = {"name": published["label"], "description": _sentence(published["help"])}
    if published["default"] is not None:
        spec["default"] = published["default"]
    for bound, keyword in (("low", "min"), ("high", "max")):
        if bound in published and abs(published[bound]) <= INT_LIMIT:
            spec[keyword] = published[bound]
    spec.update(overrides)
    return kind, spec


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def panel_options(verb: str, schema: dict | None = None) -> dict[str, str]:
    """{property name: option name} of the options the engine marks for the add-on's panel (a settings
    field with panel=True): each becomes a property of its own, sent as it is (panel_args)."""
    return {name.replace("-", "_"): name for name, published in (schema or SCHEMA)["verbs"][verb].items()
            if published.get("panel")}


FARM_TYPES = {"INT": "int32", "FLOAT": "float", "BOOL": "bool"}  # Flamenco's setting types


def farm_settings(verb: str, schema: dict | None = None) -> list[dict]:
    """The Flamenco job settings of `verb`'s panel options (panel_options): one per property, with its type,
    label and description; the job type (farm/*.js) reads each from the .blend and sets it in the task."""
    settings = []
    for prop, name in panel_options(verb, schema).items():
        kind, spec = property_spec(verb, name, schema)
        settings.append({"key": prop, "type": FARM_TYPES[kind], "label": spec["name"],
                         "description": spec["description"]})
    return settings


def panel_args(verb: str, values, schema: dict | None = None) -> list:
    """The command-line options that the panel properties of `values` (a property group, or any object
    with those attributes) set: a switch when on, a number when it is not the engine's default."""
    args = []
    for prop, name in panel_options(verb, schema).items():
        value, published = getattr(values, prop), (schema or SCHEMA)["verbs"][verb][name]
        if published["type"] == "bool":
            args += [f"--{name}"] if value else []
        elif value != published["default"]:
            args += [f"--{name}", value]
    return args
