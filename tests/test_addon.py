"""The Blender extension in the real bpy module: built into its zip, installed from disk as a user would,
then driven through its own operators, headless, on shots made from the sample faces.

bpy runs in this process; the engine always runs as a subprocess of the add-on. Blender's user folders
point into a temporary folder (set before bpy is imported), so the real user configuration is never
touched. The tests share one swap (extract, a tiny train, convert) and run in file order.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.schema import schema
from scripts.build_extension import build, validate

_USER = tempfile.mkdtemp(prefix="facereplace-blender-user-")
os.environ["BLENDER_USER_RESOURCES"] = _USER  # Blender's config, scripts and extensions go here
_home = os.environ.get("HOME")
os.environ["HOME"] = _USER  # and whatever bpy creates under HOME as it starts
try:
    bpy = pytest.importorskip("bpy")
finally:
    if _home is None:
        del os.environ["HOME"]
    else:
        os.environ["HOME"] = _home

PACKAGE = "bl_ext.user_default.facereplace"
TRAIN_ITERATIONS = 20  # enough for a face that differs from the plate; the tiny preset on a CPU


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    """The zip, installed and enabled; yields the add-on's package module."""
    zip_path = build(dist=tmp_path_factory.mktemp("dist"))
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}
    return zip_path, importlib.import_module(PACKAGE)


@pytest.fixture(scope="module")
def addon(extension):
    return extension[1]


@pytest.fixture(scope="module")
def prefs(addon):
    preferences = bpy.context.preferences.addons[PACKAGE].preferences
    preferences.detector = "dlib"  # offline
    preferences.device = "cpu"
    return preferences


@pytest.fixture(scope="module")
def project(addon, prefs, shot_a, shot_b, tmp_path_factory) -> Path:
    """A saved .blend: B (Grace Hopper, mp4) as a movie strip starting on frame 10 with its first two
    frames trimmed off, A (astronaut, image sequence) as an image strip further along."""
    folder = tmp_path_factory.mktemp("project")
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 240, 100
    scene.render.fps = 24
    scene.view_settings.view_transform = "Standard"
    scene.render.dither_intensity = 0.0
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    strips = scene.sequence_editor_create().strips
    movie = strips.new_movie("Hopper", str(shot_b), 2, 10)
    movie.frame_offset_start = 2  # shows source frames 3..16 on timeline frames 12..25
    files = sorted(p.name for p in shot_a.iterdir())
    image = strips.new_image("Astronaut", str(shot_a / files[0]), 1, 40)
    for name in files[1:]:
        image.elements.append(name)
    settings = scene.facereplace
    settings.a.strip, settings.b.strip = "Astronaut", "Hopper"
    settings.face_size = 128
    settings.train.preset = "tiny"
    settings.train.iterations = TRAIN_ITERATIONS
    blend = folder / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    return blend


@pytest.fixture(scope="module")
def swapped(project):
    """The whole swap through the operators, headless: each blocks until its engine run is done."""
    for operator in (bpy.ops.facereplace.extract, bpy.ops.facereplace.train, bpy.ops.facereplace.convert):
        assert operator() == {"FINISHED"}


def _result_strips(scene, kind):
    return [s for s in scene.sequence_editor.strips if s.get("facereplace") == kind]


