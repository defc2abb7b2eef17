"""Training options beyond the defaults: the LIAE architecture, the late phase (no warp, learning-rate
dropout), pretraining a base model and starting a pair from it. Tiny models on the sample facesets."""

import json
from pathlib import Path

import numpy as np
import torch

from engine.__main__ import main
from engine.base import media
from engine.faces.expression import EXPRESSION_STEP, expression_balance_weights, openings
from engine.folders.faceset import Faceset
from engine.networks.augment import Augmentation, FaceBatches
from engine.networks.model import (
    FORMAT,
    VERSION,
    latest_checkpoint,
    load_model,
    read_checkpoint,
    read_history,
)
from engine.stages import train as train_module
from engine.stages.convert import convert
from engine.stages.train import masked_step, train
from tests.conftest import assert_same_run


def quick(a, b, model, **options):
    return train(a, b, model, **{"preset": "tiny", "preview_every": 1000, "save_every": 1000, "device": "cpu",
                                 **options})


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["train", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- late phase


def test_late_phase_turns_the_warp_off_and_resumes_exactly(faceset_a, faceset_b, tmp_path, monkeypatch):
    warped = []
    real_augment = train_module.augment

    def recording_augment(batch, device, train=True):
        warped.append(train)
        return real_augment(batch, device, train=train)

    monkeypatch.setattr(train_module, "augment", recording_augment)
    schedule = {"no_warp_after": 15, "lr_dropout": 0.3}
    straight = quick(faceset_a, faceset_b, tmp_path / "straight", iterations=40, seed=2, schedule=schedule)
    # two identities per iteration; validation and previews call augment with train=False too, so count
    # only the training calls: the first 15 iterations warp, the rest do not
    training = warped[: 2 * 40]
    assert training == [True] * 30 + [False] * 50
    assert read_checkpoint(Path(straight["checkpoint"]))["late_from"] == 16

    quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=20, seed=2, schedule=schedule)
    resumed = quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=40, resume=True)
    assert_same_run(straight, resumed, tmp_path / "straight", tmp_path / "resumed")


def test_late_phase_as_a_share_of_the_run(faceset_a, faceset_b, tmp_path, capsys):
    code, out, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "m", "--preset", "tiny",
                         "--iterations", 20, "--no-warp-after", 0.75, "--events")
    assert code == 0, err
    late = [json.loads(line) for line in out.splitlines() if '"late_phase"' in line]
    assert [e["iteration"] for e in late] == [16]
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "n", "--no-warp-after", 0.5)
    assert code == 2 and "error: --no-warp-after takes an iteration" in err and "neither given" in err
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "n", "--iterations", 5,
                       "--lr-dropout", 0)
    assert code == 2 and "error: python -m engine train: argument --lr-dropout: 0 is not above 0" in err


def test_learning_rate_dropout_updates_only_a_share_of_the_weights():
    torch.manual_seed(0)
    layer = torch.nn.Linear(100, 100)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    layer(torch.randn(8, 100)).square().mean().backward()
    masked_step(optimizer, 0.3, torch.Generator().manual_seed(0))
    changed = (layer.weight != before).float().mean().item()
    assert 0.25 < changed < 0.35
    assert optimizer.state[layer.weight]["exp_avg"].ne(0).float().mean() > 0.9  # the moments saw every gradient


# ---------------------------------------------------------------- LIAE


def test_liae_trains_resumes_exactly_and_converts(faceset_a, faceset_b, shot_b, tmp_path):
    options = {"seed": 1, "architecture": "liae"}
    straight = quick(faceset_a, faceset_b, tmp_path / "straight", iterations=40, **options)
    quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=20, **options)
    resumed = quick(faceset_a, faceset_b, tmp_path / "resumed", iterations=40, resume=True)
    assert_same_run(straight, resumed, tmp_path / "straight", tmp_path / "resumed")
    history = read_history(tmp_path / "straight" / "history.csv")
    assert history[-1]["loss_b"] < history[0]["loss_b"]

    model, config = load_model(tmp_path / "straight")
    assert config.architecture == "liae" and not hasattr(model, "decoders")
    out = tmp_path / "out"
    convert(shot_b, faceset_b, tmp_path / "straight", out, mask="hull", frames="1-2", device="cpu")
    layer = media.read_image(out / "face" / "face_000001.png")
    assert layer[..., 3].max() > 60000  # an opaque face was drawn


def test_old_checkpoints_load_as_df(tiny_model, tmp_path):
    state = read_checkpoint(sorted((tiny_model / "checkpoints").iterdir())[-1])
    del state["config"]["architecture"]  # as written before the option existed
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "old" / "checkpoints" / "model_00000001.pt")
    model, config = load_model(tmp_path / "old")
    assert config.architecture == "df" and set(model.decoders) == {"a", "b"}
    assert state["format"] == FORMAT and state["version"] == VERSION


