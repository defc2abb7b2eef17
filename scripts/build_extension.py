"""Build the installable Blender extension: dist/<id>-<version>.zip.

The zip holds blender_manifest.toml and the add-on (with engine_schema.json and its core/) at its root, the engine
package in engine/ (the add-on puts that folder on the engine subprocess's PYTHONPATH and loads its
standard-library-only engine/frames.py itself) and engine-requirements.txt, which
"Set up engine" pip-installs into the engine's venv: the engine's dependencies (pyproject.toml) at the
versions requirements.txt pins. Entries carry a fixed date, so the same sources give the same zip.
"""

import argparse
import importlib.util
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS_FILE = "engine-requirements.txt"  # the name addon/engine_client.py looks for
FIXED_DATE = (2024, 1, 1, 0, 0, 0)


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def engine_requirements(root: Path) -> str:
    """The engine's dependencies, each at the version requirements.txt pins where it pins one."""
    pinned = {}
    for line in (root / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            pinned[_name(line)] = line.strip()
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    return "".join(pinned.get(_name(d), d) + "\n" for d in dependencies)


def build(root: Path = ROOT, dist: Path | None = None) -> Path:
    manifest = tomllib.loads((root / "blender_manifest.toml").read_text())
    engine_version = re.search(r'__version__ = "([^"]+)"', (root / "engine" / "__init__.py").read_text()).group(1)
    if manifest["version"] != engine_version:
        raise SystemExit(f"blender_manifest.toml has version {manifest['version']} but the engine {engine_version}")
    files = {"blender_manifest.toml": root / "blender_manifest.toml"}
    files.update({p.relative_to(root / "addon").as_posix(): p for p in sorted((root / "addon").rglob("*.py"))})
    files.update({p.name: p for p in sorted((root / "addon").glob("*.json"))})  # engine_schema.json
    files.update({p.relative_to(root).as_posix(): p for p in sorted((root / "engine").rglob("*.py"))})
    dist = dist or root / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    path = dist / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, source in files.items():
            archive.writestr(zipfile.ZipInfo(name, FIXED_DATE), source.read_bytes(), zipfile.ZIP_DEFLATED)
        archive.writestr(zipfile.ZipInfo(REQUIREMENTS_FILE, FIXED_DATE), engine_requirements(root),
                         zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return path


def validate(zip_path: Path) -> None:
    """Blender's own check of an extension zip (what the extensions platform and Install from Disk run):
    blender_ext.py validate, from the bpy module's copy of Blender's scripts."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or spec.origin is None:
        raise SystemExit("validating the zip needs the bpy module (pip install bpy): it carries blender_ext.py")
    tool = next(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"), None)
    if tool is None:
        raise SystemExit(f"blender_ext.py is not inside {Path(spec.origin).parent}")
    done = subprocess.run([sys.executable, str(tool), "validate", str(zip_path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{zip_path} fails Blender's validation:\n{done.stdout}{done.stderr}")


FARM_COMMON = "facereplace_common.js"


def build_farm(root: Path = ROOT, dist: Path | None = None) -> list[Path]:
    """The Flamenco job types, dist/flamenco/facereplace_<type>.js: each job type's file with what they
    share (facereplace_common.js) in front, since the Manager loads every job type file on its own."""
    folder = (dist or root / "dist") / "flamenco"
    folder.mkdir(parents=True, exist_ok=True)
    common = (root / "farm" / FARM_COMMON).read_text()
    built = []
    for source in sorted((root / "farm").glob("facereplace_*.js")):
        if source.name != FARM_COMMON:
            (folder / source.name).write_text(common + "\n" + source.read_text())
            built.append(folder / source.name)
    return built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="folder to write the zip into")
    parser.add_argument("--farm", action="store_true", help="build the Flamenco job types instead")
    parser.add_argument("--validate", action="store_true", help="then check the zip with Blender's blender_ext.py")
    args = parser.parse_args()
    for path in build_farm(ROOT, args.dist) if args.farm else [build(ROOT, args.dist)]:
        if args.validate and not args.farm:
            validate(path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
