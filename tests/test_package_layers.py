"""engine/'s layers import one way: base <- faces <- folders <- networks <- stages <- the top (verbs, schema,
info, __main__), and no stage imports another, so the tree alone shows a newcomer the flow. Every import of
every engine module is read from its source (relative and absolute, module-level and inside functions)."""

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"
LAYERS = ["base", "faces", "folders", "networks", "stages"]  # each may import only those before it


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_imports(source: str, module: str, is_package: bool) -> set[str]:
    """The engine modules (dotted, from `engine`) that `source` imports, wherever in it the import stands."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            target = ".".join(filter(None, [base, node.module]))
            found.add(target)
            # `from . import media` imports the module engine.base.media, not the package
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "engine" or name.startswith("engine.")}


def layer_of(name: str) -> str | None:
    """The layer of engine module (or imported name) `name`; None for the top: engine's own modules
    (__main__, verbs, schema, info) and the root package itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def layer_breaks(module: str, imported: set[str]) -> list[str]:
    """What `module` imports against the one-way order, as messages."""
    own = layer_of(module)
    if own is None:
        return []  # the top may import anything
    breaks = []
    for name in sorted(imported):
        theirs = layer_of(name)
        if theirs is None:
            # `engine` and its attributes (`from .. import __version__`) are the root: every layer may read them
            if name.count(".") == 1 and (ENGINE / f"{name.split('.')[1]}.py").exists():
                breaks.append(f"{module} imports {name}, a top module that only the top may import")
        elif LAYERS.index(theirs) > LAYERS.index(own):
            breaks.append(f"{module} ({own}) imports {name} ({theirs}), a layer above it")
        elif own == theirs == "stages" and name != "engine.stages" and name.split(".")[2] != module.split(".")[2]:
            breaks.append(f"{module} imports {name}: a stage never imports another stage (stages share files)")
    return breaks


def all_modules() -> dict[str, set[str]]:
    return {module_name(path): engine_imports(path.read_text(encoding="utf-8"), module_name(path),
                                              path.name == "__init__.py")
            for path in sorted(ENGINE.rglob("*.py"))}


def test_every_module_sits_in_a_layer_or_the_top():
    top = {name for name in all_modules() if layer_of(name) is None}
    assert top == {"engine", "engine.__main__", "engine.verbs", "engine.schema", "engine.info"}


def test_engine_imports_flow_one_way():
    breaks = [message for module, imported in all_modules().items() for message in layer_breaks(module, imported)]
    assert breaks == []


@pytest.mark.parametrize("module, statement", [
    ("engine.stages.convert", "from ..stages.train import train_step"),
    ("engine.stages.convert", "def f():\n    from .train import train_step\n"),
    ("engine.stages.evaluate", "from engine.stages import convert"),
    ("engine.networks.model", "from ..stages.train import train_step"),
    ("engine.folders.faceset", "from ..networks import model"),
    ("engine.faces.align", "from ..folders.faceset import Faceset"),
    ("engine.base.media", "from ..faces import align"),
    ("engine.base.media", "import engine.verbs"),
    ("engine.stages.train", "from .. import schema"),
])
def test_an_import_against_the_flow_is_caught(module, statement):
    assert layer_breaks(module, engine_imports(statement, module, False))


@pytest.mark.parametrize("module, statement", [
    ("engine.stages.convert", "from ..networks.model import load_model\nfrom ..base import media"),
    ("engine.stages.convert", "from .. import __version__"),
    ("engine.networks.augment", "from ..folders.faceset import FaceSample\nfrom ..faces import masks"),
    ("engine.base.media", "from . import colorspace\nfrom .events import EngineError"),
    ("engine.faces.smooth", "from .align import umeyama"),
])
def test_an_import_with_the_flow_passes(module, statement):
    assert layer_breaks(module, engine_imports(statement, module, False)) == []
