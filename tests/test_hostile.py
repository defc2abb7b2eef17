"""Files from strangers: facesets, models and output folders someone else made, and runs that share a
folder. Nothing outside the folder named is touched, one run writes a folder, numbers that are not numbers
stop the run, memory stays bounded, every failure is one `error:` line, outputs keep the umask's mode,
stdout carries only events, temp files of a killed write are swept, and a shot and its alignments match."""

import contextlib
import errno
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.__main__ import main
from engine.base import colorspace, media
from engine.base.checkpoints import checkpoint_paths
from engine.base.events import EngineError, Events
from engine.folders.faceset import Alignments
from engine.networks.model import load_model
from engine.stages import occlusion
from engine.stages.convert import convert
from engine.stages.extract import extract
from engine.stages.train import train

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv) -> tuple[int, str, str]:
    """`python -m engine ARGV` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(code: int, err: str, *words: str) -> str:
    """The one `error:` line of a run that must have failed with exit status 2, holding `words`."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def first_face(data: dict) -> dict:
    return next(f for f in data["frames"] if f["faces"])["faces"][0]


# ---------------------------------------------------------------- 1. paths stay inside their folder


def test_curate_apply_never_touches_a_file_outside_the_faceset(faceset_a, tmp_path, capsys):
    victim = tmp_path / "victim" / "photo.png"
    victim.parent.mkdir()
    folder = copy(faceset_a, tmp_path / "work" / "faceset")
    shutil.copy(folder / "faces" / "000001_0.png", victim)
    edit_json(folder / "alignments.json", lambda d: first_face(d).update(image="../../victim/photo.png"))
    code, _, err = run(capsys, "curate", folder, "--apply")
    refused(code, err, "frame 1 image", "../../victim/photo.png", "outside")
    assert victim.is_file() and not (folder / "aside").exists()


def test_curate_restore_never_moves_a_file_outside_the_faceset(faceset_a, tmp_path, capsys):
    folder = copy(faceset_a, tmp_path / "work" / "faceset")
    (tmp_path / "work" / "x.txt").write_text("keep me here")
    media.write_json(folder / "aside" / "moved.json", {"format": "facereplace.aside", "version": 1, "faces": [
        {"frame": 1, "image": "../../x.txt", "files": ["../../x.txt"], "reasons": ["blurred"]}]})
    code, _, err = run(capsys, "curate", folder, "--restore")
    refused(code, err, "entry 0", "../../x.txt")
    assert (tmp_path / "work" / "x.txt").read_text() == "keep me here" and not (tmp_path / "x.txt").exists()


def test_train_and_evaluate_refuse_paths_leading_out(faceset_a, faceset_b, shot_b, tmp_path, capsys):
    absolute = copy(faceset_a, tmp_path / "absolute")
    edit_json(absolute / "alignments.json", lambda d: first_face(d).update(image=str(faceset_b / "faces" / "000001_0.png")))
    code, _, err = run(capsys, "train", "--a", absolute, "--b", faceset_b, "--model", tmp_path / "m1", "--preset", "tiny")
    refused(code, err, "frame 1 image", "outside")

    linked = copy(faceset_a, tmp_path / "linked")
    (linked / "faces" / "000001_0.png").unlink()
    (linked / "faces" / "000001_0.png").symlink_to(faceset_b / "faces" / "000001_0.png")
    code, _, err = run(capsys, "train", "--a", linked, "--b", faceset_b, "--model", tmp_path / "m2", "--preset", "tiny")
    refused(code, err, "frame 1 image", "through a link")
    assert not list((tmp_path / "m1").glob("checkpoints/*")) and not list((tmp_path / "m2").glob("checkpoints/*"))

    layers = tmp_path / "layers"
    media.write_json(layers / "manifest.json", {"format": "facereplace.convert", "version": 1, "source": str(shot_b.resolve()),
                                                "files": {"face": "../elsewhere/face_%06d.png"}})
    code, _, err = run(capsys, "evaluate", shot_b, "--alignments", faceset_b, "--layers", layers, "--source", faceset_a)
    refused(code, err, "files.face", "outside")


# ---------------------------------------------------------------- 3. one writer per folder, 10 and 12


