"""Extract on real faces: landmarks, alignment, smoothing, identity, the alignments file, resume, errors."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from demo import samples
from engine.base import colorspace, media
from engine.faces import align
from engine.faces.detect import make_detector
from engine.folders.faceset import Alignments, Faceset
from engine.stages.extract import extract
from tests.conftest import ROOT, run_engine


def photo_landmarks(photo: str) -> np.ndarray:
    found = make_detector("dlib").detect(samples.PHOTOS[photo]())
    return max(found, key=lambda d: d.area).landmarks


def test_landmarks_follow_the_known_transform(faceset_a):
    """Each frame's raw landmarks sit within a few pixels of the photo's landmarks moved by that frame's
    known drift/zoom/roll."""
    truth = photo_landmarks("astronaut")
    _, matrices = samples.make_clip("astronaut", 16, (320, 240))
    alignments = Alignments.load(faceset_a)
    assert len(alignments.frames) == 16
    for frame, m in zip(alignments.frames, matrices, strict=True):
        expected = align.transform_points(truth, m)
        raw = np.asarray(frame.faces[0].landmarks_raw)
        error = np.linalg.norm(raw - expected, axis=1)
        assert np.median(error) < 2.5, (frame.number, np.median(error))
        assert np.percentile(error, 90) < 5.0


def test_aligned_faces_agree_across_transforms(tmp_path):
    """One face under different shifts, zooms and rolls aligns to (almost) the same pixels."""
    frames, _ = samples.make_clip("grace_hopper", 16, (400, 360), scale=0.7, light=0.0)
    out = extract(samples.write_sequence(tmp_path / "shot", frames), tmp_path / "fs", detector="dlib", size=128)
    assert out["faces"] == 16
    faceset = Faceset(tmp_path / "fs")
    # A light blur: the shot itself was resampled once per frame, which no alignment can undo.
    faces = [cv2.GaussianBlur(media.read_image(s.image).astype(np.float32), (0, 0), 1.5) for s in faceset.samples()]
    hull = media.read_image(faceset.samples()[0].mask_hull) > 127
    diffs = [np.abs(face - faces[0])[hull].mean() for face in faces[1:]]
    assert max(diffs) < 9.0 and np.median(diffs) < 7.0, diffs  # 8-bit levels, inside the face


def test_smoothing_cuts_jitter_on_a_noisy_clip(tmp_path):
    """Pixel noise makes raw landmarks jitter; the smoothed ones jitter far less yet stay on the face."""
    frames, _ = samples.make_clip("astronaut", 24, (320, 240), motion=0.3, light=0.0)
    rng = np.random.default_rng(0)
    noisy = [np.clip(f + rng.normal(0, 10, f.shape), 0, 255).astype(np.uint8) for f in frames]
    extract(samples.write_sequence(tmp_path / "shot", noisy), tmp_path / "fs", detector="dlib", size=64)
    faces = [face for _, face in Alignments.load(tmp_path / "fs").faces()]
    raw = np.stack([f.landmarks_raw for f in faces])
    smooth = np.stack([f.landmarks for f in faces])

    def jitter(track):  # mean size of the second temporal difference: acceleration that motion lacks
        return np.linalg.norm(track[2:] - 2 * track[1:-1] + track[:-2], axis=2).mean()

    assert jitter(smooth) < 0.5 * jitter(raw), (jitter(smooth), jitter(raw))
    assert np.linalg.norm(smooth - raw, axis=2).mean() < 2.0


@pytest.mark.parametrize("photo, side", [("astronaut", "left"), ("grace_hopper", "right")])
def test_reference_picks_the_right_person(tmp_path, photo, side):
    frame = samples.two_faces_frame()
    shot = samples.write_sequence(tmp_path / "shot", [frame] * 3)
    ref = tmp_path / "ref.png"
    media.write_image(ref, samples.PHOTOS[photo]())
    extract(shot, tmp_path / "fs", detector="dlib", size=64, references=[ref])
    alignments = Alignments.load(tmp_path / "fs")
    for f in alignments.frames:
        assert f.detections == 2
        x_centre = np.mean(f.faces[0].bbox[0::2])
        assert (x_centre < frame.shape[1] / 2) == (side == "left")


def test_alignments_round_trip(faceset_b, tmp_path):
    alignments = Alignments.load(faceset_b)
    alignments.save(tmp_path / "copy.json")
    again = Alignments.load(tmp_path / "copy.json")
    assert again == alignments
    assert json.loads((tmp_path / "copy.json").read_text())["version"] == 1
    assert alignments.source_kind == "video" and alignments.source_frames == list(range(1, 17))
    face = alignments.frames[0].faces[0]
    assert len(face.landmarks) == 68 and len(face.embedding) == 128 and np.shape(face.matrix) == (2, 3)


def test_extract_events_are_json_lines(shot_b, tmp_path):
    result = run_engine("extract", shot_b, "--output", tmp_path / "fs", "--detector", "dlib", "--size", "64",
                        "--frames", "3-10", "--every", "2", "--events")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    assert {"progress"} <= {e["event"] for e in events}
    done = events[-1]
    assert done["frames"] == 4 and done["frames_with_faces"] == 4 and done["faces"] == 4
    assert [f.number for f in Alignments.load(tmp_path / "fs").frames] == [3, 5, 7, 9]


def test_resume_after_kill(tmp_path):
    frames, _ = samples.make_clip("grace_hopper", 80, (320, 240), scale=0.6)
    shot = samples.write_sequence(tmp_path / "shot", frames)
    out = tmp_path / "fs"
    args = [sys.executable, "-m", "engine", "extract", str(shot), "-o", str(out), "--detector", "dlib",
            "--size", "64", "--events"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # kill it mid-detection
        if json.loads(line).get("done", 0) >= 20:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert not (out / "alignments.json").exists()
    with open(out / "detections.jsonl", "a") as f:
        f.write('{"frame": 99, "fa')  # a line cut short by the kill
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    resumed = next(e for e in events if e["event"] == "resume")
    assert 20 <= resumed["frames_done"] < 80
    assert events[-1]["faces"] == 80
    assert len((out / "detections.jsonl").read_text().splitlines()) == 80


def assert_one_line_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_bad_inputs(tmp_path, shot_a):
    out = tmp_path / "out"
    assert_one_line_error(run_engine("extract", tmp_path / "missing.mp4", "-o", out, "--detector", "dlib"),
                          "not found")
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    assert_one_line_error(run_engine("extract", fake, "-o", out, "--detector", "dlib"), "cannot decode video")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert_one_line_error(run_engine("extract", notes, "-o", out, "--detector", "dlib"), "not a video")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_engine("extract", tmp_path / "empty", "-o", out, "--detector", "dlib"), "no images")

    sky = np.zeros((240, 320, 3), np.uint8)
    sky[:] = np.linspace(40, 220, 320)[None, :, None]
    faceless = samples.write_sequence(tmp_path / "faceless", [sky] * 3)
    assert_one_line_error(run_engine("extract", faceless, "-o", out, "--detector", "dlib"), "no face found")
    assert not (out / "alignments.json").exists()

    mixed = samples.write_sequence(tmp_path / "mixed", [sky, sky])
    cv2.imwrite(str(mixed / "frame_0003.png"), np.zeros((100, 100, 3), np.uint8))
    assert_one_line_error(run_engine("extract", mixed, "-o", out, "--detector", "dlib"), "must be one size")

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_one_line_error(run_engine("extract", shot_a, "-o", blocker / "faceset", "--detector", "dlib"),
                          "not writable")
    assert_one_line_error(run_engine("extract", shot_a, "-o", out, "--detector", "dlib", "--frames", "50-60"),
                          "outside the shot")


def test_existing_output_of_another_extract_is_refused(faceset_a, shot_b):
    before = (faceset_a / "alignments.json").read_bytes()
    assert_one_line_error(run_engine("extract", shot_b, "-o", faceset_a, "--detector", "dlib", "--size", "128"),
                          "other settings")
    assert (faceset_a / "alignments.json").read_bytes() == before


@pytest.mark.skipif(
    any(Path(os.path.expanduser("~/.cache/torch/hub/checkpoints")).glob("s3fd-*.pth")),
    reason="fan weights are cached here, so the offline error cannot show",
)
def test_fan_offline_names_the_fix(shot_a, tmp_path):
    result = run_engine("extract", shot_a, "-o", tmp_path / "fs", "--detector", "fan", "--device", "cpu")
    assert_one_line_error(result, "--fan-weights", "--detector dlib")


def test_linear_exr_sequence_extracts_like_its_png(tmp_path):
    """A scene-linear EXR plate is detected in sRGB, so it finds the same face as the same frames in PNG."""
    frames, _ = samples.make_clip("astronaut", 3, (320, 240))
    for i, frame in enumerate(frames, 1):
        media.write_image(tmp_path / "exr" / f"plate.{i:04d}.exr", colorspace.srgb_to_linear(frame / 255.0))
    png = extract(samples.write_sequence(tmp_path / "png", frames), tmp_path / "fs_png", detector="dlib", size=64)
    exr = extract(tmp_path / "exr", tmp_path / "fs_exr", detector="dlib", size=64)
    assert png["faces"] == exr["faces"] == 3
    a, b = Alignments.load(tmp_path / "fs_png"), Alignments.load(tmp_path / "fs_exr")
    assert b.linear and not a.linear
    for fa, fb in zip(a.frames, b.frames, strict=True):
        assert np.abs(np.subtract(fa.faces[0].landmarks, fb.faces[0].landmarks)).max() < 1.0