def _render(scene, frame: int, path: Path) -> np.ndarray:
    scene.frame_set(frame)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _video_frame(path: Path, number: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    for _ in range(number):
        ok, frame = capture.read()
        assert ok
    capture.release()
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- the package


def test_zip_is_an_extension_with_the_engine_inside(extension):
    zip_path, _ = extension
    assert zip_path.name == "facereplace-0.1.0.zip"
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        manifest = archive.read("blender_manifest.toml").decode()
        requirements = archive.read("engine-requirements.txt").decode()
    assert {"blender_manifest.toml", "__init__.py", "operators.py", "engine_schema.json", "engine/__main__.py",
            "engine/stages/extract.py", "engine/stages/train.py", "engine/stages/convert.py", "engine/base/frames.py"} <= names
    assert not any("__pycache__" in n or n.startswith(("tests/", "addon/")) for n in names)
    for line in ('schema_version = "1.0.0"', 'id = "facereplace"', 'type = "add-on"',
                 'blender_version_min = "4.2.0"', "[permissions]",
                 'platforms = ["windows-x64", "macos-arm64", "linux-x64"]'):
        assert line in manifest
    assert "torch==" in requirements and "bpy" not in requirements and "pytest" not in requirements
    validate(zip_path)  # Blender's own blender_ext.py validate, from the bpy module


def test_labels_use_blender_us_spelling(addon):
    settings = addon.properties.FaceReplaceConvert.bl_rna.properties
    assert settings["color"].name == "Color Match"
    texts = [settings["color"].name, *(i.description for i in settings["color"].enum_items)]
    for prop in (*addon.properties.FaceReplaceTrain.bl_rna.properties,
                 *addon.preferences.FaceReplacePreferences.bl_rna.properties):
        texts += [prop.name, prop.description, *(i.description for i in getattr(prop, "enum_items", ()))]
    assert not [t for t in texts if re.search(r"colour|recognis|behaviour|normalis", t, re.I)]


def test_installed_extension_registers_operators_panel_and_preferences(addon, prefs):
    assert addon.__file__.startswith(os.path.join(_USER, "extensions", "user_default", "facereplace"))
    for name in ("extract", "train", "convert", "add_strips", "cancel", "check_engine", "setup_engine"):
        assert getattr(bpy.ops.facereplace, name).get_rna_type().identifier.startswith("FACEREPLACE_OT_")
    panel = bpy.types.SEQUENCER_PT_facereplace
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("SEQUENCE_EDITOR", "UI", "Face Swap")
    assert hasattr(bpy.types.Scene, "facereplace")
    assert prefs.bl_rna.identifier == "FaceReplacePreferences" and prefs.work_folder == "//facereplace/"
    # Operators whose job runs on after they return carry no UNDO: the redo panel would rerun them.
    for name in ("extract", "train", "convert", "check_engine", "setup_engine", "download_weights"):
        assert "UNDO" not in getattr(bpy.types, f"FACEREPLACE_OT_{name}").bl_options
    assert "UNDO" in bpy.types.FACEREPLACE_OT_add_strips.bl_options


def test_engine_environment_lives_outside_blenders_version_folders(addon, prefs, tmp_path):
    """Set up Engine's venv goes where no Blender version owns it: the OS's user data folder, or the
    Engine Folder preference; the torch it installs comes from the backend's wheel index, pinned."""
    preferences = addon.preferences
    venv = preferences.managed_venv()
    assert venv.parent == preferences.user_data_folder() / "engine"
    assert not venv.is_relative_to(_USER) and str(bpy.app.version[0]) not in venv.parts
    prefs.engine_folder = str(tmp_path / "shared-engine")
    try:
        assert preferences.managed_venv() == tmp_path / "shared-engine" / "venv"
    finally:
        prefs.engine_folder = ""
    assert prefs.backend == preferences.detect_backend()
    requirements = tmp_path / "engine-requirements.txt"
    requirements.write_text("torch==2.13.0\nnumpy>=1.26\n")
    for backend, index in (("CUDA", "https://download.pytorch.org/whl/cu128"),
                           ("ROCM", "https://download.pytorch.org/whl/rocm6.4"),
                           ("CPU", "https://download.pytorch.org/whl/cpu"), ("MPS", None)):
        steps = addon.operators.setup_steps(tmp_path / "venv", requirements, backend)
        assert [s.label for s in steps][1:] == [f"Install torch ({prefs.bl_rna.properties['backend'].enum_items[backend].name})",
                                                 "Install packages", "Check engine"]
        torch = steps[1].argv
        assert "torch==2.13.0" in torch
        assert (torch[torch.index("--index-url") + 1] if index else "--index-url" not in torch) == (index or True)
        assert all(s.log == tmp_path / "setup.log" for s in steps)  # Open Log shows it


def test_check_engine_reports_versions(prefs):
    assert bpy.ops.facereplace.check_engine() == {"FINISHED"}
    assert prefs.engine_ok
    assert "Engine 0.1.0" in prefs.engine_status and "torch 2." in prefs.engine_status
    assert "no GPU: CPU only" in prefs.engine_status  # what it found: this machine has no GPU
    # ... and the engine's contract, which the menus are built from at the next start
    kept = Path(bpy.utils.extension_path_user(PACKAGE)) / "engine_schema.json"
    assert json.dumps(json.loads(kept.read_text())) == json.dumps(schema())  # in its order: the menus' order


def test_menus_offer_the_engines_choices_and_defaults(addon, prefs):
    """Every menu that sets an engine option lists the engine's own values (engine.schema), in its order,
    with its default; the preset's default is the engine's choice by device, the sizes model.SIZES."""
    answer = schema()

    def menu(group, name):
        prop = group.bl_rna.properties[name]
        return [item.identifier for item in prop.enum_items], prop.default

    for name in ("mask", "color", "format"):
        option = answer["verbs"]["convert"][name]
        assert menu(addon.properties.FaceReplaceConvert, name) == (list(option["choices"]), option["default"])
    for name in ("device", "detector"):
        option = answer["verbs"]["extract"][name]
        assert menu(addon.preferences.FaceReplacePreferences, name) == (list(option["choices"]), option["default"])
    assert menu(addon.properties.FaceReplaceTrain, "preset") == ([*answer["presets"], "AUTO"], "AUTO")
    # a .blend keeps a choice by its number: the presets' stay where they were before Auto existed
    numbers = {i.identifier: i.value for i in addon.properties.FaceReplaceTrain.bl_rna.properties["preset"].enum_items}
    assert (numbers["tiny"], numbers["fast"], numbers["quality"]) == (0, 1, 2)
    assert menu(addon.properties.FaceReplaceTrain, "size") == (["PRESET", *map(str, answer["sizes"])], "PRESET")


def _labels(drawn) -> str:
    """What the labels of a drawing say, as one text (a wrapped message reads as it did before wrapping)."""
    return " ".join(d[1] for d in drawn if d[0] == "label")


def test_the_engine_is_ready_once_it_ran_and_a_failed_check_says_why(project, prefs, addon, tmp_path):
    """One record of whether the engine works: a run that finishes proves it (no "not checked yet" after
    it), a failed check's reason replaces an earlier one, a later successful check clears it."""
    scene = bpy.context.scene
    prefs.engine_ok, prefs.engine_status, prefs.engine_error = False, "", ""
    assert ("label", "Engine not checked yet") in draw_panels(panels_only=True)
    finished = _fake_engine(tmp_path, 'print(json.dumps({"event": "done", "frames": 1}), flush=True)\n')
    addon.jobs.run("extract", scene, [addon.jobs.Step("Extract A", finished)], wait=True)
    drawn = draw_panels()
    assert ("label", "Engine not checked yet") not in drawn
    assert ("operator", "facereplace.setup_engine", None) not in draw_panels(panels_only=True)
    assert ("label", "The engine works: Check Engine shows its versions") in drawn  # the preferences
    try:
        for missing, earlier in (("/nonexistent/one/python", None), ("/nonexistent/two/python", "/nonexistent/one/python")):
            prefs.engine_python = missing
            with pytest.raises(RuntimeError, match="engine Python not found"):
                bpy.ops.facereplace.check_engine()
            drawn = draw_panels()
            print(f"\n--- the engine check failed ({missing}) ---\n" + dump(drawn))
            assert ("label", "The engine does not run: set it up") in drawn
            assert ("operator", "facereplace.setup_engine", None) in drawn
            assert missing in _labels(drawn) and (earlier is None or earlier not in _labels(drawn))
    finally:
        prefs.engine_python = ""
    assert bpy.ops.facereplace.check_engine() == {"FINISHED"}
    drawn = draw_panels()
    assert "/nonexistent" not in _labels(drawn) and "The engine does not run" not in _labels(drawn)
    assert prefs.engine_ok and prefs.engine_status.startswith("Engine 0.1.0")


def test_set_up_engine_is_off_offline_and_keeps_a_working_engine_until_its_own_works(project, prefs, addon,
                                                                                     tmp_path, monkeypatch):
    """Offline the button is disabled and the panel says why; online, a set-up that fails (here: before
    its download) leaves the working Engine Python as it was; only the made engine's passed check
    replaces it."""
    system = bpy.context.preferences.system
    prefs.engine_ok, prefs.engine_error = False, ""  # the panel then offers Set up Engine
    assert not bpy.app.online_access and not bpy.ops.facereplace.setup_engine.poll()
    drawn = draw_panels()
    assert _labels(drawn).count(addon.preferences.SETUP_OFFLINE) == 2  # the panel and the preferences
    prefs.engine_python = sys.executable  # a working engine
    monkeypatch.setattr(addon.operators, "engine_root", lambda: tmp_path)  # no requirements: it fails at once
    system.use_online_access = True
    try:
        assert bpy.ops.facereplace.setup_engine.poll()
        assert addon.preferences.SETUP_OFFLINE not in _labels(draw_panels())
        with pytest.raises(RuntimeError, match="engine-requirements.txt is missing"):
            bpy.ops.facereplace.setup_engine()
        assert prefs.engine_python == sys.executable
        info = _fake_engine(tmp_path, 'print(json.dumps({"event": "done", "engine": "0.1.0"}), flush=True)\n')
        requirements = tmp_path / "made" / "requirements.txt"
        requirements.parent.mkdir()
        requirements.write_text("torch==2.13.0\n")
        check = addon.operators.setup_steps(tmp_path / "made" / "venv", requirements)[-1]
        addon.jobs.run("setup", bpy.context.scene, [addon.jobs.Step(check.label, info, check.finish)], wait=True)
        assert prefs.engine_python == "" and prefs.engine_ok and prefs.engine_status.startswith("Engine 0.1.0")
    finally:
        system.use_online_access = False
        prefs.engine_python = ""
    assert bpy.ops.facereplace.check_engine() == {"FINISHED"}


def test_offline_blender_keeps_the_engine_off_the_network(project, prefs, addon, tmp_path):
    """Headless Blender has Online Access off: the engine gets --offline for a detector that would
    download, torch's cache is inside the extension's user folder, the weights folder preference is
    --fan-weights, and the download button is disabled."""
    scene = bpy.context.scene
    assert not bpy.app.online_access
    try:
        prefs.detector = "auto"
        step = addon.operators.extract_step(scene, "A")
        assert "--offline" in step.argv and step.argv[step.argv.index("--detector") + 1] == "auto"
        torch_home = Path(step.env["TORCH_HOME"])
        assert torch_home.is_relative_to(Path(_USER) / "extensions") and torch_home.is_dir()
        prefs.fan_weights = str(tmp_path)
        step = addon.operators.extract_step(scene, "A")
        assert step.argv[step.argv.index("--fan-weights") + 1] == str(tmp_path) and "--offline" in step.argv
        prefs.detector, prefs.fan_weights = "fan", ""
        with pytest.raises(addon.engine_client.ClientError, match="Online Access is off: set Detector Weights"):
            addon.operators.extract_step(scene, "A")
        assert not bpy.ops.facereplace.download_weights.poll()
    finally:
        prefs.detector, prefs.fan_weights = "dlib", ""
    assert "--offline" not in addon.operators.extract_step(scene, "A").argv  # dlib never downloads


def test_the_masks_panel_lists_the_timeline_frames_the_artist_labelled(project, addon):
    """B's strip shows its source frames 3..16 on timeline frames 12..25: labels of source frames 5 and 11
    (made on timeline frames 14 and 20) are listed as 14 and 20; a frame the strip no longer shows by its
    own number."""
    made = []
    for number in (5, 11, 40):
        mask = bpy.data.masks.new(f"FaceReplace B {number:06d}")
        mask[addon.masks.FRAME_KEY], mask[addon.masks.SIDE_KEY] = number, "B"
        made.append(mask)
    try:
        drawn = Drawn()
        addon.masks.SEQUENCER_PT_facereplace_masks.draw(type("Panel", (), {"layout": RecordingLayout(drawn)})(),
                                                         bpy.context)
        assert ("label", "Labeled: 3 frames (14, 20, shot frame 40)") in drawn
    finally:
        for mask in made:
            bpy.data.masks.remove(mask)


def test_only_bs_frame_rate_is_flagged(project):
    """A's frames are faces to learn from: its movie's rate does not matter; B's must match the scene."""
    scene = bpy.context.scene
    settings = scene.facereplace
    scene.render.fps = 30
    try:
        assert "Hopper is 24 fps but the scene 30 fps" in _labels(draw_panels(panels_only=True))
        settings.a.strip, settings.b.strip = "Hopper", "Astronaut"
        assert "fps" not in _labels(draw_panels(panels_only=True))
    finally:
        scene.render.fps = 24
        settings.a.strip, settings.b.strip = "Astronaut", "Hopper"


def test_the_report_box_keeps_each_result_whole(project, addon, tmp_path):
    """A job's results each start a line; a "; " inside one (a warning on its result) does not cut it."""
    done = _fake_engine(tmp_path, 'print(json.dumps({"event": "done"}), flush=True)\n')
    results = ["Extract A: faces in 16 of 16 frames; none missing", "Extract B: faces in 14 of 14 frames"]
    steps = [addon.jobs.Step(f"Extract {side}", done, lambda _scene, _summary, r=r: r) for side, r in zip("AB", results, strict=True)]
    addon.jobs.run("extract", bpy.context.scene, steps, wait=True)
    drawn = draw_panels(panels_only=True)
    assert ("label", results[0]) in drawn and ("label", results[1]) in drawn


def test_a_new_models_panel_shows_none_of_the_old_models_figures(project, addon, tmp_path):
    """While New Model trains into its own folder, the Train panel shows that folder and its own figures
    (none yet), not the scene's earlier model's path, iterations, losses and preview."""
    scene = bpy.context.scene
    train = scene.facereplace.train
    preview = tmp_path / "preview.png"
    cv2.imwrite(str(preview), np.zeros((8, 8, 3), np.uint8))
    train.model, train.iteration, train.loss_a, train.preview = "//facereplace/model", 300, 0.25, str(preview)
    into = tmp_path / "model_2"
    waits = _fake_engine(tmp_path, f"""
from pathlib import Path
while not Path({str(into / "stop")!r}).exists():
    time.sleep(0.05)
""")
    try:
        addon.jobs.run("train", scene, [addon.jobs.Step("Train", waits, stop_file=into / "stop")], wait=False)
        drawn = draw_panels(panels_only=True)
        print("\n--- panel: a new model starts training ---\n" + dump(drawn))
        assert ("label", "New model: model_2") in drawn and ("prop", "model") not in drawn
        assert ("label", "Iterations: 0") in drawn and ("label", "Loss A 0.0000   B 0.0000") in drawn
        assert not [d for d in drawn if d[0] == "icon"]  # no preview yet
    finally:
        addon.jobs.cancel()
        _poll_until(addon, lambda: addon.jobs.active() is None)
        train.model, train.iteration, train.loss_a, train.preview = "", 0, 0.0, ""
    drawn = draw_panels(panels_only=True)
    assert ("prop", "model") in drawn


def test_scenes_whose_names_differ_only_in_umlauts_or_spaces_get_their_own_work_folders(project, addon):
    """ "Szene ü" and "Szene ö" (once both "Szene__"), "Shot 1" and "Shot_1": a work folder each. A folder
    made under the old naming still serves its scene while no other scene of the file shares that name."""
    made = [bpy.data.scenes.new(name) for name in ("Szene ü", "Szene ö", "Shot 1", "Shot_1")]
    try:
        folders = [addon.operators.work_folder(scene) for scene in made]
        assert len(set(folders)) == 4 and folders[0].name == "Szene ü"
        legacy = addon.operators.work_folder(bpy.context.scene).parent / "Szene__"
        legacy.mkdir(parents=True)
        assert addon.operators.work_folder(made[0]) == folders[0]  # "Szene ö" would share it
        bpy.data.scenes.remove(made.pop(1))
        assert addon.operators.work_folder(made[0]) == legacy  # alone: its existing folder keeps working
        legacy.rmdir()
    finally:
        for scene in made:
            bpy.data.scenes.remove(scene)


def test_every_path_the_add_on_keeps_takes_blend_relative_paths(addon):
    """Blender 4.5+ warns when "//" goes into a path property that does not declare it takes one."""
    groups = [addon.properties.FaceReplaceShot, addon.properties.FaceReplaceTrain, addon.properties.FaceReplaceConvert,
              addon.masks.FaceReplaceMasks, addon.preferences.FaceReplacePreferences]
    rnas = [g.bl_rna for g in groups] + [getattr(bpy.ops.facereplace, name).get_rna_type()
                                         for name in dir(bpy.ops.facereplace)]
    paths = [(rna.identifier, p.identifier, p.is_path_supports_blend_relative) for rna in rnas for p in rna.properties
             if getattr(p, "subtype", "") in {"FILE_PATH", "DIR_PATH"}]
    assert ("FaceReplaceMasks", "model", True) in paths and len(paths) >= 10
    assert [path for path in paths if not path[2]] == []


def test_strips_hand_their_colour_space_to_the_engine_and_results_carry_the_layers(project, addon, tmp_path):
    """Extract and convert get the strip's colour space and Blender's own OCIO config; the result strips
    are tagged with the space the manifest says the layers were written in, the matte as data."""
    scene = bpy.context.scene
    plate = scene.sequence_editor.strips["Hopper"]
    config = addon.strips.ocio_config()
    assert Path(config).is_file() and Path(config).name == "config.ocio"
    argv = addon.operators.extract_step(scene, "B").argv
    assert argv[argv.index("--colorspace") + 1] == "sRGB" and argv[argv.index("--ocio-config") + 1] == config
    plate.colorspace_settings.name = "ACEScg"
    try:
        shot = addon.strips.shot_of(scene, scene.facereplace.b, "B")
        assert addon.strips.colour_args(shot) == ["--colorspace", "ACEScg", "--ocio-config", config]
        output = tmp_path / "output"
        for kind, channels in (("face", 4), ("matte", 1)):
            (output / kind).mkdir(parents=True)
            for number in shot.numbers:
                cv2.imwrite(str(output / kind / f"{kind}_{number:06d}.png"), np.zeros((240, 320, channels), np.uint16))
        (output / "manifest.json").write_text(json.dumps({"alpha": "straight", "colorspace": "Linear Rec.2020",
                                                          "ocio_config": config, "files": {
                                                              "face": "face/face_%06d.png",
                                                              "matte": "matte/matte_%06d.png"}}))
        added = addon.strips.add_result_strips(scene, shot, output)
        assert added["face"].colorspace_settings.name == "Linear Rec.2020"
        assert added["matte"].colorspace_settings.name == "Non-Color"
    finally:
        addon.strips.remove_result_strips(scene, plate.get("facereplace_id") or plate.name)
        plate.colorspace_settings.name = "sRGB"


def test_engine_runs_from_blender_share_the_cpu(project, prefs, addon):
    env = addon.operators.run_env()
    assert "FACEREPLACE_THREADS" not in env
    # Headless: no window to leave a core for, and the run owns the machine, so its threads spin.
    assert "FACEREPLACE_RESERVE_CORES" not in env and "OMP_WAIT_POLICY" not in env
    assert Path(env["FACEREPLACE_RUNTIME_DIR"]).is_relative_to(Path(_USER) / "extensions")  # runs share the cores
    prefs.cpu_threads = 3
    try:
        assert addon.operators.run_env()["FACEREPLACE_THREADS"] == "3"
        prefs.cpu_threads = 0
        env = addon.operators.run_env(interactive=True)  # as from Blender's window
        assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["FACEREPLACE_RESERVE_CORES"] == "1"
        prefs.use_passive_wait = False
        assert "OMP_WAIT_POLICY" not in addon.operators.run_env(interactive=True)
    finally:
        prefs.cpu_threads, prefs.use_passive_wait = 0, True


def test_missing_engine_python_gives_a_clear_report(project, prefs):
    prefs.engine_python = "/nonexistent/venv/bin/python"
    try:
        with pytest.raises(RuntimeError, match="engine Python not found: /nonexistent/venv/bin/python.*Set up engine"):
            bpy.ops.facereplace.extract(side="A")
    finally:
        prefs.engine_python = ""
    assert bpy.context.scene.facereplace.a.faceset == ""  # nothing recorded


def test_engine_error_becomes_the_operator_report(project, addon, tmp_path):
    """The engine refuses a folder of frames of two sizes; its one-line reason is the operator's error."""
    cv2.imwrite(str(tmp_path / "frame_0001.png"), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "frame_0002.png"), np.zeros((40, 64, 3), np.uint8))
    scene = bpy.context.scene
    shot = scene.facereplace.a
    shot.source, shot.folder = "FOLDER", str(tmp_path)
    reason = "Extract A failed: frame 2 .* all frames of a shot must be one size"
    try:
        with pytest.raises(RuntimeError, match=reason):
            bpy.ops.facereplace.extract(side="A")
        # The same in the UI's asynchronous mode: the job ends, and the panel shows the engine's reason.
        addon.jobs.run("extract", scene, [addon.operators.extract_step(scene, "A")], wait=False)
        _poll_until(addon, lambda: addon.jobs.active() is None)
        level, message = addon.jobs.last_report
        assert level == "ERROR" and re.match(reason, message)
        # ... wrapped to the panel's width (60 characters headless), every word of it
        lines = addon.text.wrap(message, addon.text.HEADLESS_CHARS)
        assert len(lines) > 1 and " ".join(lines) == message and max(map(len, lines)) <= addon.text.HEADLESS_CHARS
        drawn = draw_panels()
        assert all(("label", line) in drawn for line in lines)
    finally:
        shot.source = "STRIP"
    with pytest.raises(RuntimeError, match="extract A first"):
        bpy.ops.facereplace.train()


