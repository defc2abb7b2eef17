"""Windows and macOS, imitated on Linux: the engine runs where POSIX-only modules and calls are missing,
the .blend's paths made under one OS's rules resolve under the other's, a stop is never lost at start-up,
MPS is picked where it is, and the engine's set-up resolves to wheels for Windows and Apple silicon."""

import ast
import json
import ntpath
import os
import posixpath
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
from packaging.utils import canonicalize_name

from addon.paths import blend_absolute, blend_relative, folder_name, not_reserved, rebased
from engine.base import device
from engine.base.events import EngineError
from tests.conftest import ROOT

POSIX_ONLY_MODULES = {"fcntl", "termios", "resource", "pwd", "grp"}
POSIX_ONLY_CALLS = ("pread", "pwrite", "fchmod", "sched_getaffinity")

# Run in a fresh Python before the engine: the project's own modules cannot import POSIX_ONLY_MODULES (as
# on Windows; the libraries they use keep theirs) and os has none of POSIX_ONLY_CALLS (as on Windows, and
# sched_getaffinity as on macOS). Then `python -m engine VERB ...` for each command line of argv[1] (JSON).
WITHOUT_POSIX = textwrap.dedent("""
    import builtins, json, os, sys
    BLOCKED, CALLS = set(json.loads(sys.argv[2])), json.loads(sys.argv[3])
    for name in CALLS:
        if hasattr(os, name):
            delattr(os, name)
    real_import = builtins.__import__

    def imitated_import(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__") or ""
        if level == 0 and name.partition(".")[0] in BLOCKED and importer.partition(".")[0] in ("engine", "addon"):
            raise ModuleNotFoundError(f"No module named {name!r} (imitating Windows, imported by {importer})")
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = imitated_import
    from engine.__main__ import main

    for argv in json.loads(sys.argv[1]):
        code = main(argv)
        print(f"exit {code}: {argv[0]}", file=sys.stderr, flush=True)
        if code:
            sys.exit(code)
""")


