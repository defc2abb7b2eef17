"""Train, on the CPU, with the tiny preset, on facesets extracted from the real sample faces.

The session fixture `tiny_model` (tests/conftest.py) trains A<->B once; these tests read what it wrote
and train small extra runs of their own where they need to stop, resume or break something.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.__main__ import main
from engine.base import media
from engine.base.checkpoints import checkpoint_paths
from engine.base.color import lab_to_rgb, rgb_to_lab
from engine.folders.faceset import Faceset
from engine.networks.augment import Augmentation, FaceBatches, load_face, unaugmented_params
from engine.networks.model import load_model, model_hash, read_checkpoint, read_history
from engine.stages.train import overtraining, train
from tests.conftest import assert_same_run

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # the tiny preset's


def quick(a, b, model, **options):
    """A short tiny-preset run with quiet feedback; options override."""
    return train(a, b, model, **{"preset": "tiny", "preview_every": 1000, "save_every": 1000, **options})


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run `python -m engine train ...` in this process: (exit status, stdout, stderr)."""
    code = main(["train", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def events_of(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def face_tiles(faceset: Path, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` faces of a faceset at the model's size, as the model takes them, and their masks."""
    faces = Faceset(faceset)
    loaded = np.stack([load_face(s, faces.face_size, SIZE) for s in faces.samples()[:count]])
    x = torch.from_numpy(loaded).permute(0, 3, 1, 2).float() / 255
    return x[:, :3], x[:, 3:4]


# ---------------------------------------------------------------- learning


def test_loss_falls_and_each_decoder_learns_its_own_face(tiny_model, faceset_a, faceset_b):
    history = read_history(tiny_model / "history.csv")
    first = history[0]
    last = history[-3:]
    for k in ("loss_a", "loss_b"):
        assert np.mean([r[k] for r in last]) < 0.6 * first[k], (k, first[k], [r[k] for r in last])
    validated = [r for r in history if r["val_loss_a"] is not None]
    assert validated[-1]["val_loss_b"] < validated[0]["val_loss_b"]

    model, config = load_model(tiny_model, "cpu")
    assert (config.size, config.face_size) == (SIZE, 128)
    for source, other in (("b", "a"), ("a", "b")):
        faces, mask = face_tiles(faceset_b if source == "b" else faceset_a, 16)
        own, own_mask = model.swap(faces, source)
        swapped, _ = model.swap(faces, other)
        inside = mask.expand_as(faces) > 0.5
        own_error = (own - faces).abs()[inside].mean()
        # Its own decoder redraws the face recognisably: close to the original inside the mask,
        # far closer than the other person's decoder gets, and with a mask that overlaps the faceset's.
        assert own_error < 0.1, own_error
        assert own_error < 0.5 * (swapped - faces).abs()[inside].mean()
        overlap = ((own_mask > 0.5) & (mask > 0.5)).sum() / ((own_mask > 0.5) | (mask > 0.5)).sum()
        assert overlap > 0.9, overlap


def test_preview_grid_layout(tiny_model, faceset_a, faceset_b):
    """Rows of A, A->A, A->B, B, B->B, B->A at the model's size; one file per preview and the latest."""
    preview = media.read_image(tiny_model / "preview.png")
    rows = 4
    assert preview.shape == (rows * SIZE, 6 * SIZE, 3)
    assert media.image_metadata(tiny_model / "preview.png")["Columns"] == "A, A->A, A->B, B, B->B, B->A"
    timelapse = sorted((tiny_model / "previews").glob("preview_*.png"))
    assert len(timelapse) >= 2
    assert np.array_equal(media.read_image(timelapse[-1]), preview)

    tiles = preview.reshape(rows, SIZE, 6, SIZE, 3).transpose(0, 2, 1, 3, 4).astype(np.float32) / 255
    a_faces, _ = face_tiles(faceset_a, 16)
    b_faces, _ = face_tiles(faceset_b, 16)
    first_a = a_faces[0].permute(1, 2, 0).numpy()
    first_b = b_faces[0].permute(1, 2, 0).numpy()
    assert np.abs(tiles[0, 0] - first_a).max() < 2 / 255  # column A is A's first face, untouched
    assert np.abs(tiles[0, 3] - first_b).max() < 2 / 255  # column B is B's
    for row in range(rows):
        for source, own, swap in ((0, 1, 2), (3, 4, 5)):
            face = tiles[row, source]
            # the face's own decoder redraws it more closely than the other decoder does
            assert np.abs(tiles[row, own] - face).mean() < np.abs(tiles[row, swap] - face).mean()


def test_events_history_and_model_folder(faceset_a, faceset_b, tmp_path, capsys):
    model = tmp_path / "m"
    code, out, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", model, "--preset", "tiny",
                         "--iterations", 20, "--preview-every", 10, "--events")
    assert code == 0, err
    events = events_of(out)
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["iteration"] for e in progress] == [10, 20]
    for e in progress:
        assert e["total"] == 20 and e["done"] == e["iteration"]
        assert e["loss_a"] > 0 and e["loss_b"] > 0 and e["val_loss_a"] > 0 and e["val_loss_b"] > 0
        assert e["it_per_s"] > 0 and e["eta_s"] >= 0
    previews = [e for e in events if e["event"] == "preview"]
    assert [(e["iteration"], e["path"]) for e in previews] == [(i, str(model / "preview.png")) for i in (10, 20)]
    done = events[-1]
    assert done["iterations"] == 20 and done["loss_a"] == progress[-1]["loss_a"]
    assert Path(done["checkpoint"]) == checkpoint_paths(model)[0]
    history = read_history(model / "history.csv")
    assert [r["iteration"] for r in history] == [10, 20]
    assert history[-1]["loss_b"] == pytest.approx(done["loss_b"], rel=1e-5)
    summary = json.loads((model / "model.json").read_text())
    assert summary["iteration"] == 20 and summary["config"]["face_size"] == 128


def test_warns_when_faceset_a_lacks_the_mouth_b_opens(faceset_a, talking, tmp_path, capsys):
    """Before any training: B opens her mouth wider than any face of A, so the swap would draw it half
    shut. The other way round, A's faces span B's, and nothing is said."""
    def warnings(a, b, model):
        code, out, err = cli(capsys, "--a", a, "--b", b, "--model", tmp_path / model, "--preset", "tiny",
                             "--iterations", 1, "--events")
        assert code == 0, err
        return [e["message"] for e in events_of(out) if e["event"] == "warning"]

    lacking = [w for w in warnings(faceset_a, talking["faceset"], "a_b") if "mouth" in w]
    assert len(lacking) == 1 and lacking[0].startswith("B opens its mouth wider than A's faces do in ")
    assert "of 16 frames (" in lacking[0] and lacking[0].endswith("add faces of A with the mouth open")
    assert not [w for w in warnings(talking["faceset"], faceset_a, "b_a") if "mouth" in w or "eyes" in w]


# ---------------------------------------------------------------- stop and resume


def test_resume_continues_the_same_curve(faceset_a, faceset_b, tmp_path):
    """Same seed: 20 iterations, stop, resume to 40 == 40 straight, loss for loss and weight for weight."""
    straight = quick(faceset_a, faceset_b, tmp_path / "straight", iterations=40, seed=3)
    quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=20, seed=3)
    resumed = quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=40, resume=True)
    assert resumed["iterations"] == straight["iterations"] == 40
    assert [r["iteration"] for r in read_history(tmp_path / "straight" / "history.csv")] == [10, 20, 30, 40]
    assert_same_run(straight, resumed, tmp_path / "straight", tmp_path / "resumed")


def test_stop_file_saves_and_stops(faceset_a, faceset_b, tmp_path):
    model = tmp_path / "m"

    def ask_to_stop():
        while not (model / "history.csv").exists():
            time.sleep(0.05)
        (model / "stop").touch()

    threading.Thread(target=ask_to_stop, daemon=True).start()
    summary = quick(faceset_a, faceset_b, model, log_every=5)
    assert summary["stopped"] == "stop file"
    assert not (model / "stop").exists()  # so a resume does not stop at once
    state = read_checkpoint(checkpoint_paths(model)[0])
    assert state["iteration"] == summary["iterations"] >= 5


def test_a_train_whose_events_reader_goes_away_saves_and_stops(faceset_a, faceset_b, tmp_path):
    """Blender closed or crashed mid-training: the engine's events pipe has no reader any more. The run
    saves what it trained and ends, rather than dying unsaved on its next event (or training on, orphaned)."""
    model = tmp_path / "m"
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "train", "--a", faceset_a, "--b", faceset_b, "--model", model,
         "--preset", "tiny", "--log-every", "2", "--save-every", "100000", "--events"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    for line in process.stdout:
        if json.loads(line)["event"] == "progress":
            break
    process.stdout.close()  # the reader goes: the engine's next event meets a broken pipe
    assert process.wait(timeout=120) == 0
    [checkpoint] = checkpoint_paths(model)
    assert read_checkpoint(checkpoint)["iteration"] == read_history(model / "history.csv")[-1]["iteration"] >= 4


def test_sigint_saves_then_exits_cleanly(faceset_a, faceset_b, tmp_path):
    model = tmp_path / "m"
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "train", "--a", faceset_a, "--b", faceset_b, "--model", model,
         "--preset", "tiny", "--log-every", "2", "--events"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    for line in process.stdout:
        if json.loads(line)["event"] == "progress":
            process.send_signal(signal.SIGINT)
            break
    out = process.stdout.read()
    assert process.wait(timeout=120) == 0
    done = [e for e in events_of(out) if e["event"] == "done"][0]
    assert done["stopped"] == "SIGINT"
    assert read_checkpoint(Path(done["checkpoint"]))["iteration"] == done["iterations"]


def test_time_budget_and_target_loss_stop_training(faceset_a, faceset_b, tmp_path):
    assert quick(faceset_a, faceset_b, tmp_path / "t", time_budget=0.5)["stopped"] == "time budget"
    summary = quick(faceset_a, faceset_b, tmp_path / "l", target_loss=50.0, log_every=3)
    assert (summary["stopped"], summary["iterations"]) == ("target loss", 3)


def test_kill_during_save_never_leaves_an_unloadable_model(faceset_a, faceset_b, tmp_path):
    """SIGKILL inside a checkpoint save, after its temp file is complete and before the rename: media's
    test hook (FACEREPLACE_PAUSE_BEFORE_RENAME) holds the save there and says so, so the kill always
    lands mid-save, however busy the machine. After each kill the model folder loads and resumes."""
    model = tmp_path / "m"
    command = [sys.executable, "-m", "engine", "train", "--a", faceset_a, "--b", faceset_b, "--model", model,
               "--preset", "tiny", "--save-every", "1", "--keep", "2", "--preview-every", "1000", "--device", "cpu",
               "--iterations", "20"]  # ends (and the test fails) if the pause never comes
    for iteration in (3, 5):
        resume = ["--resume"] if checkpoint_paths(model) else []
        process = subprocess.Popen(list(map(str, command + resume)), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, media.PAUSE_BEFORE_RENAME: f"model_{iteration:08d}.pt"})
        paused = any(line.startswith("paused before rename:") for line in process.stderr)
        assert paused, f"the run ended (status {process.wait()}) before the save of iteration {iteration}"
        process.kill()
        process.wait()
        process.stderr.close()
        assert list((model / "checkpoints").glob(f".model_{iteration:08d}.*.tmp.pt"))  # killed mid-save
        loaded, config = load_model(model, "cpu")
        assert config.size == SIZE and loaded.iteration == iteration - 1
    # the resumed run sweeps the dead run's temp file away
    assert quick(faceset_a, faceset_b, model, iterations=loaded.iteration + 1, resume=True)["stopped"] == "iterations"
    assert not list((model / "checkpoints").glob(".*"))


def test_damaged_latest_checkpoint_falls_back_with_a_warning(tiny_model, faceset_a, faceset_b, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    iteration = read_checkpoint(checkpoint_paths(model)[0])["iteration"]
    quick(faceset_a, faceset_b, model, iterations=iteration + 2, resume=True)
    newest, older = checkpoint_paths(model)[:2]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn or bit-rotted file

    warnings = []
    loaded, _ = load_model(model, "cpu", warn=warnings.append)
    assert loaded.checkpoint == older and loaded.iteration == iteration
    assert f"model_{iteration + 2:08d}.pt is damaged" in warnings[0]
    assert model_hash(model) == hashlib.sha256(older.read_bytes()).hexdigest()[:16]

    code, out, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", model, "--resume",
                         "--iterations", iteration + 1, "--events")
    assert code == 0, err
    assert any(e["event"] == "warning" and "damaged" in e["message"] for e in events_of(out))
    assert events_of(out)[-1]["iterations"] == iteration + 1


def test_distributed_data_parallel_under_torchrun(faceset_a, faceset_b, tmp_path):
    """Two CPU processes (gloo) train one model; only the first reports and writes files."""
    model = tmp_path / "m"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "engine",
         "train", "--a", faceset_a, "--b", faceset_b, "--model", model, "--preset", "tiny", "--iterations", "6",
         "--log-every", "3", "--device", "cpu", "--events"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    events = events_of(result.stdout)
    assert [e["processes"] for e in events if e["event"] == "start"] == [2]
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [3, 6]
    assert [e["iterations"] for e in events if e["event"] == "done"] == [6]
    assert read_checkpoint(checkpoint_paths(model)[0])["iteration"] == 6


# ---------------------------------------------------------------- bad input


def broken_faceset(source: Path, folder: Path, keep: int) -> Path:
    """A copy of a faceset with all but `keep` faces moved aside (as curate does)."""
    shutil.copytree(source, folder)
    for face in sorted((folder / "faces").iterdir())[keep:]:
        face.unlink()
    return folder


@pytest.mark.parametrize("keep", [0, 3])
def test_empty_or_too_small_faceset(faceset_a, faceset_b, tmp_path, capsys, keep):
    small = broken_faceset(faceset_a, tmp_path / "small", keep)
    code, _, err = cli(capsys, "--a", small, "--b", faceset_b, "--model", tmp_path / "m")
    assert code == 2
    assert f"faceset A ({small}) has {keep} faces; training needs at least" in err
    assert len(err.strip().splitlines()) == 1
    assert not checkpoint_paths(tmp_path / "m")


def test_facesets_of_different_size_or_coverage(faceset_a, shot_b, tmp_path, capsys):
    from engine.stages.extract import extract

    other = tmp_path / "b96"
    extract(shot_b, other, detector="dlib", size=96, coverage=0.7)
    code, _, err = cli(capsys, "--a", faceset_a, "--b", other, "--model", tmp_path / "m")
    assert code == 2
    assert "A is 128 px at coverage 0.625, B is 96 px at coverage 0.7" in err


def test_model_folder_errors(tiny_model, faceset_a, faceset_b, tmp_path, capsys):
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "none", "--resume")
    assert code == 2 and "nothing to resume" in err

    model = tmp_path / "existing"
    shutil.copytree(tiny_model, model)

    before = {p.name: p.read_bytes() for p in (model / "checkpoints").iterdir()}
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", model, "--preset", "tiny")
    assert code == 2 and "already holds a model: pass --resume" in err
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", model, "--resume", "--size", 128)
    assert code == 2 and "is 64 px; it cannot resume at 128 px" in err
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", model, "--resume", "--preset", "fast")
    assert code == 2 and "is tiny preset; it cannot resume at fast preset" in err
    assert {p.name: p.read_bytes() for p in (model / "checkpoints").iterdir()} == before  # nothing touched

    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "m", "--size", 100)
    assert code == 2 and "argument --size: invalid choice: 100" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_out_of_gpu_memory_names_the_fix(faceset_a, faceset_b, tmp_path, capsys):
    # 2 GiB of the card, whatever its size: a batch that fits in host memory then overflows the GPU (on an
    # H200, a batch large enough to fill its 141 GB overflows the host's memory first)
    torch.cuda.set_per_process_memory_fraction(min(1.0, (2 << 30) / torch.cuda.get_device_properties(0).total_memory))
    try:
        code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "m", "--preset",
                           "quality", "--size", 256, "--batch", 256, "--iterations", 1, "--device", "cuda")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert code == 2 and "out of GPU memory" in err and "lower --batch or --size" in err


def test_a_batch_too_big_for_the_machine_is_refused_before_it_is_built(faceset_a, faceset_b, tmp_path, capsys,
                                                                      monkeypatch):
    """On a machine of 4 GiB (the faces may take a quarter), the largest batch at 256 px would not fit."""
    import engine.networks.augment

    monkeypatch.setattr(engine.networks.augment, "memory_budget", lambda: 1 << 30)
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "m", "--preset", "tiny",
                       "--size", 256, "--batch", 4096, "--iterations", 1, "--device", "cpu")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert last.startswith("error: a batch of 4096 faces at 256 px") and last.endswith("lower --batch or --size")


# ---------------------------------------------------------------- pieces


def test_overtraining_rule():
    falling = [[1.0 - 0.05 * i, 0.8 - 0.02 * i] for i in range(6)]
    assert not overtraining(falling)
    val_rising = [[1.0 - 0.05 * i, 0.6 + 0.03 * i] for i in range(6)]
    assert overtraining(val_rising)
    both_rising = [[0.5 + 0.05 * i, 0.6 + 0.03 * i] for i in range(6)]  # diverging, not overtraining
    assert not overtraining(both_rising)
    assert not overtraining(val_rising[:5])  # too few validations to tell


def test_lab_is_cie_lab():
    from skimage.color import rgb2lab

    rgb = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    lab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(lab, rgb2lab(rgb), atol=0.05)
    back = lab_to_rgb(torch.from_numpy(lab).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, rgb, atol=1e-4)


def test_batches_are_the_same_whatever_the_workers_or_cache(faceset_a, faceset_b):
    """Batch i depends on (seed, i) only, which is what makes resume exact with any loader."""
    samples = {k: Faceset(f).samples() for k, f in (("a", faceset_a), ("b", faceset_b))}
    batches = FaceBatches(samples, 128, SIZE, 4, Augmentation(), seed=5)
    loaded = [
        list(torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(7, 10), num_workers=workers))
        for workers in (0, 2)
    ]
    assert batches.preload(budget=10**9) and not FaceBatches(samples, 128, SIZE, 4, None).preload(budget=10**5)
    loaded.append([batches[i] for i in range(7, 10)])  # from memory
    for one, other, cached in zip(*loaded, strict=True):
        for k in ("a", "b"):
            for name in ("faces", "theta", "warp", "lab"):
                assert torch.equal(one[k][name], other[k][name]) and torch.equal(one[k][name], cached[k][name])
    assert not torch.equal(loaded[0][0]["a"]["warp"], loaded[0][1]["a"]["warp"])
    assert unaugmented_params(2)["warp"].max() == 0


@pytest.mark.parametrize("size", [64, 96, 192, 256])
def test_faces_load_at_any_model_size(faceset_a, size):
    """A faceset's faces reach the model at its size, whatever the ratio (96 from 128 px is a non-integer
    downscale, as 192 from 256 px is); the mask and the eye and mouth regions stay on the face."""
    sample = Faceset(faceset_a).samples()[0]
    face = load_face(sample, 128, size)
    assert face.shape == (size, size, 6) and face.dtype == np.uint8
    def coarse(image):  # both at 32 px, where resampling differences are gone and only content is left
        return cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)

    assert np.abs(coarse(face[..., :3]) - coarse(media.read_image(sample.image))).mean() < 2
    mask, eyes, mouth = (face[..., i] > 127 for i in (3, 4, 5))
    assert 0.2 < mask.mean() < 0.7 and eyes.any() and mouth.any()
    assert mask[eyes].mean() > 0.95 and mask[mouth].mean() > 0.95
