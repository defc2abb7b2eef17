"""Shared fixtures: short shots made from the public-domain photos, and facesets extracted from them.

Session-scoped, so the whole suite extracts each sample once.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import samples  # noqa: E402

SHOT_SIZE = (320, 240)
SHOT_FRAMES = 16


@pytest.fixture(scope="session")
def shot_a(tmp_path_factory) -> Path:
    """Astronaut, an image sequence folder frame_0001.png ... with drift, zoom, roll and light changes."""
    frames, _ = samples.make_clip("astronaut", SHOT_FRAMES, SHOT_SIZE)
    return samples.write_sequence(tmp_path_factory.mktemp("shot_a") / "frames", frames)


@pytest.fixture(scope="session")
def shot_b(tmp_path_factory) -> Path:
    """Grace Hopper, an mp4 video."""
    frames, _ = samples.make_clip("grace_hopper", SHOT_FRAMES, SHOT_SIZE, scale=0.6)
    return samples.write_video(tmp_path_factory.mktemp("shot_b") / "hopper.mp4", frames)


def _extract(shot: Path, folder: Path) -> Path:
    from engine.stages.extract import extract

    extract(shot, folder, detector="dlib", size=128)
    return folder


@pytest.fixture(scope="session")
def faceset_a(shot_a, tmp_path_factory) -> Path:
    """The astronaut faceset (dlib backend, 128 px faces)."""
    return _extract(shot_a, tmp_path_factory.mktemp("faceset_a") / "faceset")


@pytest.fixture(scope="session")
def faceset_b(shot_b, tmp_path_factory) -> Path:
    """The Grace Hopper faceset (dlib backend, 128 px faces), from the mp4."""
    return _extract(shot_b, tmp_path_factory.mktemp("faceset_b") / "faceset")


@pytest.fixture(scope="session")
def talking(tmp_path_factory) -> dict:
    """Grace Hopper opening and closing her mouth twice over 16 frames, and its faceset."""
    folder = tmp_path_factory.mktemp("talking")
    frames, _ = samples.make_clip("grace_hopper", 16, (320, 240), scale=0.6, mouth=0.3)
    shot = samples.write_sequence(folder / "frames", frames)
    return {"shot": shot, "faceset": _extract(shot, folder / "faceset")}


# Iterations of the tiny model: enough that each decoder redraws its own person recognisably (B->B close
# to B inside the mask), about a minute on 2 CPU cores.
TINY_ITERATIONS = 600


@pytest.fixture(scope="session")
def tiny_model(faceset_a, faceset_b, tmp_path_factory) -> Path:
    """A tiny-preset model (64 px) trained A<->B on the sample facesets; previews every 200 iterations."""
    from engine.stages.train import train

    folder = tmp_path_factory.mktemp("tiny_model") / "model"
    train(faceset_a, faceset_b, folder, preset="tiny", iterations=TINY_ITERATIONS, preview_every=200, seed=0,
          device="cpu")
    return folder


@pytest.fixture(scope="session")
def quick_model(faceset_a, faceset_b, tmp_path_factory) -> Path:
    """A tiny-preset model after 2 iterations: a real model folder for tests of what reads one, in seconds."""
    from engine.stages.train import train

    folder = tmp_path_factory.mktemp("quick_model") / "model"
    train(faceset_a, faceset_b, folder, preset="tiny", iterations=2, preview_every=1000, seed=0, device="cpu")
    return folder


def assert_same_run(straight: dict, resumed: dict, folder_a: Path, folder_b: Path) -> None:
    """Two training runs (their `done` summaries and model folders) agree loss for loss and weight for weight."""
    import torch

    from engine.networks.model import read_checkpoint, read_history

    a, b = read_history(folder_a / "history.csv"), read_history(folder_b / "history.csv")
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for row_a, row_b in zip(a, b, strict=True):
        for k in ("loss_a", "loss_b"):
            assert row_a[k] == pytest.approx(row_b[k], rel=1e-5), (row_a, row_b)
    weights_a = read_checkpoint(Path(straight["checkpoint"]))["model"]
    weights_b = read_checkpoint(Path(resumed["checkpoint"]))["model"]
    for name, value in weights_a.items():
        torch.testing.assert_close(value, weights_b[name], rtol=1e-5, atol=1e-6)


def run_engine(*args, timeout=300, env=None) -> subprocess.CompletedProcess:
    """`python -m engine ARGS` in its own process, as the add-on and a farm run it; `env` adds variables."""
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def empty_copy(faceset: Path, folder: Path) -> Path:
    """A copy of `faceset` whose alignments list every frame with no face."""
    from engine.folders.faceset import ALIGNMENTS_FILE, Alignments

    shutil.copytree(faceset, folder)
    alignments = Alignments.load(folder)
    for frame in alignments.frames:
        frame.faces = []
    alignments.save(folder / ALIGNMENTS_FILE)
    return folder


@pytest.fixture(scope="session")
def mask_model(faceset_b, tmp_path_factory) -> Path:
    """A copy of faceset_b holding a mask model (mask_model/) of 2 iterations at 32 px, trained on one
    all-face label of frame 1 (in the copy's parent, labels/): a real mask model folder in seconds."""
    import numpy as np

    from engine.base import media
    from engine.stages import occlusion

    root = tmp_path_factory.mktemp("masked")
    faceset = root / "faceset"
    shutil.copytree(faceset_b, faceset)
    media.write_image(root / "labels" / "mask_000001.png", np.full((240, 320), 255, np.uint8))
    occlusion.train(faceset, root / "labels", faceset / "mask_model", iterations=2, size=32, device="cpu")
    return faceset
