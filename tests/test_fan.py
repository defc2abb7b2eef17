"""The fan backend without its published weights: only files whose SHA-256 matches the published one are
unpickled, and then with weights_only, so a pickle payload never runs; downloads are verified before they
land; and face-alignment's own networks, with random weights in the published format, run through the
whole extract (batching, the landmark path, events) on the CPU."""

import json
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.random_fan import BOX_CENTER, BOX_SIDE, write_random_fan_weights
from engine.__main__ import main
from engine.base import media
from engine.base.events import EngineError
from engine.faces import detect
from engine.folders.faceset import Alignments
from tests.conftest import run_engine

DETECTOR_FILE = detect.FAN_WEIGHTS["detector"].name
LANDMARKS_FILE = detect.FAN_WEIGHTS["landmarks"].name


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """(folder, FAN_WEIGHTS table trusting its files): face-alignment's networks with random weights."""
    folder = tmp_path_factory.mktemp("random_fan") / "fan"
    return folder, write_random_fan_weights(folder)


class Payload:
    """Unpickling this creates `marker`: a stand-in for code a hostile weights file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def write_payload(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1_1.weight": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    return path


def test_payload_would_run_if_unpickled(tmp_path):
    """The payload is real: a plain torch.load runs it. The tests below prove the engine never does."""
    marker = tmp_path / "ran"
    torch.load(write_payload(tmp_path / DETECTOR_FILE, marker), weights_only=False)
    assert marker.exists()


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_pickle_payload_in_fan_weights_never_runs(shot_a, tmp_path, random_weights):
    weights = tmp_path / "fanw"
    marker = tmp_path / "payload_ran"
    write_payload(weights / DETECTOR_FILE, marker)
    (weights / LANDMARKS_FILE).write_bytes((random_weights[0] / LANDMARKS_FILE).read_bytes())

    result = run_engine("extract", shot_a, "-o", tmp_path / "fs", "--detector", "fan", "--fan-weights", weights,
                        "--device", "cpu", "--size", "64", "--frames", "1-2")
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(weights / DETECTOR_FILE) in error_lines(result)[0] and "SHA-256" in error_lines(result)[0]

    result = run_engine("extract", shot_a, "-o", tmp_path / "fs_auto", "--detector", "auto",
                        "--fan-weights", weights, "--device", "cpu", "--size", "64", "--frames", "1-2")
    assert result.returncode == 0, result.stderr
    assert DETECTOR_FILE in result.stderr and "using the dlib backend" in result.stderr
    assert Alignments.load(tmp_path / "fs_auto").detector == "dlib"
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fanw", "fs", "fs_auto"]  # no .fanw-hub beside it


def test_pickle_payload_in_torch_hub_cache_never_runs(shot_a, tmp_path):
    """Offline, with no weights of the engine's own, a payload in torch's hub cache is never even opened."""
    marker = tmp_path / "payload_ran"
    write_payload(tmp_path / "torch" / "hub" / "checkpoints" / DETECTOR_FILE, marker)
    env = {"TORCH_HOME": str(tmp_path / "torch"), "FACEREPLACE_WEIGHTS": str(tmp_path / "weights")}
    result = run_engine("extract", shot_a, "-o", tmp_path / "fs", "--detector", "fan", "--offline",
                        "--device", "cpu", "--size", "64", "--frames", "1-2", env=env)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(w in error_lines(result)[0] for w in ("--offline", "--fan-weights", "--detector dlib"))

    result = run_engine("extract", shot_a, "-o", tmp_path / "fs_auto", "--detector", "auto", "--offline",
                        "--device", "cpu", "--size", "64", "--frames", "1-2", "--events", env=env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]  # stdout holds only events
    assert events[-1]["event"] == "done" and events[-1]["detector"] == "dlib"
    assert not marker.exists()
    assert not (tmp_path / "weights").exists()  # offline touched nothing


def test_file_with_another_hash_is_refused_naming_it(shot_a, tmp_path, random_weights):
    """A loadable torch file that is not the published one (here: the random weights) is refused."""
    folder, _ = random_weights
    result = run_engine("extract", shot_a, "-o", tmp_path / "fs", "--detector", "fan", "--fan-weights", folder,
                        "--device", "cpu", "--size", "64", "--frames", "1-2")
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{folder / DETECTOR_FILE} is not the published {DETECTOR_FILE}" in error_lines(result)[0]


def test_download_is_verified_before_it_lands(tmp_path, random_weights, monkeypatch):
    folder, table = random_weights
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACEREPLACE_WEIGHTS", str(cache))
    served = {role: replace(w, url=(folder / w.name).as_uri()) for role, w in table.items()}

    tampered = dict(served, landmarks=replace(served["landmarks"], sha256_prefix="0" * 10))
    monkeypatch.setattr(detect, "FAN_WEIGHTS", tampered)
    with pytest.raises(EngineError, match="does not match its published SHA-256"):
        detect.fan_state_dicts()
    assert sorted(p.name for p in cache.iterdir()) == [DETECTOR_FILE]  # the good one stays, no temp file

    monkeypatch.setattr(detect, "FAN_WEIGHTS", served)
    states = detect.fan_state_dicts()
    assert sorted(p.name for p in cache.iterdir()) == sorted([DETECTOR_FILE, LANDMARKS_FILE])
    assert (cache / LANDMARKS_FILE).read_bytes() == (folder / LANDMARKS_FILE).read_bytes()
    assert set(states) == {"detector", "landmarks"} and all(isinstance(v, torch.Tensor)
                                                            for s in states.values() for v in s.values())

    def no_network(*args, **kwargs):
        raise AssertionError("offline must not reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    (cache / LANDMARKS_FILE).unlink()
    with pytest.raises(EngineError, match="--offline forbids downloading"):
        detect.fan_state_dicts(offline=True)


def test_weights_verb_fetches_verified_files_for_offline_extract(tmp_path, random_weights, monkeypatch, capsys):
    """`engine weights --folder DIR` (the add-on's Download Detector Weights): each file lands only once its
    hash matched, with progress events; a tampered download leaves nothing but the good file; `--check`
    names what is missing; a folder it filled serves `extract --fan-weights DIR` offline."""
    folder, table = random_weights
    served = {role: replace(w, url=(folder / w.name).as_uri()) for role, w in table.items()}
    target = tmp_path / "fetched"

    monkeypatch.setattr(detect, "FAN_WEIGHTS", dict(served, landmarks=replace(served["landmarks"], sha256_prefix="0" * 10)))
    assert main(["weights", "--folder", str(target), "--events"]) == 2
    out = capsys.readouterr()
    assert [line for line in out.err.splitlines() if line.startswith("error:")] == [
        f"error: the download of {served['landmarks'].url} does not match its published SHA-256; nothing was kept"]
    assert sorted(p.name for p in target.iterdir()) == [DETECTOR_FILE]  # no temp file, no tampered file

    monkeypatch.setattr(detect, "FAN_WEIGHTS", served)
    assert main(["weights", "--folder", str(target), "--check"]) == 2
    assert f"{target} lacks {LANDMARKS_FILE}" in capsys.readouterr().err
    assert main(["weights", "--folder", str(target), "--events"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e.get("file") for e in events if e["event"] == "progress"} == {LANDMARKS_FILE}  # the detector was there
    assert events[-1]["event"] == "done" and events[-1]["folder"] == str(target)
    for name in (DETECTOR_FILE, LANDMARKS_FILE):
        assert (target / name).read_bytes() == (folder / name).read_bytes()
    assert set(detect.fan_state_dicts(target)) == {"detector", "landmarks"}


def test_extract_runs_face_alignments_networks_with_random_weights(shot_b, tmp_path, random_weights, monkeypatch,
                                                                  capsys):
    """`extract --detector fan --fan-weights DIR` on a real clip, in a batch of two frames: the detector
    finds the one box it is wired to find, the landmark network runs on it, and the faceset and the events
    are those of a real run. The batch the detector sees holds the frames' own pixels, in order."""
    folder, table = random_weights
    monkeypatch.setattr(detect, "FAN_WEIGHTS", table)
    before = sorted(p.name for p in folder.parent.iterdir())
    batches = []

    def keep_batches(module, inputs):
        if type(module).__name__ == "s3fd":
            batches.append(inputs[0].detach().clone())

    hook = torch.nn.modules.module.register_module_forward_pre_hook(keep_batches)
    try:
        code = main(["extract", str(shot_b), "-o", str(tmp_path / "fs"), "--detector", "fan", "--fan-weights",
                     str(folder), "--device", "cpu", "--batch", "2", "--frames", "1-2", "--size", "64",
                     "--events"])
    finally:
        hook.remove()
    out = capsys.readouterr()
    assert code == 0, out.err
    (batch,) = batches
    frames = np.stack([media.to_srgb8(image) for _, image in media.FrameSource(shot_b).frames([1, 2])])
    bgr_minus_mean = frames[..., ::-1].astype(np.float32) - np.array([104.0, 117.0, 123.0], np.float32)  # S3FD's input
    np.testing.assert_allclose(batch.numpy(), bgr_minus_mean.transpose(0, 3, 1, 2), atol=1e-4)

    events = [json.loads(line) for line in out.out.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    detect_progress = [e for e in events if e["event"] == "progress" and "phase" not in e]
    assert [e["done"] for e in detect_progress] == [2]
    done = events[-1]
    assert done["detector"] == "fan" and done["frames"] == 2 and done["frames_with_faces"] == 2

    alignments = Alignments.load(tmp_path / "fs")
    assert alignments.detector == "fan" and [f.number for f in alignments.frames] == [1, 2]
    expected_box = [BOX_CENTER[0] - BOX_SIDE / 2, BOX_CENTER[1] - BOX_SIDE / 2,
                    BOX_CENTER[0] + BOX_SIDE / 2, BOX_CENTER[1] + BOX_SIDE / 2]
    for frame in alignments.frames:
        (face,) = frame.faces
        np.testing.assert_allclose(face.bbox, expected_box, atol=0.5)
        assert np.shape(face.landmarks) == (68, 2) and 0 <= face.landmark_confidence <= 1
        assert media.read_image(tmp_path / "fs" / face.image).shape == (64, 64, 3)

    first, second = (frame.faces[0].landmarks_raw for frame in alignments.frames)
    assert not np.allclose(first, second)  # each frame's landmarks come from its own pixels
    assert sorted(p.name for p in folder.parent.iterdir()) == before  # nothing written beside the weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fan_batches_on_cuda_like_the_cpu(shot_b, random_weights, monkeypatch):
    """The CUDA batch path finds the same boxes as the CPU and lands the landmarks nearly where the CPU does
    (random heat maps have no sharp peak, so a TF32 rounding may move a few of them)."""
    folder, table = random_weights
    monkeypatch.setattr(detect, "FAN_WEIGHTS", table)
    frames = [media.to_srgb8(image) for _, image in media.FrameSource(shot_b).frames([1, 2, 3])]
    on_cpu = detect.make_detector("fan", "cpu", fan_weights=folder).detect_batch(frames)
    on_cuda = detect.make_detector("fan", "cuda", fan_weights=folder).detect_batch(frames)
    for (cpu,), (cuda,) in zip(on_cpu, on_cuda, strict=True):
        np.testing.assert_allclose(cpu.bbox, cuda.bbox, atol=1.0)
        assert np.median(np.linalg.norm(cpu.landmarks - cuda.landmarks, axis=1)) < 2.0