def _fake_engine(tmp_path: Path, body: str) -> list[str]:
    """A stand-in engine: a script that prints what a broken or stranger's engine could print. An alarm
    ends it if nobody does, so a regression fails instead of hanging."""
    script = tmp_path / "fake_engine.py"
    script.write_text("import json, signal, sys, time\nsignal.alarm(60)\n" + body)
    return [sys.executable, str(script)]


def test_events_with_wrong_field_types_never_break_the_job(project, addon, tmp_path):
    argv = _fake_engine(tmp_path, """
for event in [{"event": "progress", "done": "x", "total": [1], "loss_a": "low", "it_per_s": {}, "eta_s": None},
              {"event": "progress", "done": 1e400, "total": 0, "phase": 7, "iteration": "3"},
              {"event": "progress", "done": 10**400, "total": -10**400, "iteration": 10**400},
              {"event": "preview", "path": 5}, {"event": "warning", "message": ["a"]}, {"event": 3},
              {"event": "output", "line": None}, {"event": "done", "frames": "many"}]:
    print(json.dumps(event), flush=True)
""")
    scene = bpy.context.scene
    assert addon.jobs.run("check", scene, [addon.jobs.Step("Odd engine", argv)], wait=True) == ""
    addon.jobs.run("check", scene, [addon.jobs.Step("Odd engine", argv)], wait=False)
    job = addon.jobs.active()
    _poll_until(addon, lambda: addon.jobs.active() is None or job.live)
    draw_panels()  # the live figures the panel formats are numbers, or absent
    _poll_until(addon, lambda: addon.jobs.active() is None)
    assert addon.jobs.last_report[0] == "INFO"
    # A "done" event that lacks what the stage records fails the step with a reason, not a traceback.
    step = addon.jobs.Step("Odd engine", argv, finish=lambda scene, summary: str(summary["frames"] + 1))
    with pytest.raises(addon.jobs.JobFailed, match="Odd engine: the engine's summary lacks what the add-on needs"):
        addon.jobs.run("check", scene, [step], wait=True)


