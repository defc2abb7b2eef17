"""The add-on's bpy-free core (addon/core/) under plain pytest: the argument lists it builds are what the
engine's own parser reads, it reads convert's manifest as the engine writes and checks it, and it reads
each verb's `done` event as the engine sends it. No Blender here: the core must not need it."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from addon.core import done, engine_args, panel_state, results
from addon.core.engine_args import ConvertPanel, TrainPanel
from addon.engine_client import ClientError, engine_command, parse_line
from engine.__main__ import _parse
from engine.base import colorspace, loop
from engine.base.events import EngineError
from engine.folders import output
from engine.verbs import Parser, add_verb_arguments

ROOT = Path(__file__).resolve().parents[1]


def _engine_reads(verb: str, args: list):
    """`args` as the engine's command line reads them (its own checks included): option -> value."""
    argv = [verb, *map(str, args)]
    _parse(argv)  # the engine's whole front door: refusals of empty and non-finite values too
    parser = Parser(prog=verb)
    add_verb_arguments(parser, verb)
    namespace = parser.parse_args(argv[1:])
    dests = {option: action.dest for action in parser._actions for option in action.option_strings}
    return lambda option: getattr(namespace, dests[option])


def test_the_core_imports_without_blender():
    """In a fresh Python (this session may have loaded bpy for other tests): the whole core, and no bpy."""
    code = ("import sys; from addon.core import done, engine_args, panel_state, results; "
            "assert 'bpy' not in sys.modules, 'the core imported bpy'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_train_arguments_are_what_the_engine_reads(tmp_path):
    panel = TrainPanel(iterations=300, preset="tiny", size="128", architecture="df", late_phase=0.8,
                       lr_dropout=0.3, gan_weight=0.1, time_budget=60.0,
                       panel_options=("--balance-expressions",), base_model=str(tmp_path / "base"))
    model = engine_args.new_model_folder(tmp_path)
    read = _engine_reads("train", engine_args.train_args(tmp_path / "a", tmp_path / "b", model, panel, resume=False))
    assert (read("--a"), read("--b"), read("--model")) == (str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "model"))
    assert (read("--iterations"), read("--preset"), read("--size"), read("--architecture")) == (300, "tiny", 128, "df")
    assert (read("--no-warp-after"), read("--lr-dropout"), read("--gan-weight")) == (0.8, 0.3, 0.1)
    assert read("--balance-expressions") and read("--time-budget") == 60.0 and not read("--resume")
    assert read("--init-from") == str(tmp_path / "base")
    # A resumed model keeps its preset, size, architecture and weights: none is sent; the operator's iterations win.
    auto = TrainPanel(300, "AUTO", "PRESET", "PRESET", 0.0, 0.3, 0.0, 0.0)
    args = engine_args.train_args(tmp_path / "a", tmp_path / "b", model, panel, resume=True, iterations=50)
    read = _engine_reads("train", args)
    assert read("--resume") and read("--iterations") == 50 and "--preset" not in args and "--size" not in args
    assert "--init-from" not in args
    read = _engine_reads("train", engine_args.train_args(tmp_path / "a", tmp_path / "b", model, auto, resume=False))
    assert read("--preset") is None and read("--gan-weight") is None and read("--time-budget") is None


