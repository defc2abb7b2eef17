"""The enhancer stage (engine enhance) and convert with it: A's face at twice the tiny model's 64 px."""

import json
import shutil

import numpy as np
import pytest
import torch

from engine.base import media
from engine.base.checkpoints import checkpoint_paths
from engine.folders.faceset import ALIGNMENTS_FILE, Alignments, Faceset
from engine.folders.output import read_marking
from engine.networks.augment import load_face
from engine.networks.enhancer import load_enhancer, parse_checkpoint
from engine.networks.model import enhancer_dir, read_history
from engine.stages import enhance as enhance_module
from engine.stages.convert import convert
from engine.stages.enhance import enhance
from engine.stages.train import train
from tests.conftest import run_engine

TINY = {"width": 8, "blocks": 1, "batch": 2, "device": "cpu"}  # an enhancer of a few thousand weights


@pytest.fixture
def model_copy(quick_model, tmp_path):
    """A copy of the 2-iteration tiny model, for a test to give an enhancer of its own."""
    return shutil.copytree(quick_model, tmp_path / "model")


@pytest.mark.parametrize("gan_weight", [0, 0.5])
def test_a_stopped_and_resumed_enhancer_ends_bit_identical_to_a_straight_run(gan_weight, quick_model, faceset_a, tmp_path):
    """With the adversarial loss too: its discriminator is saved with the enhancer and comes back on --resume."""
    straight, resumed = (shutil.copytree(quick_model, tmp_path / name) for name in ("straight", "resumed"))
    done = enhance(straight, faceset_a, iterations=6, log_every=1, seed=3, gan_weight=gan_weight, **TINY)
    first = enhance(resumed, faceset_a, iterations=3, log_every=1, seed=3, gan_weight=gan_weight, **TINY)
    assert first["stopped"] == "iterations" and first["iterations"] == 3
    again = enhance(resumed, faceset_a, iterations=6, log_every=1, resume=True, device="cpu")
    assert again["iterations"] == done["iterations"] == 6 and again["size"] == done["size"] == 128
    states = [parse_checkpoint((p := checkpoint_paths(enhancer_dir(m))[0]).read_bytes()) for m in (straight, resumed)]
    weights = [state["model"] for state in states]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert ("discriminator" in states[1]) == bool(gan_weight) and states[1]["config"]["gan_weight"] == gan_weight
    if gan_weight:
        critics = [state["discriminator"]["model"] for state in states]
        assert all(torch.equal(critics[0][k], critics[1][k]) for k in critics[0])
    assert any(weights[0][k].abs().sum() > 0 for k in weights[0] if k.startswith("tail"))  # it learnt something
    rows = [read_history(enhancer_dir(m) / "history.csv", ["iteration", "elapsed_s", "loss"]) for m in (straight, resumed)]
    assert [r["iteration"] for r in rows[0]] == [r["iteration"] for r in rows[1]] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    summary = json.loads((enhancer_dir(resumed) / "model.json").read_text())
    assert summary["iteration"] == 6 and summary["checkpoint"] == f"checkpoints/{p.name}"
    assert (enhancer_dir(resumed) / "preview.png").is_file()


def test_only_a_faces_reach_its_batches(faceset_a, faceset_b, tmp_path, monkeypatch):
    """B's faces painted pure green train the face model beside A; the enhancer's batches hold A's faces alone."""
    green_b = shutil.copytree(faceset_b, tmp_path / "green_b")
    for path in (green_b / "faces").iterdir():
        media.write_image(path, np.tile(np.array([0, 255, 0], np.uint8), (128, 128, 1)))
    model = tmp_path / "model"
    train(faceset_a, green_b, model, preset="tiny", iterations=2, preview_every=1000, device="cpu")
    seen = []

    def recording_augment(batch, device, train=True):
        seen.append(batch["faces"].clone())
        return augment(batch, device, train)

    augment = enhance_module.augment
    monkeypatch.setattr(enhance_module, "augment", recording_augment)
    enhance(model, faceset_a, iterations=4, **TINY)
    faces_a = [load_face(s, 128, 128) for s in Faceset(faceset_a).samples()]
    batches = torch.cat(seen).numpy()
    assert len(batches) >= 4 * TINY["batch"]
    for face in batches:
        assert any(np.array_equal(face, a) for a in faces_a)
        rgb = face[..., :3].reshape(-1, 3).astype(float).mean(0)
        assert not (rgb[1] > 200 and rgb[0] < 50 and rgb[2] < 50)  # never one of B's green faces