def test_a_failed_headless_job_stops_its_engine(project, addon, tmp_path, monkeypatch):
    """An engine that reports its error but does not exit (a hung peer process) is stopped, and the
    job fails with the engine's message."""
    terminated = tmp_path / "terminated"
    argv = _fake_engine(tmp_path, f"""
def on_term(*_):
    open({str(terminated)!r}, "w").close()
    sys.exit(1)
signal.signal(signal.SIGTERM, on_term)
print(json.dumps({{"event": "error", "message": "out of GPU memory"}}), flush=True)
while True:
    time.sleep(1)
""")
    monkeypatch.setattr(addon.jobs, "EXIT_AFTER_ERROR_S", 0.5)
    with pytest.raises(addon.jobs.JobFailed, match="Hung engine failed: out of GPU memory"):
        addon.jobs.run("check", bpy.context.scene, [addon.jobs.Step("Hung engine", argv)], wait=True)
    assert terminated.exists()


def test_convert_output_can_be_set_before_the_first_convert(project):
    assert bpy.context.scene.facereplace.convert.output == ""
    assert ("prop", "output") in draw_panels(panels_only=True)


# ---------------------------------------------------------------- an artist's habits

# A scene of its own (the shared one keeps its swap), with what extract, train and convert leave faked on
# disk: the add-on's checks read only these files.
HABITS_FRAMES = range(1, 17)  # B's frames: the whole mp4


@pytest.fixture
def habits(project, addon, shot_a, shot_b):
    """The scene "Habits": B (the mp4) as "Plate" on channel 2 from frame 10, A (the image sequence)."""
    scene = bpy.data.scenes.new("Habits")
    strips = scene.sequence_editor_create().strips
    strips.new_movie("Plate", str(shot_b), 2, 10)
    files = sorted(p.name for p in shot_a.iterdir())
    image = strips.new_image("Face", str(shot_a / files[0]), 1, 40)
    for name in files[1:]:
        image.elements.append(name)
    scene.facereplace.a.strip, scene.facereplace.b.strip = "Face", "Plate"
    try:
        with bpy.context.temp_override(scene=scene):
            yield scene
    finally:
        bpy.data.scenes.remove(scene)


def _fake_work(addon, scene) -> Path:
    """What extract A and B, train and convert leave in the scene's work folder, recorded in the scene as
    they record it: facesets (alignments.json), a model (model.json), an output (manifest, face layers
    and mattes of B's frames). Returns the work folder."""
    operators = addon.operators
    work = operators.work_folder(scene)
    for side in ("A", "B"):
        faceset = work / f"faceset_{side.lower()}-faked"
        faceset.mkdir(parents=True, exist_ok=True)
        (faceset / "alignments.json").write_text("{}")
        shot = getattr(scene.facereplace, side.lower())
        shot.faceset, shot.signature = operators.stored(faceset), operators.digest(operators.shot_args(scene, side)[1])
    (work / "model").mkdir(exist_ok=True)
    (work / "model" / "model.json").write_text("{}")
    scene.facereplace.train.model = operators.stored(work / "model")
    output = work / "output"
    for kind in ("face", "matte"):
        (output / kind).mkdir(parents=True, exist_ok=True)
        for n in HABITS_FRAMES:
            cv2.imwrite(str(output / kind / f"{kind}_{n:06d}.png"), np.full((240, 320, 4), n, np.uint8))
    (output / "manifest.json").write_text(json.dumps(
        {"alpha": "straight", "files": {"face": "face/face_%06d.png", "matte": "matte/matte_%06d.png"}}))
    scene.facereplace.convert.output = operators.stored(output)
    return work


def _panel_labels() -> list[str]:
    return [d[1] for d in draw_panels(panels_only=True) if d[0] == "label"]