def test_a_new_model_never_takes_an_earlier_ones_folder(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model_2").mkdir()
    assert engine_args.new_model_folder(tmp_path) == tmp_path / "model_3"


def test_extract_arguments_are_what_the_engine_reads(tmp_path):
    colour = ["--colorspace", "ACEScg", "--ocio-config", str(tmp_path / "config.ocio")]
    args = engine_args.shot_args(tmp_path / "shot.mp4", "3-9", 128, colour, reference=(4, 1))
    weights = str(tmp_path / "weights")
    read = _engine_reads("extract", [*args, *engine_args.detector_args("fan", weights, online=False),
                                     "--output", tmp_path / "faceset"])
    assert (read("--frames"), read("--size"), read("--reference-face")) == ("3-9", 128, "4:1")
    assert (read("--colorspace"), read("--detector"), read("--fan-weights"), read("--offline")) == (
        "ACEScg", "fan", weights, True)
    assert engine_args.detector_args("dlib", "", online=False) == ["--detector", "dlib"]  # dlib never downloads
    assert "--offline" not in engine_args.detector_args("fan", "", online=True)
    with pytest.raises(ClientError, match="Online Access is off: set Detector Weights"):
        engine_args.detector_args("fan", "", online=False)


def test_convert_arguments_are_what_the_engine_reads(tmp_path):
    panel = ConvertPanel(mask="extended", erode=2, color="rct", format="exr", detail=0.5, edge_match=0.25,
                         use_auto_feather=False, feather=7, plate_mouth=True)
    args = engine_args.convert_args(tmp_path / "shot.mp4", "3-9", [], tmp_path / "faceset", tmp_path / "model",
                                    tmp_path / "output", panel)
    read = _engine_reads("convert", args)
    assert read("--alignments") == str(tmp_path / "faceset" / "alignments.json")
    assert (read("--mask"), read("--erode"), read("--color"), read("--format"), read("--feather"), read("--frames")) == (
        "extended", 2, "rct", "exr", 7, "3-9")
    assert (read("--detail"), read("--edge-match"), read("--plate-mouth")) == (0.5, 0.25, True)
    auto = ConvertPanel("extended", 2, "rct", "exr", 0.0, 0.0, use_auto_feather=True, feather=7)
    args = engine_args.convert_args(tmp_path, "1-2", [], tmp_path, tmp_path, tmp_path, auto)
    assert "--feather" not in args and "--plate-mouth" not in args


def test_enhance_and_mask_arguments_resume_what_the_folder_holds(tmp_path):
    model = tmp_path / "model"
    read = _engine_reads("enhance", engine_args.enhance_args(model, tmp_path / "faceset", 40))
    assert (read("--model"), read("--faceset-a"), read("--iterations"), read("--resume")) == (
        str(model), str(tmp_path / "faceset"), 40, False)
    engine_args.enhancer_folder(model).mkdir(parents=True)
    (engine_args.enhancer_folder(model) / "model.json").write_text("{}")
    assert _engine_reads("enhance", engine_args.enhance_args(model, tmp_path / "faceset", 40))("--resume")

    masks = tmp_path / "mask_model"
    train = _parse(["mask", *map(str, engine_args.mask_train_args(tmp_path / "faceset", tmp_path / "labels", masks, 5))])
    assert (train.action, train.labels, train.iterations, train.resume) == ("train", str(tmp_path / "labels"), 5, False)
    (masks / "checkpoints").mkdir(parents=True)
    (masks / "checkpoints" / "model_00000005.pt").write_bytes(b"")
    assert _parse(["mask", *map(str, engine_args.mask_train_args(tmp_path / "faceset", tmp_path / "labels", masks, 9))]).resume
    apply = _parse(["mask", *map(str, engine_args.mask_apply_args(tmp_path / "faceset", masks))])
    assert (apply.action, apply.model) == ("apply", str(masks))
    assert engine_args.stop_file(masks) == masks / "stop"


def _converted(folder: Path, numbers: list[int], config: str = "") -> Path:
    """An output folder as convert leaves it: its manifest by the engine's own writer, and PNG layers."""
    files = output.file_patterns(".png", write_frames=False, write_patches=False)
    source = SimpleNamespace(path=folder / "shot.mp4", kind="video", size=(320, 240), fps=24.0, linear=False,
                             numbers=numbers)
    space = colorspace.Space("Linear Rec.2020", config)
    output.write_manifest(folder, {"alpha": "straight", "settings": {"feather": 6.0}, "model_hash": "0"}, files, source,
                          folder / "alignments.json", folder / "model", 64, numbers, print,
                          colorspace.ShotColour(space, space))
    for kind in ("face", "matte"):
        for n in numbers:
            path = folder / (files[kind] % n)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    return folder


def test_the_result_strips_are_planned_from_the_manifest_convert_writes(tmp_path):
    config = str(tmp_path / "config.ocio")
    folder = _converted(tmp_path, [3, 4, 5], config)
    plan = results.plan_results(folder, (3, 4, 5), config)
    assert [p.name for p in plan.faces] == ["face_000003.png", "face_000004.png", "face_000005.png"]
    assert [p.parent.name for p in plan.mattes] == ["matte"] * 3
    assert (plan.alpha_mode, plan.colorspace, plan.feather) == ("STRAIGHT", "Linear Rec.2020", 6.0)
    # Layers in another OCIO config than Blender's: its names mean nothing there, Blender's defaults hold.
    assert results.plan_results(folder, (3, 4, 5), "").colorspace == ""
    (folder / "matte" / "matte_000004.png").unlink()
    with pytest.raises(ClientError, match=r"lacks 1 of the shot's frames \(4\): convert them first"):
        results.plan_results(folder, (3, 4, 5), config)


def test_the_add_on_and_the_engine_refuse_a_manifest_alike(tmp_path):
    folder = _converted(tmp_path, [1])
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["face"] = "face/face.png"  # no frame number in it
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError) as engine_refusal:
        output.read_manifest(folder)
    with pytest.raises(ClientError) as add_on_refusal:
        results.read_manifest(folder, "")
    assert str(add_on_refusal.value) == f"{engine_refusal.value}: convert the shot again"
    (folder / "manifest.json").write_text(json.dumps({"alpha": "premultiplied", "layers": ["face", "matte"],
                                                      "files": {"face": "face/face_%06d.exr"}}))
    with pytest.raises(ClientError, match="multilayer EXRs, for compositing applications"):
        results.read_manifest(folder, "")