def test_the_pipeline_runs_without_posix_only_modules_and_calls(shot_b, faceset_a, tmp_path):
    faceset, model, layers = tmp_path / "faceset_b", tmp_path / "model", tmp_path / "layers"
    commands = [
        ["extract", shot_b, "--output", faceset, "--detector", "dlib", "--size", "128"],
        ["train", "--a", faceset_a, "--b", faceset, "--model", model, "--preset", "tiny", "--iterations", "2",
         "--preview-every", "1000", "--device", "cpu"],
        ["convert", shot_b, "--alignments", faceset, "--model", model, "--output", layers, "--frames", "1-3",
         "--device", "cpu"],  # --frames: a farm chunk, under the shared lock
        ["convert", shot_b, "--alignments", faceset, "--model", model, "--output", layers, "--device", "cpu"],
        ["evaluate", shot_b, "--alignments", faceset, "--layers", layers, "--source", faceset_a, "--frames", "1-4"],
        ["schema"],
        ["info", "--events"],
    ]
    done = subprocess.run([sys.executable, "-c", WITHOUT_POSIX, json.dumps([list(map(str, c)) for c in commands]),
                           json.dumps(sorted(POSIX_ONLY_MODULES)), json.dumps(POSIX_ONLY_CALLS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert [line.split(":")[0] for line in done.stderr.splitlines() if line.startswith("exit ")] == ["exit 0"] * len(commands)
    assert (faceset / "alignments.json").is_file() and (layers / "manifest.json").is_file()
    assert (layers / "evaluate" / "evaluation.json").is_file()
    info = json.loads(done.stdout.splitlines()[-1])  # info --events: Check Engine's answer, the contract in it
    assert info["event"] == "done" and info["schema"]["verbs"]["train"]["device"]["default"] == "auto"


def test_no_file_imports_a_posix_only_module_at_its_top():
    """Where one does, every verb fails to import on Windows (Check Engine included)."""
    offenders = []
    for folder in ("engine", "addon", "scripts", "demo", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.parse(path.read_text(), str(path)).body:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.partition(".")[0] in POSIX_ONLY_MODULES]
    assert not offenders


def test_a_temp_file_name_is_at_most_14_characters_longer_than_its_target(tmp_path):
    """So a deep output path that fits Windows' 260 characters still fits while it is being written."""
    from engine.base import media

    for name in ("face_000001.exr", "a_very_long_output_name_from_a_studio_pipeline_v0012.exr"):
        with media.atomic_path(tmp_path / name) as temp:
            assert len(temp.name) <= len(name) + 14 and media.TEMP_NAME.fullmatch(temp.name)
            temp.write_bytes(b"1")
        assert (tmp_path / name).read_bytes() == b"1"


# ---------------------------------------------------------------- the .blend's paths


@pytest.mark.parametrize("made, opened", [(ntpath, posixpath), (posixpath, ntpath)], ids=["windows-to-posix",
                                                                                         "posix-to-windows"])
def test_paths_the_blend_keeps_resolve_on_the_other_os(made, opened):
    where = {ntpath: r"C:\Projects\spot", posixpath: "/mnt/projects/spot"}
    faceset = made.join(where[made], "facereplace", "Scene", "faceset_a-1a2b3c4d")
    stored = blend_relative(faceset, where[made], made)
    assert stored == "//facereplace/Scene/faceset_a-1a2b3c4d"
    assert blend_absolute(stored, where[opened], opened) == opened.join(where[opened], "facereplace", "Scene",
                                                                        "faceset_a-1a2b3c4d")
    above = blend_relative(made.join(made.dirname(where[made]), "plates", "sh010"), where[made], made)
    assert above == "//../plates/sh010"
    assert blend_absolute(above, where[opened], opened) == opened.join(opened.dirname(where[opened]), "plates", "sh010")


def test_backslashes_an_older_windows_blend_holds_resolve_on_posix():
    assert blend_absolute(r"//facereplace\Scene\model", "/mnt/spot", posixpath) == "/mnt/spot/facereplace/Scene/model"
    assert blend_absolute("/farm/share/model", "/mnt/spot", posixpath) == "/farm/share/model"  # absolute: kept


@pytest.mark.parametrize("paths, old, new, stored, moved", [
    (posixpath, "/mnt/spot", "/mnt/spot/v2", "//facereplace/Scene/model", "//../facereplace/Scene/model"),
    (posixpath, "/mnt/spot", "/home/me/elsewhere", "//facereplace/Scene/model", "//../../../mnt/spot/facereplace/Scene/model"),
    (ntpath, r"C:\Projects\spot", r"C:\Projects\spot v2", "//facereplace/Scene/model", "//../spot/facereplace/Scene/model"),
    (ntpath, r"C:\Projects\spot", r"D:\Elsewhere", "//facereplace/Scene/model", r"C:\Projects\spot\facereplace\Scene\model"),
    (posixpath, "/mnt/spot", "/mnt/other", "/farm/share/model", "/farm/share/model"),
], ids=["into-a-subfolder", "elsewhere", "windows", "windows-other-drive", "absolute-kept"])
def test_save_as_rebases_the_paths_beside_the_blend(paths, old, new, stored, moved):
    """Save As from `old` into `new`: a "//" path points at the same file from the new .blend (forward
    slashes, for every OS), or is absolute where no relative path leads there (another Windows drive)."""
    assert rebased(stored, old, new, paths) == moved
    assert blend_absolute(moved, new, paths) == blend_absolute(stored, old, paths)


@pytest.mark.parametrize("scene, folder", [("CON", "CON_"), ("aux", "aux_"), ("COM1", "COM1_"), ("LPT9", "LPT9_"),
                                           ("CONSOLE", "CONSOLE"), ("Scene", "Scene")])
def test_a_scene_named_as_a_windows_device_gets_a_folder_windows_can_make(scene, folder):
    assert not_reserved(scene) == folder


def test_scene_names_that_differ_get_folders_that_differ_on_every_os():
    """Names differing only in non-ASCII letters, space or underscore, or in a character Windows forbids,
    get distinct folder names that every OS can make; a plain name is its own folder."""
    names = ["Szene ü", "Szene ö", "Szene _", "Shot 1", "Shot_1", "a/b", "a_b", "a:b", "end.", "end_", "CON", "Scene"]
    folders = [folder_name(n) for n in names]
    assert len(set(folders)) == len(names)
    for folder in folders:
        assert not set(folder) & set('<>:"/\\|?*') and folder == folder.rstrip(" .") and not_reserved(folder) == folder
    assert folder_name("Scene") == "Scene" and folder_name("Szene ü") == "Szene ü"


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("name, cuda, mps, chosen", [
    ("auto", True, True, "cuda"), ("auto", False, True, "mps"), ("auto", False, False, "cpu"),
    ("mps", False, True, "mps"), ("cpu", True, True, "cpu"), ("cuda", True, False, "cuda"),
])
def test_auto_picks_cuda_then_mps_then_the_cpu(name, cuda, mps, chosen):
    assert device.device_type(name, cuda, mps) == chosen


def test_a_device_torch_does_not_see_is_one_clear_error():
    with pytest.raises(EngineError, match="no Apple MPS GPU"):
        device.device_type("mps", True, False)
    with pytest.raises(EngineError, match="no CUDA GPU"):
        device.device_type("cuda", False, True)


def test_pick_device_gives_mps_on_apple_silicon(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.pick_device("auto") == torch.device("mps")
    assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"  # set as the engine loads: missing ops run on the CPU


def test_the_device_menu_offers_mps_after_the_choices_a_blend_already_stores():
    from engine.schema import schema

    assert list(schema()["verbs"]["train"]["device"]["choices"]) == ["auto", "cuda", "cpu", "mps"]
    assert list(schema()["verbs"]["mask"]["device"]["choices"]) == ["auto", "cuda", "cpu", "mps"]


# ---------------------------------------------------------------- stop


def test_stop_asked_for_while_a_train_starts_ends_it_at_once(faceset_a, faceset_b, tmp_path):
    """Stop clicked between the add-on starting the run and the training loop (loading torch, the faces):
    the stop file is there when the run looks, and the run ends without training instead of ignoring it."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "stop").touch()
    done = subprocess.run([sys.executable, "-m", "engine", "train", "--a", faceset_a, "--b", faceset_b, "--model",
                           model, "--preset", "tiny", "--iterations", "100000", "--device", "cpu", "--events"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 130, done.stderr
    errors = [json.loads(line) for line in done.stdout.splitlines() if '"error"' in line]
    assert "before any training: nothing to save" in errors[0]["message"]
    assert "Traceback" not in done.stderr
    assert not (model / "stop").exists()  # served: the next run trains
    assert not list(model.glob("checkpoints/*.pt"))


# ---------------------------------------------------------------- the engine's set-up on Windows and macOS

# The OSes Set up Engine installs the engine on besides Linux, as pip names their wheels, each with the
# environment its requirement markers see and the GPU backends the add-on offers there (preferences.BACKENDS).
# torch 2.13 and dlib-bin have macOS wheels for macOS 14 and later only.
PLATFORMS = {
    "win_amd64": ({"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
                   "platform_machine": "AMD64"}, ["CUDA", "CPU"]),
    "macosx_14_0_arm64": ({"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix",
                           "platform_machine": "arm64"}, ["MPS", "CPU"]),
}
PYPI = "https://pypi.org/simple"
# Pinned requirements PyPI has as a source archive only: pure Python and data (dlib's model files), which pip
# installs on any OS without a compiler.
SOURCE_ONLY = {"face-recognition-models"}


def _resolve(platform: str, requirements: list[str], index: str) -> dict[str, dict]:
    """{name: pip's report of it} for what pip picks for `requirements` on `platform` under Python 3.11,
    from `index` (with PyPI beside it, as Set up Engine does), wheels only, each requirement alone
    (--no-deps: pip would judge the dependencies' markers by this machine, not `platform`). Only metadata
    is fetched. Skipped when the index cannot be reached."""
    import urllib.request

    try:
        urllib.request.urlopen(f"{index}/pip/", timeout=15).close()
    except OSError as e:
        pytest.skip(f"{index} cannot be reached: {e}")
    # this machine's pip settings (a local mirror, constraints) are not what a user's set-up sees
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull,
                                                                                "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    extra = ["--extra-index-url", PYPI] if index != PYPI else []
    with tempfile.TemporaryDirectory() as target:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                               "--only-binary=:all:", "--platform", platform, "--python-version", "3.11",
                               "--implementation", "cp", "--target", target, "--quiet", "--report", "-",
                               "--index-url", index, *extra, *requirements],
                              env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{platform}: {done.stderr[-2000:]}"
    report = json.loads(done.stdout[done.stdout.index("{"):])
    return {canonicalize_name(item["metadata"]["name"]): item for item in report["install"]}


def _wheel(item: dict) -> str:
    return item["download_info"]["url"].rsplit("/", 1)[-1]


def _on(platform: str, requirements: list[str], extra: str = "") -> list[str]:
    """The requirements whose markers hold on `platform` (with `extra` asked for), markers removed."""
    from packaging.requirements import Requirement

    environment = PLATFORMS[platform][0] | {"python_version": "3.11", "python_full_version": "3.11.0",
                                            "implementation_name": "cpython", "extra": extra}
    chosen = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            requirement.marker = None
            chosen.append(str(requirement))
    return chosen


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_pinned_requirement_has_a_wheel_for_the_platform(platform):
    """What Set up Engine installs after torch (engine-requirements.txt, from PyPI), and what their extras
    add there (portalocker[win32]: pywin32 on Windows)."""
    from packaging.requirements import Requirement

    from scripts.build_extension import engine_requirements

    pinned = [Requirement(line) for line in engine_requirements(ROOT).splitlines() if line.strip()]
    names = {canonicalize_name(r.name): r for r in pinned}
    picked = _resolve(platform, _on(platform, [str(r) for name, r in names.items() if name not in SOURCE_ONLY]), PYPI)
    assert set(picked) == set(names) - SOURCE_ONLY
    added = [line for name, r in names.items() for extra in r.extras
             for line in _on(platform, [d for d in picked[name]["metadata"].get("requires_dist", [])
                                        if "extra" in str(Requirement(d).marker)], extra)]
    if added:
        assert set(_resolve(platform, added, PYPI)) == {canonicalize_name(Requirement(line).name) for line in added}


@pytest.mark.parametrize("platform, backend", [(p, b) for p, (_, backends) in PLATFORMS.items() for b in backends])
def test_each_gpu_backends_torch_has_a_wheel_for_the_platform(platform, backend, tmp_path):
    """The torch Set up Engine installs first, from the wheel index of the GPU backend picked."""
    from addon.operators import torch_requirement
    from addon.preferences import BACKENDS
    from scripts.build_extension import engine_requirements

    requirements = tmp_path / "engine-requirements.txt"
    requirements.write_text(engine_requirements(ROOT))
    index = BACKENDS[backend][2] or PYPI
    wheel = _wheel(_resolve(platform, [torch_requirement(requirements)], index)["torch"])
    assert wheel.endswith(("win_amd64.whl",) if platform == "win_amd64" else ("arm64.whl", "universal2.whl")), wheel