def test_save_as_into_another_folder_keeps_finding_the_work(habits, addon, tmp_path):
    """Save As into another folder: the new .blend finds the facesets, model and output beside the old
    one (Convert's and Train's checks pass), as Blender re-points its own strips; Save Copy leaves the
    open file's paths alone; saving back brings the "//" paths back as they were."""
    work = _fake_work(addon, habits)
    settings = habits.facereplace
    original, kept = bpy.data.filepath, settings.b.faceset
    assert kept == "//facereplace/Habits/faceset_b-faked"
    try:
        (tmp_path / "other folder").mkdir()
        (tmp_path / "copy").mkdir()
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "other folder" / "shot v2.blend"))
        assert addon.operators._faceset(habits, "B") == work / "faceset_b-faked"
        assert addon.operators.train_step(habits, resume=True).argv  # finds both facesets and the model
        assert addon.operators.convert_step(habits, None).argv  # and the output
        assert settings.b.faceset.startswith("//../") and "\\" not in settings.b.faceset  # relative, slashes
        before = settings.b.faceset
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "copy" / "shot copy.blend"), copy=True)
        assert settings.b.faceset == before  # the open file stayed where it was
    finally:
        bpy.ops.wm.save_as_mainfile(filepath=original)
    assert settings.b.faceset == kept and settings.train.model == "//facereplace/Habits/model"


def test_a_moved_plate_says_its_results_are_out_of_step_and_puts_them_back(habits, addon):
    """B slid 12 frames later after its result strips were added: the panel says the face is out of step
    and offers the fix, which puts the face and matte back over B's frames; a trim is caught too."""
    _fake_work(addon, habits)
    assert bpy.ops.facereplace.add_strips() == {"FINISHED"}
    plate = habits.sequence_editor.strips["Plate"]
    assert not any("out of step" in label for label in _panel_labels())
    plate.frame_start += 12
    drawn = draw_panels(panels_only=True)
    assert ("label", "Plate face is out of step with Plate: the plate moved 12 frames later") in drawn
    assert ("operator", "facereplace.add_strips", "Put Back in Step") in drawn
    assert bpy.ops.facereplace.add_strips() == {"FINISHED"}
    for kind in ("face", "matte"):
        [layer] = _result_strips(habits, kind)
        assert (layer.frame_final_start, layer.frame_final_end) == (22, 38) == (plate.frame_final_start,
                                                                              plate.frame_final_end)
    assert not any("out of step" in label for label in _panel_labels())
    plate.frame_offset_start = 3  # trimmed: the face would show frames the plate no longer does
    assert "Plate face is out of step with Plate: the plate was slipped or trimmed" in _panel_labels()
    assert bpy.ops.facereplace.add_strips() == {"FINISHED"}
    [face] = _result_strips(habits, "face")
    assert face.frame_final_start == 25 and face.elements[0].filename == "face_000004.png"
    assert not any("out of step" in label for label in _panel_labels())


def test_a_and_b_on_one_strip_are_refused(habits):
    """A set to B's own strip: the panel says so, and Extract and Train refuse with that line, unless each
    picks a different person of the shot."""
    settings = habits.facereplace
    settings.a.strip = "Plate"
    refusal = "A and B are both Plate: set A to a shot of the face to put in (or Pick Person in each)"
    assert refusal in _panel_labels()
    for operator in (bpy.ops.facereplace.extract, bpy.ops.facereplace.train):
        assert not operator.poll()
        with pytest.raises(RuntimeError, match=re.escape(refusal)):
            operator()
    settings.a.use_reference = settings.b.use_reference = True
    settings.b.reference_face = 1  # the second person in the same frame
    assert refusal not in _panel_labels() and bpy.ops.facereplace.extract.poll()


def test_a_deleted_b_leaves_train_and_says_what_is_missing(habits, addon, shot_b):
    """B renamed, then deleted: its faceset is intact, so Train goes on; Convert refuses in one line that
    names what is missing (never the strip's old name); B picked again, the results are added again in
    place of those left over the deleted plate."""
    _fake_work(addon, habits)
    assert bpy.ops.facereplace.add_strips() == {"FINISHED"}
    strips = habits.sequence_editor.strips
    strips["Plate"].name = "Plate graded"
    strips.remove(strips["Plate graded"])
    missing = "shot B: its strip was deleted from the sequencer; pick B's shot again"
    assert addon.operators.stale_message(habits, "B") == ""
    assert addon.operators.train_step(habits, resume=True).argv  # both facesets and the model are there
    assert bpy.ops.facereplace.train.poll()
    labels = _panel_labels()
    assert missing in labels and not any("Plate" in label and "no strip" in label for label in labels)
    for operator in (bpy.ops.facereplace.convert, bpy.ops.facereplace.add_strips):
        with pytest.raises(RuntimeError, match=re.escape(missing)):
            operator()
    strips.new_movie("Plate again", str(shot_b), 2, 10)
    habits.facereplace.b.strip = "Plate again"
    assert addon.operators.stale_message(habits, "B") == ""  # the same frames of the same file
    assert bpy.ops.facereplace.add_strips() == {"FINISHED"}
    assert [s.name for s in _result_strips(habits, "face")] == ["Plate again face"]
    assert len(_result_strips(habits, "matte")) == 1


# ---------------------------------------------------------------- the swap


def test_extract_maps_strips_to_the_shots_frames(swapped):
    scene = bpy.context.scene
    settings = scene.facereplace
    assert (settings.a.frames, settings.a.frames_with_faces) == (16, 16)
    assert (settings.b.frames, settings.b.frames_with_faces) == (14, 14)  # two frames trimmed off
    assert settings.b.faceset.startswith("//facereplace/Scene/faceset_b-")  # beside the .blend, relative
    faceset = Path(bpy.path.abspath(settings.b.faceset))
    alignments = json.loads((faceset / "alignments.json").read_text())
    assert [f["number"] for f in alignments["frames"]] == list(range(3, 17))
    assert (faceset / "contact_sheet.png").is_file()


def test_train_records_the_model(swapped):
    scene = bpy.context.scene
    train = scene.facereplace.train
    model = Path(bpy.path.abspath(train.model))
    assert (model / "model.json").is_file()
    assert train.iteration == TRAIN_ITERATIONS
    assert 0 < train.loss_a < 2 and 0 < train.loss_b < 2
    assert Path(bpy.path.abspath(train.preview)).is_file()


def test_train_panel_passes_architecture_balance_and_the_late_phases(swapped, addon):
    """The Train panel's architecture, late phase, learning-rate dropout and adversarial weight reach the
    engine as its own options, parsed by the engine's parser; left at their defaults, none is passed."""
    from engine.verbs import build_parser

    scene = bpy.context.scene
    train = scene.facereplace.train

    def parsed():
        argv = addon.operators.train_step(scene, resume=False).argv
        return build_parser("train").parse_args(argv[argv.index("train"):])

    plain = parsed()
    assert (plain.architecture, plain.schedule_no_warp_after, plain.schedule_lr_dropout, plain.adversarial_weight,
            plain.balance_expressions) == (None, None, None, None, None)
    train.architecture, train.late_phase, train.lr_dropout, train.gan_weight = "liae", 0.8, 0.3, 0.1
    train.balance_expressions = True
    try:
        given = parsed()
    finally:
        train.architecture, train.late_phase, train.lr_dropout, train.gan_weight = "PRESET", 0.0, 1.0, 0.0
        train.balance_expressions = False
    assert given.architecture == "liae" and given.balance_expressions is True
    assert (given.schedule_no_warp_after, given.schedule_lr_dropout, given.adversarial_weight) == (0.8, 0.3, 0.1)


def test_train_panel_runs_the_enhancer_after_the_model_when_asked(swapped, addon):
    """Enhancer Iterations adds `engine enhance` on faceset A into the model folder train writes, its options
    parsed by the engine's parser; at 0, the default, train runs alone (and so does the farm's train task,
    which runs the same operator)."""
    from engine.verbs import build_parser

    scene = bpy.context.scene
    train = scene.facereplace.train
    assert [step.label for step in addon.operators.train_steps(scene, resume=True)] == ["Train"]
    train.enhancer_iterations = 300
    try:
        steps = addon.operators.train_steps(scene, resume=True)
    finally:
        train.enhancer_iterations = 0
    assert [step.label for step in steps] == ["Train", "Enhance"]
    argv = steps[1].argv
    given = build_parser("enhance").parse_args(argv[argv.index("enhance"):])
    model = Path(bpy.path.abspath(train.model)).resolve()
    assert Path(given.model).resolve() == model and given.iterations == 300 and given.resume is False
    assert Path(given.faceset_a).resolve() == Path(bpy.path.abspath(scene.facereplace.a.faceset)).resolve()
    assert steps[1].stop_file.resolve() == model / "enhancer" / "stop"