def test_result_strips_take_the_lowest_free_channels():
    occupied = [(2, 1, 50), (3, 40, 60)]  # (channel, first frame, end frame)
    assert results.free_channel(occupied, 3, 2, 1, 30) == 3  # channel 3 is busy only from frame 40
    assert results.free_channel(occupied, 2, 2, 30, 45) == 4
    with pytest.raises(ClientError, match="no 2 free channels"):
        results.free_channel([(c, 1, 10) for c in range(1, 129)], 1, 2, 1, 5)


def test_the_typed_done_records_read_keys_the_engine_publishes():
    """Train's and enhance's records read only what their done events carry, by the engine's own schema."""
    from dataclasses import fields

    from engine.schema import schema

    published = schema()["done"]
    for verb, record in (("train", done.TrainDone), ("enhance", done.EnhanceDone)):
        assert {f.name for f in fields(record)} <= set(published[verb]), verb


def test_done_events_read_as_the_engine_sends_them(shot_a, tmp_path):
    from engine.stages.extract import extract

    summary = json.loads(json.dumps(extract(shot_a, tmp_path / "faceset", detector="dlib", size=128, frames="1-3")))
    record = done.read(done.ExtractDone, summary)
    assert (record.frames, record.frames_with_faces) == (3, summary["frames_with_faces"]) and record.frames_with_faces
    assert list(record.frames_without_faces) == summary["frames_without_faces"]
    # A run that saved no loss yet sends null: the record holds the default, not None.
    assert done.read(done.TrainDone, {"iterations": 3, "loss_a": None, "stopped": "stop file"}) == done.TrainDone(
        iterations=3, stopped="stop file")


def test_every_stop_reason_has_the_engines_words():
    for reason, words in loop.STOP_REASONS.items():
        assert done.stop_words(reason) == f" ({words})"
    assert done.stop_words(None) == "" and done.stop_words("a future reason") == " (a future reason)"


