"""The adversarial phase (--gan-weight, --gan-after): off by default and identical to a plain run until it
starts; a patch discriminator from then on, saved in the checkpoint, resumed exactly. Tiny models on the
sample facesets, on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.base.checkpoints import checkpoint_paths
from engine.networks.adversarial import make_adversary
from engine.networks.losses import patch_mean
from engine.networks.model import load_model, read_checkpoint, read_history
from tests.conftest import ROOT, assert_same_run
from tests.test_train import face_tiles
from tests.test_train_options import cli, quick


def test_off_by_default_and_identical_until_the_phase_starts(faceset_a, faceset_b, tmp_path):
    options = {"iterations": 20, "seed": 5, "log_every": 5}
    plain = quick(faceset_a, faceset_b, tmp_path / "plain", **options)
    off = quick(faceset_a, faceset_b, tmp_path / "off", **options, adversarial={"weight": 0, "after": 5})
    assert_same_run(plain, off, tmp_path / "plain", tmp_path / "off")
    for summary in (plain, off):
        state = read_checkpoint(Path(summary["checkpoint"]))
        assert "discriminator" not in state and "adversarial_from" not in state

    on = quick(faceset_a, faceset_b, tmp_path / "on", **options, adversarial={"weight": 0.5, "after": 10})
    rows_plain, rows_on = (read_history(tmp_path / name / "history.csv") for name in ("plain", "on"))
    # the same losses, to the last bit, while the discriminator does not exist; then the model learns otherwise
    assert [r["loss_b"] for r in rows_on[:2]] == [r["loss_b"] for r in rows_plain[:2]]
    assert [r["loss_b"] for r in rows_on[2:]] != [r["loss_b"] for r in rows_plain[2:]]
    state = read_checkpoint(Path(on["checkpoint"]))
    assert state["adversarial_from"] == 11
    assert set(state["discriminator"]) == {"model", "optimizer"}
    assert state["discriminator"]["optimizer"]["state"]  # it has taken steps
    assert set(state["model"]) == set(read_checkpoint(Path(plain["checkpoint"]))["model"])  # the face model's own


def test_resume_is_exact_across_the_phase_start(faceset_a, faceset_b, tmp_path):
    """40 straight == 10 (before the phase; a checkpoint without a discriminator, as old ones are), resumed
    to 20 (the phase starts at 16), resumed to 40 (the discriminator comes back from the checkpoint)."""
    gan = {"weight": 0.3, "after": 15}
    straight = quick(faceset_a, faceset_b, tmp_path / "straight", iterations=40, seed=2, adversarial=gan)
    quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=10, seed=2, adversarial=gan)
    quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=20, resume=True)
    resumed = quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=40, resume=True)
    assert_same_run(straight, resumed, tmp_path / "straight", tmp_path / "resumed")
    states = [read_checkpoint(Path(s["checkpoint"])) for s in (straight, resumed)]
    assert states[0]["adversarial_from"] == states[1]["adversarial_from"] == 16
    for name, value in states[0]["discriminator"]["model"].items():
        torch.testing.assert_close(value, states[1]["discriminator"]["model"][name], rtol=1e-5, atol=1e-6)


def test_a_resume_at_a_new_learning_rate_gives_it_to_the_discriminator_too(faceset_a, faceset_b, tmp_path):
    quick(faceset_a, faceset_b, tmp_path / "m", iterations=10, adversarial={"weight": 0.3, "after": 5})
    summary = quick(faceset_a, faceset_b, tmp_path / "m", iterations=14, resume=True, learning_rate=2e-4)
    state = read_checkpoint(Path(summary["checkpoint"]))
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [2e-4]
    assert [g["lr"] for g in state["discriminator"]["optimizer"]["param_groups"]] == [2e-4]


def test_phase_starts_at_a_share_of_the_run_with_one_event(faceset_a, faceset_b, tmp_path, capsys):
    code, out, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "m", "--preset", "tiny",
                         "--iterations", 12, "--gan-weight", 0.1, "--gan-after", 0.5, "--events")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["iteration"] for e in events if e["event"] == "adversarial_phase"] == [7]
    # without --gan-after it joins the late phase
    code, out, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "late", "--preset",
                         "tiny", "--iterations", 6, "--no-warp-after", 3, "--gan-weight", 0.1, "--events")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["event"], e["iteration"]) for e in events if e["event"].endswith("_phase")] == [
        ("late_phase", 4), ("adversarial_phase", 4)]


def test_distributed_data_parallel_trains_one_discriminator(faceset_a, faceset_b, tmp_path):
    """Two CPU processes (gloo): the phase starts in both at once and the discriminator they share is saved."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "engine",
         "train", "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "m", "--preset", "tiny", "--iterations",
         "6", "--log-every", "3", "--device", "cpu", "--gan-weight", "0.1", "--gan-after", "3", "--events"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["iteration"] for e in events if e["event"] == "adversarial_phase"] == [4]
    state = read_checkpoint(checkpoint_paths(tmp_path / "m")[0])
    assert state["iteration"] == 6 and state["adversarial_from"] == 4 and state["discriminator"]["optimizer"]["state"]


@pytest.mark.parametrize("options, words", [
    (["--gan-weight", "-0.1"], "argument --gan-weight: -0.1 is not at least 0"),
    (["--gan-weight", "0.1"], "--gan-weight needs --gan-after"),
    (["--gan-weight", "0.1", "--gan-after", "0.5"], "--gan-after takes an iteration, or a share"),
    (["--gan-weight", "0.1", "--gan-after", "-2", "--iterations", "5"], "argument --gan-after: -2 is not at least 0"),
])
def test_bad_values_are_refused(faceset_a, faceset_b, tmp_path, capsys, options, words):
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "m", "--preset", "tiny",
                       *options)
    assert code == 2 and err.startswith("error:") and words in err, err
    assert "Traceback" not in err and not (tmp_path / "m" / "checkpoints").exists()


def test_the_discriminator_learns_to_tell_real_faces_from_the_models(tiny_model, faceset_b):
    """On B's faces and a converged model's redrawing of them, the discriminator's own steps take its loss
    from about 1 (a new one scores everything 0) to far below 0.5 (the best of one that cannot tell them
    apart), scoring the real faces' patches above the drawn ones'."""
    model, _ = load_model(tiny_model, "cpu")
    faces, mask = face_tiles(faceset_b, 16)
    with torch.no_grad():
        drawn, _ = model.swap(faces, "b")
    adversary = make_adversary(0.1, 1e-3, 0, torch.device("cpu"))
    targets, rgbs = [[faces[:8], mask[:8]], [faces[8:], mask[8:]]], [drawn[:8], drawn[8:]]
    losses = [adversary.step(rgbs, targets).item() for _ in range(150)]
    assert losses[0] > 0.9 and max(losses[-10:]) < 0.25, losses[::10]
    with torch.no_grad():
        real, fake = (patch_mean(adversary.discriminator(x * mask), mask).item() for x in (faces, drawn))
    assert real > 0.5 > fake, (real, fake)