def test_a_new_model_starts_from_the_base_model_the_panel_names(swapped, addon):
    """Base Model (stored relative to the .blend, as the panel's folders are) becomes --init-from, made
    absolute, for a new model; a resumed model keeps its own weights."""
    from engine.verbs import build_parser

    scene = bpy.context.scene
    train = scene.facereplace.train
    base = Path(bpy.path.abspath(train.model)).resolve()  # any model may be a base
    train.base_model = bpy.path.relpath(str(base))
    try:
        new, resumed = (addon.operators.train_steps(scene, resume=flag)[0].argv for flag in (False, True))
    finally:
        train.base_model = ""
    given = build_parser("train").parse_args(new[new.index("train"):])
    assert Path(given.init_from) == base and Path(given.model).resolve() != base
    assert "--init-from" not in resumed


def test_result_strips_sit_above_the_target_frame_aligned(swapped):
    scene = bpy.context.scene
    target = scene.sequence_editor.strips["Hopper"]
    [face], [matte] = _result_strips(scene, "face"), _result_strips(scene, "matte")
    output = Path(bpy.path.abspath(scene.facereplace.convert.output))
    assert face.channel == target.channel + 1 and matte.channel == target.channel + 2
    for strip, prefix in ((face, "face"), (matte, "matte")):
        assert (strip.frame_final_start, strip.frame_final_end) == (target.frame_final_start, target.frame_final_end)
        assert strip.frame_start == 12
        assert [e.filename for e in strip.elements] == [f"{prefix}_{n:06d}.png" for n in range(3, 17)]
        assert Path(bpy.path.abspath(strip.directory)) == output / prefix
        assert strip.directory.startswith("//facereplace/")  # relative, like the scene's paths: the project moves
    assert face.blend_type == "ALPHA_OVER" and not face.mute
    assert [(m.type, m.name) for m in face.modifiers] == [("COMPOSITOR", "FaceReplace Blend")]
    assert matte.mute