# ---------------------------------------------------------------- pretrain and init


def test_pretrain_a_base_then_start_a_pair_from_it(tiny_model, faceset_a, faceset_b, tmp_path, capsys):
    base = tmp_path / "base"
    code, out, err = cli(capsys, "--pretrain", "--faces", faceset_a, faceset_b, "--model", base, "--preset", "tiny",
                         "--iterations", 10)
    assert code == 0, err
    summary = json.loads((base / "model.json").read_text())
    assert summary["iteration"] == 10 and len(summary["facesets"]) == 2

    # A pair from a trained base starts where the base is, not from noise: its loss after 10 iterations
    # is far below a new model's.
    scratch = quick(faceset_a, faceset_b, tmp_path / "scratch", iterations=10, seed=4)
    started = quick(faceset_a, faceset_b, tmp_path / "started", iterations=10, seed=4, init_from=tiny_model)
    assert started["loss_b"] < 0.7 * scratch["loss_b"]
    assert read_checkpoint(Path(started["checkpoint"]))["iteration"] == 10  # its own count, not the base's

    for option, value, words in (("--size", 128, "is 64 px; it cannot start from it at 128 px"),
                                 ("--architecture", "liae", "is df architecture; it cannot start from it at liae")):
        code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "refused",
                           "--init-from", tiny_model, option, value)
        assert code == 2 and err.startswith("error:") and words in err, err
        assert not (tmp_path / "refused" / "checkpoints").exists()
    code, _, err = cli(capsys, "--a", faceset_a, "--b", faceset_b, "--model", tmp_path / "n", "--init-from",
                       tmp_path / "nothing")
    assert code == 2 and "error: --init-from" in err and "holds no model" in err
    code, _, err = cli(capsys, "--pretrain", "--a", faceset_a, "--model", tmp_path / "n")
    assert code == 2 and "error: --pretrain takes its facesets as --faces" in err
    code, _, err = cli(capsys, "--a", faceset_a, "--model", tmp_path / "n")
    assert code == 2 and "error: train a pair with --a FACESET --b FACESET" in err
    assert np.isfinite(started["loss_a"])


# ---------------------------------------------------------------- balanced expressions


def test_balanced_expressions_show_the_rare_wide_mouth_more_often(talking, tmp_path, capsys, monkeypatch):
    """Hopper opens her mouth widest in one frame of 16, an opening no other face shows. Balanced, the
    batches show that face as often as the square roots of each step's faces say (1 of their sum, 1 in 8.6
    here), about twice as often as plain sampling (1 in 16); and `--balance-expressions` reaches the
    batches of a run, is kept in its checkpoint and resumes with it."""
    samples = {"b": Faceset(talking["faceset"]).samples()}
    mouths = [openings(s.landmarks)[0] for s in samples["b"]]
    widest = int(np.argmax(mouths))
    steps = np.array([int(m // EXPRESSION_STEP) for m in mouths])
    assert (steps == steps[widest]).sum() == 1  # the widest opening is a step of its own
    expected = 1 / sum(np.sqrt(np.unique(steps, return_counts=True)[1]))
    shares = {}
    for balanced in (False, True):
        weights = {"b": expression_balance_weights([s.landmarks for s in samples["b"]])} if balanced else None
        batches = FaceBatches(samples, 128, 64, 4, Augmentation(), weights=weights)
        assert batches.preload(budget=10**9)
        faces = torch.cat([batches[i]["b"]["faces"] for i in range(1, 401)])
        shares[balanced] = (faces == torch.from_numpy(batches.cache["b"][widest])).flatten(1).all(1).float().mean()
    assert abs(shares[False] - 1 / 16) < 0.025 and abs(shares[True] - expected) < 0.04
    assert shares[True] > 1.6 * shares[False]

    picked = []
    real_getitem = FaceBatches.__getitem__

    def recording(self, iteration):
        picked.append(bool(self.weights))
        return real_getitem(self, iteration)

    monkeypatch.setattr(FaceBatches, "__getitem__", recording)
    run = ["--a", talking["faceset"], "--b", talking["faceset"], "--model", tmp_path / "m", "--preset", "tiny"]
    code, _, err = cli(capsys, *run, "--iterations", 2, "--balance-expressions")
    assert code == 0, err
    assert latest_checkpoint(tmp_path / "m")[0]["settings"]["balance_expressions"] is True
    code, _, err = cli(capsys, *run, "--iterations", 3, "--resume")
    assert code == 0, err
    assert picked == [True] * 3