def test_convert_with_the_enhancer_draws_a_at_its_size_where_the_face_is(model_copy, faceset_a, faceset_b, shot_b,
                                                                          tmp_path):
    options = {"frames": "1-2", "write_patches": True, "mask": "hull", "device": "cpu"}  # a 2-iteration model's mask is a haze
    plain = convert(shot_b, faceset_b, model_copy, tmp_path / "plain", **options)
    enhance(model_copy, faceset_a, iterations=3, **TINY)
    enhanced = convert(shot_b, faceset_b, model_copy, tmp_path / "enhanced", **options)
    off = convert(shot_b, faceset_b, model_copy, tmp_path / "off", enhancer="off", **options)
    assert plain["faces"] == enhanced["faces"] == off["faces"] == 2
    for number in (1, 2):
        patches = {name: media.read_image(tmp_path / name / "patch" / f"patch_{number:06d}.png")
                   for name in ("plain", "enhanced", "off")}
        assert patches["plain"].shape[:2] == (64, 64) and patches["enhanced"].shape[:2] == (128, 128)
        mattes = {name: media.read_image(tmp_path / name / "matte" / f"matte_{number:06d}.png")
                  for name in ("plain", "enhanced", "off")}
        faces = {name: media.read_image(tmp_path / name / "face" / f"face_{number:06d}.png")
                 for name in ("plain", "enhanced", "off")}
        # without the enhancer nothing changes, pixel for pixel
        assert np.array_equal(mattes["plain"], mattes["off"]) and np.array_equal(faces["plain"], faces["off"])
        # with it the face lies where the model's did (its hull drawn at 128 px, not 64, is a little tighter)
        centres = [np.average(np.indices(mattes[name].shape).reshape(2, -1), axis=1, weights=mattes[name].ravel())
                   for name in ("plain", "enhanced")]
        assert np.abs(centres[0] - centres[1]).max() < 1
        boxes = [np.argwhere(mattes[name] > 0) for name in ("plain", "enhanced")]
        assert np.abs(boxes[0].min(0) - boxes[1].min(0)).max() <= 5
        assert np.abs(boxes[0].max(0) - boxes[1].max(0)).max() <= 5
        inside = (mattes["plain"] > 60000) & (mattes["enhanced"] > 60000)
        assert inside.sum() > 500 and not np.array_equal(faces["plain"][inside], faces["enhanced"][inside])
        marking = read_marking(tmp_path / "enhanced" / "face" / f"face_{number:06d}.png")
        enhancer = load_enhancer(model_copy, "cpu", None)
        assert marking["settings"]["enhancer"] == enhancer.hash
        assert "enhancer" not in read_marking(tmp_path / "off" / "face" / f"face_{number:06d}.png")["settings"]


def test_cli_reports_as_train_does(model_copy, faceset_a):
    result = run_engine("enhance", "--model", model_copy, "--faceset-a", faceset_a, "--iterations", 2, "--width", 8,
                        "--blocks", 1, "--batch", 2, "--log-every", 1, "--preview-every", 2, "--device", "cpu",
                        "--events")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "progress", "progress", "preview", "done"], kinds
    start, done = events[0], events[-1]
    assert start["stage"] == "enhance" and start["input_size"] == 64 and start["size"] == 128 and start["iteration"] == 0
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [1, 2]
    assert done["stopped"] == "iterations" and done["iterations"] == 2 and media.read_image(done["preview"]).shape[1] == 3 * 128


@pytest.mark.parametrize("case, words", [
    ("no model", "no model checkpoint in"),
    ("no faceset", "faceset folder not found"),
    ("resume nothing", "nothing to resume"),
    ("wrong size", "2 or 4 times the model's 64 px"),
    ("other coverage", "coverage"),
    ("in use", "is in use by another run"),
])
def test_bad_inputs_give_one_line_errors(case, words, model_copy, faceset_a, tmp_path):
    model, faceset = model_copy, faceset_a
    extra = []
    if case == "no model":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "no faceset":
        faceset = tmp_path / "missing"
    elif case == "resume nothing":
        extra = ["--resume"]
    elif case == "wrong size":
        extra = ["--size", "96"]
    elif case == "other coverage":
        faceset = shutil.copytree(faceset_a, tmp_path / "other")
        alignments = Alignments.load(faceset)
        alignments.coverage = 0.5
        alignments.save(faceset / ALIGNMENTS_FILE)
    @media.holds_folder_locks
    def run(hold: bool):
        if hold:  # another enhance of the same model, as far as the folder's lock tells
            media.lock_folder(media.check_writable(enhancer_dir(model)))
        return run_engine("enhance", "--model", model, "--faceset-a", faceset, "--iterations", 1, "--device", "cpu",
                          *extra)

    result = run(case == "in use")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and words in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert not checkpoint_paths(enhancer_dir(model))