def paused_train(faceset_a, faceset_b, model: Path, pause: str, *extra) -> subprocess.Popen:
    """A train run in its own process, paused (by media's test hook) in the save of the checkpoint named
    `pause`, after its temp file is written and before the rename; returns once it is there."""
    command = [sys.executable, "-m", "engine", "train", "--a", faceset_a, "--b", faceset_b, "--model", model,
               "--preset", "tiny", "--save-every", "1", "--preview-every", "1000", "--device", "cpu",
               "--iterations", "20", *extra]  # ends (and the test fails) if the pause never comes
    process = subprocess.Popen(list(map(str, command)), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, media.PAUSE_BEFORE_RENAME: pause})
    for line in process.stderr:
        if line.startswith("paused before rename:"):
            return process
    raise AssertionError(f"the run ended (status {process.wait()}) without reaching the save of {pause}")


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(faceset_a, faceset_b, tmp_path, capsys):
    model = tmp_path / "model"
    first = paused_train(faceset_a, faceset_b, model, "model_00000002.pt")
    try:
        code, _, err = run(capsys, "train", "--a", faceset_a, "--b", faceset_b, "--model", model, "--resume",
                           "--iterations", "5")
        refused(code, err, f"{model} is in use by another run (pid {first.pid})")
    finally:
        first.kill()
        first.wait()
    assert [p.name for p in checkpoint_paths(model)] == ["model_00000001.pt"]
    assert list((model / "checkpoints").glob(".model_00000002.*.tmp.pt"))  # the kill landed mid-save
    (model / "previews" / ".preview_00000001.k1ll3d00.tmp.png").parent.mkdir(exist_ok=True)
    (model / "previews" / ".preview_00000001.k1ll3d00.tmp.png").write_bytes(b"half")
    summary = train(faceset_a, faceset_b, model, resume=True, iterations=3, preview_every=1000, device="cpu")
    assert summary["iterations"] == 3
    assert not [p for p in model.rglob(".*") if p.name != media.LOCK_FILE]  # temp files swept


def test_extract_and_convert_refuse_a_folder_another_run_writes(shot_b, faceset_b, quick_model, tmp_path, capsys):
    @media.holds_folder_locks
    def while_locked(folder: Path, *argv):
        folder.mkdir(parents=True, exist_ok=True)
        media.lock_folder(folder)
        return run(capsys, *argv)

    out = tmp_path / "out"
    code, _, err = while_locked(out, "convert", shot_b, "--alignments", faceset_b, "--model", quick_model,
                                "--output", out, "--frames", "1-1")
    refused(code, err, f"{out} is in use by another run (pid {os.getpid()})")
    code, _, err = while_locked(tmp_path / "fs", "extract", shot_b, "--output", tmp_path / "fs", "--detector", "dlib")
    refused(code, err, "is in use by another run")


def test_extract_and_convert_sweep_what_a_killed_write_left(faceset_a, shot_a, shot_b, faceset_b, quick_model, tmp_path):
    folder = copy(faceset_a, tmp_path / "faceset")
    left = [folder / "faces" / ".000003_0.abcd1234.tmp.png", folder / "masks" / "hull" / ".000003_0.x_y_z123.tmp.png",
            folder / ".alignments.q1w2e3r4.tmp.json"]
    for path in left:
        path.write_bytes(b"half a file")
    extract(shot_a, folder, detector="dlib", size=128)  # the same settings: a resume
    assert not any(p.exists() for p in left)

    out = tmp_path / "out"
    (out / "face").mkdir(parents=True)
    stray = out / "face" / ".face_000001.abcd1234.tmp.png"
    stray.write_bytes(b"half")
    convert(shot_b, faceset_b, quick_model, out, device="cpu", color="none")  # a full run: alone in the folder
    assert not stray.exists()


def link_lock_file(folder: Path, target: Path) -> Path:
    """Replace FOLDER/.facereplace.lock with a symbolic link to `target`; returns the link."""
    lock = folder / media.LOCK_FILE
    lock.unlink(missing_ok=True)
    lock.symlink_to(target)
    return lock


def test_mask_apply_refuses_a_lock_file_linked_to_a_file_elsewhere(faceset_a, shot_a, tmp_path, capsys):
    """Issue 24.1: the link was opened, truncated and written through; now it is refused and the file it
    points at keeps every byte."""
    labels = tmp_path / "labels"
    media.write_image(labels / "mask_000001.png", np.full((240, 320), 255, np.uint8))
    occlusion.train(faceset_a, labels, tmp_path / "mask_model", iterations=1, device="cpu", batch=2, size=32)
    faceset = copy(faceset_a, tmp_path / "faceset")
    victim = tmp_path / "precious.txt"
    victim.write_text("an artist's notes")
    link_lock_file(faceset, victim)
    code, _, err = run(capsys, "mask", "apply", "--faceset", faceset, "--model", tmp_path / "mask_model", "--device", "cpu")
    refused(code, err, media.LOCK_FILE, "is a link")
    assert victim.read_text() == "an artist's notes"
    assert not list((faceset / "masks" / "learned").glob("*.png"))