def test_render_changes_the_face_and_nothing_else(swapped, tmp_path, shot_b):
    scene = bpy.context.scene
    face = _result_strips(scene, "face")[0]
    frame = 15  # timeline 15 shows source frame 15 - 10 + 1 = 6
    swapped_render = _render(scene, frame, tmp_path / "swapped.png")
    face.mute = True
    try:
        plate_render = _render(scene, frame, tmp_path / "plate.png")
    finally:
        face.mute = False
    output = Path(bpy.path.abspath(scene.facereplace.convert.output))
    matte = cv2.imread(str(output / "matte" / "matte_000006.png"), cv2.IMREAD_UNCHANGED) / 65535.0
    outside = cv2.dilate((matte > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    inside = matte > 0.9
    assert inside.sum() > 500 and outside.sum() > 0.3 * matte.size
    diff = np.abs(swapped_render.astype(int) - plate_render.astype(int)).max(axis=2)
    assert diff[outside].max() <= 1
    assert diff[inside].mean() > 10
    # The plate under the layer is the source frame the layer was made from.
    errors = [np.abs(plate_render.astype(int) - _video_frame(shot_b, n).astype(int)).mean() for n in (5, 6, 7)]
    assert errors[1] < 3 and errors[1] < min(errors[0], errors[2])


def test_undo_takes_the_strips_back(swapped):
    scene = bpy.context.scene
    for strip in _result_strips(scene, "face") + _result_strips(scene, "matte"):
        scene.sequence_editor.strips.remove(strip)
    bpy.ops.ed.undo_push(message="strips removed")  # headless Blender starts its undo system on the first push
    # Called as a button calls it: with an undo push ("undo=True"), which scripts' calls skip.
    assert bpy.ops.facereplace.add_strips("EXEC_DEFAULT", True) == {"FINISHED"}
    assert len(_result_strips(bpy.context.scene, "face")) == 1
    bpy.ops.ed.undo()
    assert _result_strips(bpy.context.scene, "face") == []
    bpy.ops.ed.redo()
    assert len(_result_strips(bpy.context.scene, "face")) == 1


def test_running_again_replaces_rather_than_stacks(swapped):
    scene = bpy.context.scene
    before = sorted(s.name for s in scene.sequence_editor.strips)
    assert bpy.ops.facereplace.convert() == {"FINISHED"}  # every frame already there: it only re-adds
    assert bpy.ops.facereplace.add_strips() == {"FINISHED"}
    assert sorted(s.name for s in scene.sequence_editor.strips) == before
    assert len(_result_strips(scene, "face")) == 1 and len(_result_strips(scene, "matte")) == 1


def test_blend_values_survive_adding_the_strips_again_and_bake_into_convert(swapped, addon, tmp_path):
    scene = bpy.context.scene
    blend = addon.blend
    [face] = _result_strips(scene, "face")
    blend.set_values(face, {"Erode": 2, "Gain": (1.2, 1.2, 1.2, 1.0)})
    assert bpy.ops.facereplace.add_strips() == {"FINISHED"}
    [face] = _result_strips(scene, "face")
    assert blend.values(face)["Erode"] == 2 and blend.values(face)["Gain"] == pytest.approx((1.2, 1.2, 1.2, 1.0))
    convert = scene.facereplace.convert
    erode = convert.erode
    assert bpy.ops.facereplace.bake_blend() == {"FINISHED"}
    assert convert.erode == erode + 2 and blend.values(face)["Erode"] == 0
    assert blend.values(face)["Gain"] == pytest.approx((1.2, 1.2, 1.2, 1.0))  # no convert setting: stays
    convert.erode = erode
    blend.set_values(face, blend.NEUTRAL)
    (tmp_path / "manifest.json").write_text(json.dumps({"alpha": "premultiplied", "layers": ["face", "matte", "hull"],
                                                        "files": {"face": "face/face_%06d.exr"}}))
    with pytest.raises(addon.engine_client.ClientError, match="multilayer EXRs, for compositing applications"):
        addon.strips.read_manifest(tmp_path)


def test_a_changed_shot_is_stale_until_extracted_again(swapped, addon):
    """B switched to another strip: the panel says so, and Train and Convert refuse, rather than train on
    (or convert with) the old shot's faceset."""
    settings = bpy.context.scene.facereplace
    try:
        settings.b.strip = "Astronaut"
        drawn = draw_panels(panels_only=True)
        print("\n--- panel: a stale shot ---\n" + dump(drawn))
        assert ("label", "B changed since extraction: Extract B") in drawn
        assert ("label", "B: faces in 14 of 14 frames") in drawn  # the faceset's own figures, flagged above
        with pytest.raises(RuntimeError, match="B changed since extraction: Extract B"):
            bpy.ops.facereplace.convert()
        settings.b.strip = "Hopper"
        settings.b.use_custom_range, settings.b.frame_first, settings.b.frame_last = True, 12, 20
        assert addon.operators.stale_message(bpy.context.scene, "B") == "B changed since extraction: Extract B"
        for operator in (bpy.ops.facereplace.train, bpy.ops.facereplace.convert):
            with pytest.raises(RuntimeError, match="B changed since extraction: Extract B"):
                operator()
    finally:
        settings.b.strip, settings.b.use_custom_range = "Hopper", False
    # the shot is as extracted again (the report box still tells of the refusals above, as it should)
    assert [addon.operators.stale_message(bpy.context.scene, side) for side in "AB"] == ["", ""]


def test_renaming_a_strip_keeps_its_shot_and_result_strips(swapped):
    scene = bpy.context.scene
    strips = scene.sequence_editor.strips
    strips["Hopper"].name = "Hopper graded"
    try:
        assert scene.facereplace.b.strip == "Hopper graded"  # the same strip, by the id stored on it
        assert strips["Hopper graded"]["facereplace_id"] == scene.facereplace.b.strip_id
        assert bpy.ops.facereplace.convert() == {"FINISHED"}  # nothing to redo; the strips are replaced
        assert len(_result_strips(scene, "face")) == 1 and len(_result_strips(scene, "matte")) == 1
        assert _result_strips(scene, "face")[0].name == "Hopper graded face"
    finally:
        strips["Hopper graded"].name = "Hopper"
    assert scene.facereplace.b.strip == "Hopper"
    assert bpy.ops.facereplace.add_strips() == {"FINISHED"}  # replaced again, under the strip's name
    assert [s.name for s in _result_strips(scene, "face")] == ["Hopper face"]


def test_flamencos_frame_chunks_are_read_as_they_are(addon):
    assert addon.strips.parse_ranges("1..3,5,6,9-10") == [(1, 3), (5, 5), (6, 6), (9, 10)]


def test_a_strip_at_another_frame_rate_is_flagged(swapped):
    scene = bpy.context.scene
    scene.render.fps = 30
    try:
        labels = [d[1] for d in draw_panels(panels_only=True) if d[0] == "label"]
        assert "Hopper is 24 fps but the scene 30 fps: set the scene's frame rate to match" in labels
    finally:
        scene.render.fps = 24
    assert not any("fps" in d[1] for d in draw_panels(panels_only=True) if d[0] == "label")


def test_an_absolute_work_folder_stays_absolute(swapped, prefs, addon):
    """Beside the .blend or not, paths under an absolute Work Folder are stored absolute (a farm's
    packer copies the .blend elsewhere); under a "//" one, relative."""
    beside = Path(bpy.data.filepath).parent / "shared"
    prefs.work_folder = str(beside) + "/"
    try:
        assert addon.operators.stored(beside / "Scene" / "model") == str(beside / "Scene" / "model")
    finally:
        prefs.work_folder = "//facereplace/"
    assert addon.operators.stored(beside / "Scene" / "model") == "//shared/Scene/model"


def test_preview_is_labelled_and_opens_in_the_image_editor(swapped):
    drawn = draw_panels(panels_only=True)
    train = drawn[drawn.index(("panel", "SEQUENCER_PT_facereplace_train")):drawn.index(("panel", "SEQUENCER_PT_facereplace_convert"))]
    print("\n--- panel: Train, with the labelled preview ---\n" + dump(train))
    labels = [d[1] for d in train if d[0] == "label"]
    start = labels.index("A")
    assert labels[start:start + 6] == ["A", "A→A", "A→B", "B", "B→B", "B→A"]
    preview = bpy.path.abspath(bpy.context.scene.facereplace.train.preview)
    assert ("set", "facereplace.open_image", "filepath", preview) in train
    assert bpy.ops.facereplace.open_image(filepath=preview) == {"FINISHED"}
    assert any(bpy.path.abspath(i.filepath) == preview for i in bpy.data.images)


def test_work_folder_log_and_contact_sheets_are_reachable(swapped, addon):
    drawn = draw_panels(panels_only=True)
    work = addon.operators.work_folder(bpy.context.scene)
    assert ("operator", "wm.path_open", "Open Work Folder") in drawn
    assert ("set", "wm.path_open", "filepath", str(work)) in drawn
    assert ("operator", "wm.path_open", "Open Log") in drawn
    log = next(Path(d[3]) for d in drawn if d[:3] == ("set", "wm.path_open", "filepath") and d[3].endswith(".log"))
    assert log.is_file() and log.is_relative_to(work)
    # The contact sheets sit in their own folded sub-panel, out of the Extract panel's way.
    sheets = bpy.types.SEQUENCER_PT_facereplace_contact_sheets
    assert sheets.bl_parent_id == "SEQUENCER_PT_facereplace_extract" and "DEFAULT_CLOSED" in sheets.bl_options
    extract = drawn[drawn.index(("panel", "SEQUENCER_PT_facereplace_extract")):
                    drawn.index(("panel", "SEQUENCER_PT_facereplace_contact_sheets"))]
    assert not any(d[0] == "icon" for d in extract)


def test_farm_chunk_in_a_fresh_headless_blender(swapped, tmp_path):
    """A farm task: a new process opens the .blend, converts timeline frames 14-16 (source 5-7), exits 0;
    a range outside the target exits non-zero with the reason."""
    scene = bpy.context.scene
    bpy.ops.wm.save_mainfile()
    output = Path(bpy.path.abspath(scene.facereplace.convert.output))
    chunk = [output / "face" / f"face_{n:06d}.png" for n in (5, 6, 7)]
    before = [p.read_bytes() for p in chunk]
    for p in chunk:
        p.unlink()
    script = ("import sys, bpy, addon_utils; bpy.ops.wm.open_mainfile(filepath=sys.argv[1]); "
              f"addon_utils.enable({PACKAGE!r}, default_set=True); "
              "bpy.ops.facereplace.convert(frames=sys.argv[2])")
    env = {**os.environ, "BLENDER_USER_RESOURCES": _USER}

    def farm(frames):
        return subprocess.run([sys.executable, "-c", script, bpy.data.filepath, frames], env=env,
                              capture_output=True, text=True, timeout=300)

    done = farm("14-16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.read_bytes() for p in chunk] == before  # the same bytes as the full run
    assert "FaceReplace Convert" in done.stdout
    failed = farm("500-600")
    assert failed.returncode != 0
    assert "frames 500-600 are outside Hopper" in failed.stderr


# ---------------------------------------------------------------- stopping


class RecordingLayout:
    """A stand-in for Blender's UILayout, which headless Blender has none of: it records what a panel
    draws, and checks every property and operator it names against the real RNA, as drawing would."""

    def __init__(self, drawn: list):
        self.drawn = drawn
        self.icons: dict[int, str] = getattr(drawn, "icons", {})
        self.active = self.enabled = True

    def row(self, **_options):
        return self

    column = box = row

    def prop(self, data, name, **_options):
        assert name in data.bl_rna.properties, f"{data.bl_rna.identifier} has no property {name}"
        self.drawn.append(("prop", name))

    def prop_search(self, data, name, search_data, search_name, **_options):
        assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties
        self.drawn.append(("prop", name))

    def operator(self, idname, text=None, **_options):
        module, name = idname.split(".")
        rna = getattr(getattr(bpy.ops, module), name).get_rna_type()
        self.drawn.append(("operator", idname, text))
        drawn = self.drawn

        class Properties:
            def __setattr__(self, key, value):
                assert key in rna.properties, f"{idname} has no property {key}"
                drawn.append(("set", idname, key, value))

        return Properties()

    def label(self, text="", icon="NONE", **_options):
        self.drawn.append(("label", text))
        if icon != "NONE":
            self.icons[len(self.drawn) - 1] = icon

    def progress(self, factor=0.0, text="", **_options):
        assert 0.0 <= factor <= 1.0
        self.drawn.append(("progress", text))

    def template_icon(self, icon_value=0, **_options):
        self.drawn.append(("icon", icon_value))

    def separator(self, **_options):
        pass


class Drawn(list):
    """What panels drew, in order, with ("panel", name) before each panel's items; `icons` holds the
    icon of a label, by its index."""

    def __init__(self):
        super().__init__()
        self.icons: dict[int, str] = {}


PANELS = ("SEQUENCER_PT_facereplace", "SEQUENCER_PT_facereplace_shots", "SEQUENCER_PT_facereplace_extract",
          "SEQUENCER_PT_facereplace_contact_sheets", "SEQUENCER_PT_facereplace_train",
          "SEQUENCER_PT_facereplace_convert", "SEQUENCER_PT_facereplace_blend")


def dump(drawn: list) -> str:
    """The drawn layout as text, one item a line: for reading what a panel shows."""
    lines = []
    icons = getattr(drawn, "icons", {})
    for i, item in enumerate(drawn):
        if item[0] == "panel":
            lines.append(f"[{item[1]}]")
        elif item[0] == "set":
            lines[-1] += f"  ({item[2]}={item[3]!r})"
        else:
            icon = f" <{icons[i]}>" if i in icons else ""
            lines.append(f"  {item[0]}: {' '.join(str(x) for x in item[1:] if x is not None)}{icon}")
    return "\n".join(lines)


def draw_panels(panels_only: bool = False) -> list:
    """Everything the Face Swap tab and (unless `panels_only`) the preferences draw now, in order."""
    drawn = Drawn()
    for name in PANELS:
        drawn.append(("panel", name))
        getattr(bpy.types, name).draw(type("Panel", (), {"layout": RecordingLayout(drawn)})(), bpy.context)
    if panels_only:
        return drawn
    preferences = bpy.context.preferences.addons[PACKAGE].preferences

    class PreferencesPanel:
        layout = RecordingLayout(drawn)

        def __getattr__(self, name):
            return getattr(preferences, name)

    type(preferences).draw(PreferencesPanel(), bpy.context)
    return drawn


def test_panels_draw_the_swap_state(swapped):
    drawn = draw_panels()
    labels = [d[1] for d in drawn if d[0] == "label"]
    assert "A: faces in 16 of 16 frames" in labels and "B: faces in 14 of 14 frames" in labels
    assert f"Iterations: {TRAIN_ITERATIONS}" in labels
    assert "14 frames converted, faces in 14" in labels
    assert ("operator", "facereplace.train", "Resume") in drawn and ("set", "facereplace.train", "resume", True) in drawn
    assert ("operator", "facereplace.convert", None) in drawn and ("operator", "facereplace.add_strips", None) in drawn
    assert any(label.startswith("Hopper face: channel 3") for label in labels)
    assert any(label.startswith("Engine 0.1.0") for label in labels)  # Check engine's result, in the preferences
    icons = [d[1] for d in drawn if d[0] == "icon"]
    assert len(icons) == 3  # the contact sheets of A and B, the training preview (ids are 0 headless)


def _poll_until(addon, condition, timeout=240.0):
    """Drive the add-on's timer by hand (headless Blender runs no timers) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        addon.jobs.poll()
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_cancel_train_saves_and_leaves_a_consistent_state(swapped, addon):
    """Stop (the panel's button) during training in the UI's asynchronous mode: the engine saves and
    exits, the scene records the iteration the checkpoint holds, and training resumes from there."""
    scene = bpy.context.scene
    scene.facereplace.train.iterations = 10_000
    model = Path(bpy.path.abspath(scene.facereplace.train.model))
    addon.jobs.run("train", scene, [addon.operators.train_step(scene, resume=True)], wait=False)
    job = addon.jobs.active()
    _poll_until(addon, lambda: job.live.get("iteration", 0) > TRAIN_ITERATIONS)
    # While it trains, the panel shows it: a progress bar, the live figures, the stop button.
    drawn = draw_panels()
    assert any(d[0] == "progress" and d[1].startswith("Train: ") and "it/s" in d[1] for d in drawn)
    assert ("operator", "facereplace.cancel", "Stop and Save") in drawn
    assert any(d[0] == "label" and d[1].startswith(f"Iterations: {job.live['iteration']}") for d in drawn)
    assert bpy.ops.facereplace.cancel() == {"FINISHED"}
    _poll_until(addon, lambda: addon.jobs.active() is None)
    assert job.process.returncode is not None
    assert not (model / "stop").exists()
    state = json.loads((model / "model.json").read_text())
    train = bpy.context.scene.facereplace.train
    assert train.iteration == state["iteration"] > TRAIN_ITERATIONS
    level, message = addon.jobs.last_report
    assert level == "INFO" and f"Train: {train.iteration} iterations" in message
    assert not list(model.rglob("*.tmp*"))
    # The results came in from the timer, after the operator: they have an undo step of their own.
    bpy.ops.ed.undo()
    assert bpy.context.scene.facereplace.train.iteration == TRAIN_ITERATIONS
    bpy.ops.ed.redo()
    assert bpy.context.scene.facereplace.train.iteration == state["iteration"]


def test_cancel_extract_records_nothing_and_a_rerun_resumes(swapped, addon):
    scene = bpy.context.scene
    shot = scene.facereplace.a
    faceset = shot.faceset
    kept = (shot.faceset, shot.signature, shot.frames, shot.frames_with_faces)
    shot.use_custom_range = True
    shot.frame_first, shot.frame_last = 41, 52  # a new range: a new faceset
    try:
        addon.jobs.run("extract", scene, [addon.operators.extract_step(scene, "A")], wait=False)
        _poll_until(addon, lambda: addon.jobs.active().live.get("done", 0) >= 1)
        bpy.ops.facereplace.cancel()
        _poll_until(addon, lambda: addon.jobs.active() is None)
        assert scene.facereplace.a.faceset == faceset
        assert bpy.ops.facereplace.extract(side="A") == {"FINISHED"}
        assert scene.facereplace.a.faceset != faceset and scene.facereplace.a.frames == 12
    finally:
        shot.use_custom_range = False
        shot.faceset, shot.signature, shot.frames, shot.frames_with_faces = kept  # the whole shot's faceset


def test_farm_train_task_resumes_its_model_folder(swapped, addon, tmp_path):
    """The FaceReplace Train job's task: train(model=FOLDER) starts a model there, and the same task run
    again (requeued, or with more iterations) resumes it; the report says why training stopped."""
    train = bpy.context.scene.facereplace.train
    kept = (train.model, train.iteration, train.loss_a, train.loss_b, train.preview)
    model = tmp_path / "farm_model"
    try:
        for iterations in (3, 5):
            assert bpy.ops.facereplace.train(model=str(model), iterations=iterations) == {"FINISHED"}
            assert json.loads((model / "model.json").read_text())["iteration"] == iterations
            level, message = addon.jobs.last_report
            assert level == "INFO" and message.startswith(f"Train: {iterations} iterations (reached its iterations)")
    finally:
        train.model, train.iteration, train.loss_a, train.loss_b, train.preview = kept


def test_set_up_engine_makes_a_venv_and_names_what_it_lacks(addon, project, tmp_path):
    """Headless Blender is offline unless told otherwise, so the button refuses; the steps themselves,
    with nothing to install, make the venv, run pip, and the engine check names the missing packages."""
    assert not bpy.ops.facereplace.setup_engine.poll()
    requirements = tmp_path / "engine-requirements.txt"
    requirements.write_text("torch==2.13.0\n")
    venv = tmp_path / "engine-venv"
    steps = addon.operators.setup_steps(venv, requirements, "CPU")
    assert [s.label for s in steps] == ["Make venv", "Install torch (CPU)", "Install packages", "Check engine"]
    with pytest.raises(addon.jobs.JobFailed, match=r"Check engine failed: the engine Python .*engine-venv.* lacks "
                       r"the engine's packages \(no module (cv2|numpy|torch)\).*Set up engine"):
        addon.jobs.run("setup", bpy.context.scene, [steps[0], steps[-1]], wait=True)  # no network: skip pip
    assert (venv / "bin" / "python").is_file()


# ---------------------------------------------------------------- the file and the add-on's end


def test_reopening_the_blend_restores_the_panel_state(swapped):
    scene = bpy.context.scene
    settings = scene.facereplace
    saved = {"a": settings.a.strip, "b": settings.b.strip, "faceset": settings.b.faceset,
             "model": settings.train.model, "iteration": settings.train.iteration, "output": settings.convert.output}
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=bpy.data.filepath)
    settings = bpy.context.scene.facereplace
    assert {"a": settings.a.strip, "b": settings.b.strip, "faceset": settings.b.faceset,
            "model": settings.train.model, "iteration": settings.train.iteration,
            "output": settings.convert.output} == saved
    assert settings.target_frames == "12-25"
    assert len(_result_strips(bpy.context.scene, "face")) == 1


def test_unregister_leaves_nothing_behind(addon):
    assert bpy.ops.preferences.addon_disable(module=PACKAGE) == {"FINISHED"}
    assert PACKAGE not in bpy.context.preferences.addons
    assert not hasattr(bpy.types.Scene, "facereplace")
    for name in ("FACEREPLACE_OT_extract", "SEQUENCER_PT_facereplace", "FaceReplacePreferences", "FaceReplaceShot"):
        assert not hasattr(bpy.types, name)
    assert not any(getattr(f, "__module__", "").startswith(PACKAGE) for f in bpy.app.handlers.load_pre)
    draw_funcs = getattr(bpy.types.STATUSBAR_HT_header.draw, "_draw_funcs", [])
    assert not any(getattr(f, "__module__", "").startswith(PACKAGE) for f in draw_funcs)
    assert not bpy.app.timers.is_registered(addon.jobs.poll)