def test_the_panels_show_the_running_train_and_the_labels():
    assert panel_state.training_into(Path("/w/model_2"), Path("/w/model")) == "model_2"
    assert panel_state.training_into(Path("/w/model"), Path("/w/model")) == ""
    lines = panel_state.train_figures({"iteration": 7, "loss_a": 0.5, "it_per_s": 2.0, "eta_s": 65},
                                      {"iteration": 3, "loss_a": 0.9, "loss_b": 0.8})
    assert lines == ["Iterations: 7", "Loss A 0.5000   B 0.8000", "2.00 it/s, ETA 1m 05s"]
    labelled = [str(n) for n in range(10)]
    assert panel_state.labelled_line(labelled) == "Labeled: 10 frames (0, 1, 2, 3, 4, 5, 6, 7...)"
    assert panel_state.labelled_line([]) == "Labeled: 0 frames"


def test_a_done_event_of_the_wrong_shape_is_refused_by_name():
    """A stranger's engine: a field of another type fails the step with its name, never lands in the scene."""
    with pytest.raises(TypeError, match="frames is 'many', not int"):
        done.read(done.ConvertDone, {"frames": "many"})
    with pytest.raises(TypeError, match="frames is True"):
        done.read(done.ConvertDone, {"frames": True})
    assert done.read(done.EnhanceDone, {"loss": 1}).loss == 1.0  # JSON's 1 for 1.0


def test_check_engine_says_what_the_engine_found():
    info = {"engine": "0.1.0", "python": "3.11.7", "torch": "2.5.1", "cuda": True, "cuda_version": None,
            "hip_version": "6.2", "mps": False, "gpus": ["MI300X", "MI300X"], "cpu_threads": 8}
    assert done.read(done.InfoDone, info).describe() == "Engine 0.1.0, Python 3.11.7, torch 2.5.1, ROCm 6.2: MI300X, MI300X"
    cpu = done.read(done.InfoDone, {**info, "cuda": False, "gpus": []})
    assert cpu.describe().endswith("torch 2.5.1, no GPU: CPU only") and cpu.schema == {}


def _run(verb: str, args: list) -> dict:
    """The engine run the add-on starts (engine_client's command from the core's arguments), to its end:
    its `done` event, as the add-on parses it."""
    argv = engine_command(sys.executable, verb, args, "cpu")
    ran = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return next(e for e in map(parse_line, ran.stdout.splitlines()) if e["event"] == "done")


def test_the_engine_runs_the_cores_arguments_and_ends_in_what_the_core_reads(faceset_a, faceset_b, shot_b, tmp_path):
    """Train and convert as the add-on starts them: their done events read into the typed records, and
    the output folder convert wrote plans the result strips."""
    model = engine_args.new_model_folder(tmp_path)
    panel = TrainPanel(iterations=2, preset="tiny", size="PRESET", architecture="PRESET", late_phase=0.0,
                       lr_dropout=0.3, gan_weight=0.0, time_budget=0.0)
    trained = done.read(done.TrainDone, _run("train", engine_args.train_args(faceset_a, faceset_b, model, panel, False)))
    assert (trained.iterations, trained.stopped, Path(trained.preview).parent) == (2, "iterations", model)
    assert done.stop_words(trained.stopped) == " (reached its iterations)" and engine_args.has_model(model)
    settings = ConvertPanel(mask="extended", erode=0, color="rct", format="png16", detail=0.0, edge_match=0.0,
                            use_auto_feather=True, feather=8)
    output_folder = tmp_path / "output"
    converted = done.read(done.ConvertDone, _run("convert", engine_args.convert_args(
        shot_b, "1-2", [], faceset_b, model, output_folder, settings)))
    assert converted.frames == 2 and converted.frames_with_faces == 2
    plan = results.plan_results(output_folder, (1, 2), "")
    assert [p.name for p in plan.mattes] == ["matte_000001.png", "matte_000002.png"] and plan.alpha_mode == "STRAIGHT"
    assert all(p.is_file() for p in plan.faces)