def test_train_resume_refuses_a_lock_file_linked_to_a_file_elsewhere(quick_model, faceset_a, faceset_b, tmp_path,
                                                                     capsys):
    model = copy(quick_model, tmp_path / "model")
    victim = tmp_path / "precious.txt"
    victim.write_text("an artist's notes")
    link_lock_file(model, victim)
    code, _, err = run(capsys, "train", "--a", faceset_a, "--b", faceset_b, "--model", model, "--resume",
                       "--iterations", "3", "--device", "cpu")
    refused(code, err, media.LOCK_FILE, "is a link")
    assert victim.read_text() == "an artist's notes"
    (model / media.LOCK_FILE).unlink()
    os.link(victim, model / media.LOCK_FILE)  # a hard link would be written through just the same
    code, _, err = run(capsys, "train", "--a", faceset_a, "--b", faceset_b, "--model", model, "--resume",
                       "--iterations", "3", "--device", "cpu")
    refused(code, err, media.LOCK_FILE, "not a plain file of its folder")
    assert victim.read_text() == "an artist's notes"


def test_convert_frames_refuses_a_dangling_lock_link_and_creates_nothing(shot_b, faceset_b, quick_model, tmp_path,
                                                                         capsys):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    link_lock_file(out, target)
    code, _, err = run(capsys, "convert", shot_b, "--alignments", faceset_b, "--model", quick_model, "--output", out,
                       "--frames", "1-1", "--device", "cpu")
    refused(code, err, media.LOCK_FILE, "is a link")
    assert not target.exists()


# ---------------------------------------------------------------- 4. numbers that are not numbers


def test_a_diverging_run_stops_with_an_error_and_keeps_its_last_good_checkpoint(faceset_a, faceset_b, tmp_path,
                                                                                 capsys, monkeypatch):
    from engine.stages import train as train_module

    calls = {"n": 0}
    real_loss = train_module.face_loss

    def poisoned(*args):
        calls["n"] += 1
        loss = real_loss(*args)
        return loss * float("nan") if calls["n"] > 6 else loss  # iterations 1-3 are fine (2 losses each)

    monkeypatch.setattr(train_module, "face_loss", poisoned)
    model = tmp_path / "model"
    code, _, err = run(capsys, "train", "--a", faceset_a, "--b", faceset_b, "--model", model, "--preset", "tiny",
                       "--iterations", "10", "--save-every", "2", "--log-every", "1", "--keep", "1",
                       "--preview-every", "1000", "--device", "cpu")
    refused(code, err, "diverged at iteration 4", "model_00000002.pt")
    loaded, _ = load_model(model)
    assert loaded.iteration == 2 and all(torch.isfinite(p).all() for p in loaded.parameters())


def poison_checkpoint(path: Path, iteration: int | None = None, change=None) -> Path:
    """Rewrite a checkpoint: NaN weights (or `change(state)`), optionally as another iteration's file."""
    state = torch.load(path, weights_only=True)
    if change is None:
        state["model"] = {k: v * float("nan") for k, v in state["model"].items()}
    else:
        change(state)
    if iteration is not None:
        state["iteration"] = iteration
        path = path.with_name(f"model_{iteration:08d}.pt")
    torch.save(state, path)
    return path


def test_rotation_never_deletes_the_good_checkpoints_for_a_newer_bad_one(quick_model, faceset_a, faceset_b, tmp_path):
    model = copy(quick_model, tmp_path / "model")
    poison_checkpoint(checkpoint_paths(model)[0], iteration=50)
    stream = io.StringIO()
    train(faceset_a, faceset_b, model, resume=True, iterations=4, save_every=1, keep=1, preview_every=1000,
          device="cpu", events=Events("train", json_lines=True, stdout=stream))
    warnings = [e["message"] for e in map(json.loads, stream.getvalue().splitlines()) if e["event"] == "warning"]
    assert any("model_00000050.pt" in w and "not all finite" in w for w in warnings)
    loaded, _ = load_model(model)
    assert loaded.iteration == 4 and all(torch.isfinite(p).all() for p in loaded.parameters())


def test_convert_refuses_a_model_whose_weights_are_not_finite(quick_model, shot_b, faceset_b, tmp_path, capsys):
    model = copy(quick_model, tmp_path / "model")
    poison_checkpoint(checkpoint_paths(model)[0])
    code, _, err = run(capsys, "convert", shot_b, "--alignments", faceset_b, "--model", model, "--output",
                       tmp_path / "out", "--device", "cpu")
    refused(code, err, "not all finite")
    assert not (tmp_path / "out" / "face").exists()


IMPOSSIBLE = {
    "NaN landmark": (lambda f, d: f["landmarks"][0].__setitem__(0, float("nan")), "frame 1 face 0: landmarks"),
    "infinite matrix": (lambda f, d: f["matrix"][0].__setitem__(2, float("inf")), "frame 1 face 0: matrix"),
    "singular matrix": (lambda f, d: f.update(matrix=[[1, 1, 0], [1, 1, 0]]), "frame 1 face 0: matrix is singular"),
    "tiny scale": (lambda f, d: f.update(matrix=[[1e-6, 0, 0], [0, 1e-6, 0]]), "frame 1 face 0: matrix frames a face"),
    "duplicated frame": (lambda f, d: d["frames"].append(d["frames"][0]), "frame 1 is listed twice"),
    "string landmarks": (lambda f, d: f.update(landmarks=[["1", "2"]] * 68), "frame 1 face 0: landmarks"),
    "string face_size": (lambda f, d: d.update(face_size="128"), "face_size '128'"),
    "zero face_size": (lambda f, d: d.update(face_size=0), "face_size 0"),
}


@pytest.mark.parametrize("case", list(IMPOSSIBLE))
def test_alignments_with_impossible_values_are_refused_naming_the_frame(case, faceset_b, tmp_path):
    change, words = IMPOSSIBLE[case]
    data = json.loads((faceset_b / "alignments.json").read_text())
    change(first_face(data), data)
    (tmp_path / "alignments.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match="damaged") as refusal:
        Alignments.load(tmp_path / "alignments.json")
    assert words in str(refusal.value)


def test_convert_refuses_impossible_alignments_in_one_line(faceset_b, shot_b, quick_model, tmp_path, capsys):
    data = json.loads((faceset_b / "alignments.json").read_text())
    first_face(data).update(matrix=[[1e-6, 0, 0], [0, 1e-6, 0]])
    (tmp_path / "alignments.json").write_text(json.dumps(data))
    code, _, err = run(capsys, "convert", shot_b, "--alignments", tmp_path / "alignments.json", "--model", quick_model,
                       "--output", tmp_path / "out", "--device", "cpu")
    refused(code, err, "frame 1 face 0")


OUT_OF_RANGE = [
    ("train", "--learning-rate", "1000"), ("train", "--learning-rate", "nan"), ("train", "--seed", "-1"),
    ("train", "--rotation", "1000"), ("train", "--time-budget", "inf"), ("convert", "--feather", "nan"),
    ("convert", "--erode", "100000"), ("extract", "--smooth-cutoff", "-1"), ("extract", "--smooth-cutoff", "nan"),
]


@pytest.mark.parametrize("verb, option, value", OUT_OF_RANGE)
def test_options_out_of_range_are_refused_by_the_parser(verb, option, value, faceset_a, faceset_b, shot_b, tmp_path,
                                                        capsys):
    required = {"train": ["--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "m"],
                "convert": [shot_b, "--alignments", faceset_b, "--model", tmp_path / "m", "--output", tmp_path / "o"],
                "extract": [shot_b, "--output", tmp_path / "o"]}[verb]
    code, out, err = run(capsys, verb, *required, option, value, "--events")
    refused(code, err, option)
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["error"]
    assert not (tmp_path / "m").exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- 5. memory stays bounded


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header says `width` x `height`."""
    png = media.encode_png(np.zeros((1, 1, 3), np.uint8))
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def exr_claiming(path: Path, width: int, height: int) -> Path:
    """A real 8x8 EXR whose header's data window says `width` x `height`."""
    media.write_image(path, np.zeros((8, 8, 3), np.float32))
    data = path.read_bytes()
    box = struct.pack("<iiii", 0, 0, 7, 7)
    at = data.index(b"dataWindow\0box2i\0") + len(b"dataWindow\0box2i\0") + 4
    assert data[at:at + 16] == box
    path.write_bytes(data[:at] + struct.pack("<iiii", 0, 0, width - 1, height - 1) + data[at + 16:])
    return path


def test_image_sizes_are_checked_from_the_header_before_decoding(tmp_path, shot_a, monkeypatch):
    with pytest.raises(EngineError, match="20000x20000 pixels"):
        media.read_image(exr_claiming(tmp_path / "huge.exr", 20000, 20000))
    (tmp_path / "huge.png").write_bytes(png_claiming(20000, 20000))
    with pytest.raises(EngineError, match="20000x20000 pixels"):
        media.read_image(tmp_path / "huge.png")
    monkeypatch.setenv(media.MAX_PIXELS, str(320 * 240 - 1))  # the limit is a setting
    with pytest.raises(EngineError, match=f"320x240 pixels: more than the {320 * 240 - 1}"):
        media.FrameSource(shot_a)
    monkeypatch.setenv(media.MAX_PIXELS, str(320 * 240))
    assert media.FrameSource(shot_a).size == (320, 240)


# ---------------------------------------------------------------- 6. one error line, never a traceback


def test_a_full_disk_is_one_error_line(faceset_a, tmp_path, capsys, monkeypatch):
    folder = copy(faceset_a, tmp_path / "faceset")

    def full(_descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run(capsys, "curate", folder)
    refused(code, err, "no space left on the disk")


def test_a_checkpoint_with_wrong_shapes_is_one_error_line(quick_model, faceset_a, faceset_b, shot_b, tmp_path, capsys):
    model = copy(quick_model, tmp_path / "model")

    def reshape(state):
        name = next(iter(state["model"]))
        state["model"][name] = torch.zeros(3, 3)

    poison_checkpoint(checkpoint_paths(model)[0], change=reshape)
    code, _, err = run(capsys, "convert", shot_b, "--alignments", faceset_b, "--model", model, "--output",
                       tmp_path / "out", "--device", "cpu")
    refused(code, err, "do not fit")
    code, _, err = run(capsys, "train", "--a", faceset_a, "--b", faceset_b, "--model", model, "--resume",
                       "--device", "cpu")
    refused(code, err, "do not fit")


def test_json_nested_too_deep_is_one_error_line(faceset_a, tmp_path, capsys):
    folder = copy(faceset_a, tmp_path / "faceset")
    (folder / "alignments.json").write_text("[" * 200_000 + "]" * 200_000)
    code, _, err = run(capsys, "curate", folder)
    refused(code, err, "nested too deeply")


def test_a_face_of_another_size_is_one_error_line(faceset_a, faceset_b, tmp_path, capsys):
    folder = copy(faceset_a, tmp_path / "faceset")
    face = folder / "faces" / "000002_0.png"
    media.write_image(face, media.read_image(face)[::2, ::2].copy())  # 64 px in a 128 px faceset
    code, _, err = run(capsys, "train", "--a", folder, "--b", faceset_b, "--model", tmp_path / "m", "--preset",
                       "tiny", "--iterations", "1", "--device", "cpu")
    refused(code, err, "000002_0.png", "not 128 px")
    code, _, err = run(capsys, "curate", folder)
    refused(code, err, "000002_0.png", "not 128 px")


def test_a_manifest_pattern_without_a_frame_number_is_one_error_line(shot_b, faceset_a, faceset_b, tmp_path, capsys):
    layers = tmp_path / "layers"
    media.write_json(layers / "manifest.json", {"format": "facereplace.convert", "version": 1, "source": str(shot_b.resolve()),
                                                "files": {"face": "face/face.png"}})
    code, _, err = run(capsys, "evaluate", shot_b, "--alignments", faceset_b, "--layers", layers, "--source", faceset_a)
    refused(code, err, "'face/face.png'", "one %d")


# ---------------------------------------------------------------- 7. outputs keep the umask's mode


def test_outputs_are_as_readable_as_the_umask_allows(faceset_a, tmp_path):
    expected = 0o666 & ~media._read_umask()
    media.write_bytes(tmp_path / "x.bin", b"1")
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == expected
    assert (faceset_a / "alignments.json").stat().st_mode & 0o777 == expected
    assert (faceset_a / "faces" / "000001_0.png").stat().st_mode & 0o777 == expected


# ---------------------------------------------------------------- 8. stdout carries only events


def test_with_events_stdout_holds_only_json_lines(tmp_path):
    """What a library prints to stdout (torch.hub's "Downloading: ...") or a C library writes to its
    file descriptor goes to stderr while events are on."""
    script = (
        "import os, sys\n"
        "import engine.info as info\n"
        "real = info.run\n"
        "def noisy(args, events):\n"
        "    print('Downloading: \"https://example.invalid/s3fd.pth\"')\n"
        "    os.write(1, b'written to fd 1\\n')\n"
        "    real(args, events)\n"
        "info.run = noisy\n"
        "from engine.__main__ import main\n"
        "sys.exit(main(['info', '--events']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events and all("event" in e for e in events)
    assert "Downloading:" in result.stderr and "written to fd 1" in result.stderr


def test_a_command_line_the_parser_refuses_is_an_error_event(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--events", "--a", tmp_path)
    refused(code, err, "the following arguments are required: --model")
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["event"] == "error" and "required: --model" in event["message"]


# ---------------------------------------------------------------- 11. a shot and its alignments belong together


def test_alignments_of_another_shot_are_refused_unless_forced(shot_a, shot_b, faceset_a, faceset_b, quick_model,
                                                              tmp_path, capsys):
    # Both sample shots are 320x240 and 16 frames long, numbered 1-16: only their pictures differ.
    common = ["--alignments", faceset_b, "--model", quick_model, "--device", "cpu", "--frames", "1-2"]
    code, _, err = run(capsys, "convert", shot_a, *common, "--output", tmp_path / "wrong")
    refused(code, err, f"{shot_a} is not the shot", "--force")
    assert not (tmp_path / "wrong").exists()
    code, _, err = run(capsys, "evaluate", shot_a, "--alignments", faceset_b, "--layers", tmp_path, "--source", faceset_a)
    refused(code, err, f"{shot_a} is not the shot")

    code, out, _ = run(capsys, "convert", shot_a, *common, "--output", tmp_path / "forced", "--force", "--events")
    assert code == 0 and any("--force" in json.loads(line).get("message", "") for line in out.splitlines())

    old = tmp_path / "old.json"  # an extract from before signatures: a warning, not a refusal
    shutil.copy(faceset_b / "alignments.json", old)
    edit_json(old, lambda d: d.pop("signature"))
    code, out, _ = run(capsys, "convert", shot_b, "--alignments", old, "--model", quick_model, "--device", "cpu",
                       "--frames", "1-2", "--output", tmp_path / "old", "--events")
    assert code == 0 and any("no shot signature" in json.loads(line).get("message", "") for line in out.splitlines())


# ---------------------------------------------------------------- round 2: links, full disks, runaways, poisoned pixels


def test_a_run_that_runs_away_stops_and_keeps_its_best_checkpoint(quick_model, faceset_a, faceset_b, tmp_path, capsys):
    model = copy(quick_model, tmp_path / "model")
    code, _, err = run(capsys, "train", "--a", faceset_a, "--b", faceset_b, "--model", model, "--resume",
                       "--learning-rate", "1", "--iterations", "200", "--log-every", "1", "--save-every", "1",
                       "--keep", "1", "--preview-every", "1000", "--device", "cpu")
    line = refused(code, err, "diverged", "x its recent best", "model_00000002.pt")
    print(line)
    assert (model / "checkpoints" / "model_00000002.pt").is_file()  # rotation kept the best beside the newest


def test_mask_apply_refuses_a_linked_masks_folder_before_sweeping_it(mask_model, tmp_path, capsys):
    faceset = copy(mask_model, tmp_path / "faceset")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stranger = elsewhere / ".notes.abcd1234.tmp.txt"  # a name the sweep of killed writes would remove
    stranger.write_text("someone else's")
    (faceset / "masks" / "learned").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = run(capsys, "mask", "apply", "--faceset", faceset, "--device", "cpu")
    refused(code, err, "masks/learned is a link")
    assert stranger.read_text() == "someone else's" and os.listdir(elsewhere) == [stranger.name]


def test_convert_refuses_an_output_subfolder_that_is_a_link(shot_b, faceset_b, quick_model, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "face").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = run(capsys, "convert", shot_b, "--alignments", faceset_b, "--model", quick_model, "--output",
                       tmp_path / "out", "--frames", "1-2", "--device", "cpu")
    refused(code, err, "face is a link")
    assert not os.listdir(elsewhere)


def test_logs_are_never_trimmed_or_appended_through_a_link(shot_a, faceset_a, faceset_b, quick_model, tmp_path,
                                                           capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    folder = copy(faceset_a, tmp_path / "faceset")
    (folder / "detections.jsonl").unlink()
    (folder / "detections.jsonl").symlink_to(victim)
    code, _, err = run(capsys, "extract", shot_a, "--output", folder, "--detector", "dlib", "--size", "128")
    refused(code, err, "detections.jsonl is a link")
    model = copy(quick_model, tmp_path / "model")
    (model / "history.csv").unlink()
    (model / "history.csv").symlink_to(victim)
    train(faceset_a, faceset_b, model, resume=True, iterations=3, preview_every=1000, device="cpu")
    assert victim.read_text() == "keep" and not (model / "history.csv").is_symlink()


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` (root only: skipped otherwise); yields a function that grows it."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")

    def grow(to: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={to}", folder], check=True)

    try:
        yield grow
    finally:
        subprocess.run(["umount", "-l", folder], check=True)


def assert_whole_images(folder: Path) -> None:
    """Every image under `folder` reads back whole: nothing cut short was published."""
    for path in folder.rglob("*"):
        if path.suffix in (".png", ".exr") and path.is_file():
            media.read_image(path)


def test_a_full_disk_publishes_nothing_cut_short_and_extract_resumes_once_space_is_freed(
        shot_a, shot_b, faceset_a, faceset_b, quick_model, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "200k") as grow:
        out = tmp_path / "disk" / "out"
        for fmt in ("png16", "exr-multilayer"):
            code, _, err = run(capsys, "convert", shot_b, "--alignments", faceset_b, "--model", quick_model,
                               "--output", out / fmt, "--format", fmt, "--device", "cpu")
            refused(code, err, "cannot write", "MiB free on its disk")
            assert_whole_images(out)
        shutil.rmtree(out)

        code, _, err = run(capsys, "train", "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "disk" / "m",
                           "--preset", "tiny", "--iterations", "1", "--device", "cpu")
        refused(code, err, "cannot write", "MiB free on its disk")
        shutil.rmtree(tmp_path / "disk" / "m")

        faceset = tmp_path / "disk" / "faceset"
        code, _, err = run(capsys, "extract", shot_a, "--output", faceset, "--detector", "dlib", "--size", "128")
        refused(code, err, "cannot write", "MiB free on its disk")
        assert_whole_images(faceset)
        grow("20m")
        code, _, err = run(capsys, "extract", shot_a, "--output", faceset, "--detector", "dlib", "--size", "128")
        assert code == 0, err
        assert_whole_images(faceset)
        assert len(list((faceset / "faces").iterdir())) == len(list((faceset_a / "faces").iterdir()))


def test_a_nan_or_infinite_sample_under_a_face_is_replaced_not_spread(shot_a, faceset_a, quick_model, tmp_path,
                                                                      capsys):
    """An EXR copy of the shot (linear, the same shot by its signature) converted clean and with one NaN and
    one infinite sample on the face: the layers match but for that pixel's neighbourhood, and one warning
    counts them."""
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    for folder in (clean, poisoned):
        folder.mkdir()
    for path in sorted(shot_a.iterdir()):
        linear = colorspace.srgb_to_linear(media.read_image(path).astype(np.float32) / 255)
        media.write_image(clean / f"{path.stem}.exr", linear)
        x, y = np.round(first_face(json.loads((faceset_a / "alignments.json").read_text()))["landmarks"][30]).astype(int)
        linear[y, x, 1], linear[y + 1, x, 0] = np.nan, np.inf
        media.write_image(poisoned / f"{path.stem}.exr", linear)
    layers = {}
    for name, plate in (("clean", clean), ("poisoned", poisoned)):
        for fmt in ("exr", "png16"):
            code, out, err = run(capsys, "convert", plate, "--alignments", faceset_a, "--model", quick_model, "--output",
                                 tmp_path / f"out-{name}-{fmt}", "--format", fmt, "--frames", "1-1", "--device", "cpu",
                                 "--events")
            assert code == 0, err
            warnings = [e["message"] for e in map(json.loads, out.splitlines()) if e["event"] == "warning"]
            assert sum("NaN or infinite" in w for w in warnings) == (name == "poisoned"), warnings
            layers[name, fmt] = media.read_image(tmp_path / f"out-{name}-{fmt}" / "face" / f"face_000001.{fmt[:3]}")
    for fmt in ("exr", "png16"):
        a, b = (media.to_float(layers[name, fmt]) if fmt == "png16" else layers[name, fmt] for name in ("clean", "poisoned"))
        assert np.isfinite(b).all()
        assert np.abs(a[..., 3] - b[..., 3]).mean() < 0.01  # the matte did not vanish
        assert (np.abs(a - b).max(axis=2) > 0.05).sum() < 0.02 * (a[..., 3] > 0).sum()


def rotated_copy(video: Path, to: Path) -> Path:
    """`video` with its track's display matrix saying: show it turned 90 degrees (a phone's portrait clip)."""
    data = bytearray(video.read_bytes())
    at = data.index(b"tkhd")
    matrix = at + 8 + (32 if data[at + 4] == 1 else 20) + 16
    assert struct.unpack(">9i", data[matrix:matrix + 36]) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    to.write_bytes(bytes(data))
    return to


def test_a_video_tagged_as_rotated_is_read_turned_as_blender_shows_it(shot_b, tmp_path):
    upright = media.FrameSource(shot_b)
    turned = media.FrameSource(rotated_copy(shot_b, tmp_path / "portrait.mp4"))
    assert upright.size == (320, 240) and turned.size == (240, 320)
    (_, frame), = upright.frames([3])
    (_, portrait), = turned.frames([3])
    np.testing.assert_array_equal(portrait, np.rot90(frame, -1))  # clockwise, as the matrix says


def test_convert_takes_the_colour_space_extract_recorded(shot_b, faceset_b, quick_model, tmp_path, capsys):
    folder = copy(faceset_b, tmp_path / "faceset")
    edit_json(folder / "alignments.json", lambda d: d["settings"].update(colorspace="ACEScg"))
    code, _, err = run(capsys, "convert", shot_b, "--alignments", folder, "--model", quick_model, "--output",
                       tmp_path / "out", "--frames", "1-1", "--format", "exr", "--device", "cpu")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["plate_colorspace"] == manifest["colorspace"] == "ACEScg"
    edit_json(folder / "alignments.json", lambda d: d["settings"].update(ocio_config="/elsewhere/config.ocio"))
    code, _, err = run(capsys, "convert", shot_b, "--alignments", folder, "--model", quick_model, "--output",
                       tmp_path / "out2", "--frames", "1-1", "--device", "cpu")
    refused(code, err, "'ACEScg'", "/elsewhere/config.ocio", "--ocio-config")


def test_mask_train_saves_on_sigterm_as_train_does(mask_model, tmp_path):
    faceset = copy(mask_model, tmp_path / "faceset")
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "mask", "train", "--faceset", faceset, "--labels", mask_model.parent / "labels",
         "--model", tmp_path / "m", "--size", "32", "--iterations", "1000000", "--device", "cpu", "--events"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if json.loads(line)["event"] == "progress":
            process.terminate()
            break
    out = process.stdout.read()
    assert process.wait(timeout=120) == 0
    done = [e for e in map(json.loads, out.splitlines()) if e["event"] == "done"][0]
    assert done["stopped"] == "SIGTERM" and Path(done["checkpoint"]).is_file()


def test_mask_labels_a_fifo_two_for_a_frame_or_a_nan_are_refused_in_one_line(mask_model, tmp_path, capsys):
    faceset = copy(mask_model, tmp_path / "faceset")
    labels = copy(mask_model.parent / "labels", tmp_path / "labels")
    os.mkfifo(labels / "mask_000002.png")  # skipped: reading it would block for ever
    argv = ["mask", "train", "--faceset", faceset, "--labels", labels, "--model", tmp_path / "m", "--size", "32",
            "--iterations", "2", "--device", "cpu"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    shutil.copy(labels / "mask_000001.png", labels / "0001.png")
    code, _, err = run(capsys, *argv, "--resume")
    refused(code, err, "mask_000001.png", "0001.png", "both for frame 1")
    (labels / "0001.png").unlink()
    (labels / "mask_000001.png").unlink()
    nan = np.ones((240, 320), np.float32)
    nan[5, 5] = np.nan
    media.write_image(labels / "mask_000001.exr", nan)
    code, _, err = run(capsys, *argv, "--resume")
    refused(code, err, "mask_000001.exr", "NaN")


def test_every_error_is_one_line_and_an_empty_option_is_no_default(shot_b, faceset_b, quick_model, tmp_path, capsys):
    forged = tmp_path / "shot\nerror: all is well"
    code, out, err = run(capsys, "extract", forged, "--output", tmp_path / "fs", "--events")
    assert "all is well" in refused(code, err, "input not found", "\\nerror: all is well")
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["error"]
    convert_argv = ["convert", shot_b, "--alignments", faceset_b, "--model", quick_model, "--output", tmp_path / "o"]
    for option in ("--frames", "--colorspace", "--ocio-config"):
        code, _, err = run(capsys, *convert_argv, option, "")
        refused(code, err, f"{option} is empty")
    assert not (tmp_path / "o").exists()


def test_a_truncated_tiff_or_dpx_is_refused_not_read_as_zeros(tmp_path):
    image = (np.random.default_rng(0).random((64, 96, 3)) * 65535).astype(np.uint16)
    for suffix in (".tif", ".dpx"):
        path = tmp_path / f"plate{suffix}"
        media.write_image(path, image)
        np.testing.assert_array_equal(media.read_image(path), image)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(EngineError, match="cannot read image"):
            media.read_image(path)


def test_an_exr_of_many_channels_takes_the_memory_of_its_picture_and_a_fifo_is_never_read(tmp_path):
    import tracemalloc

    import OpenEXR

    channels = {f"beauty.C{i:03d}": np.zeros((256, 256), np.float32) for i in range(200)}
    channels.update({f"beauty.{c}": np.full((256, 256), 0.5, np.float32) for c in "RGB"})
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels).write(
        str(tmp_path / "layers.exr"))
    tracemalloc.start()
    try:
        assert media.read_image(tmp_path / "layers.exr").shape == (256, 256, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 256 * 256 * 3 * 4  # the picture's 3 channels (and a copy), not 203
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(EngineError, match="not a file"):
        media.read_image(tmp_path / "fifo.png")


def test_checkpoint_settings_are_range_checked_before_a_network_is_built(mask_model, quick_model, shot_b, faceset_b,
                                                                         tmp_path, capsys):

    faceset = copy(mask_model, tmp_path / "faceset")
    path = checkpoint_paths(faceset / "mask_model")[0]
    state = torch.load(path, weights_only=True)
    state["settings"]["width"] = 512  # 2 GB of network, from a file of a few kilobytes
    torch.save(state, path)
    code, _, err = run(capsys, "mask", "apply", "--faceset", faceset, "--device", "cpu")
    refused(code, err, "every mask checkpoint", "width must be a whole number from 4 to 64, got 512")
    model = copy(quick_model, tmp_path / "model")
    poison_checkpoint(checkpoint_paths(model)[0], change=lambda s: s["config"].update(latent=10**6))
    code, _, err = run(capsys, "convert", shot_b, "--alignments", faceset_b, "--model", model, "--output",
                       tmp_path / "out", "--device", "cpu")
    refused(code, err, "latent must be a whole number")


def test_convert_takes_a_learned_mask_saved_in_colour(mask_model, shot_b, quick_model, tmp_path, capsys):
    faceset = copy(mask_model, tmp_path / "faceset")
    code, _, err = run(capsys, "mask", "apply", "--faceset", faceset, "--device", "cpu")
    assert code == 0, err
    learned = faceset / "masks" / "learned" / "000001_0.png"
    grey = media.read_image(learned)
    media.write_image(learned, np.dstack([grey] * 3))  # an artist's touch-up, saved as RGB
    code, _, err = run(capsys, "convert", shot_b, "--alignments", faceset, "--model", quick_model, "--output",
                       tmp_path / "out", "--mask", "learned", "--frames", "1-1", "--device", "cpu")
    assert code == 0, err
