"""Evaluate on the real sample faces. The layers are made the way convert makes them, from real pixels:
a faceset's aligned faces warped onto shot B's faces by the inverse of B's alignment matrices, written
as 16-bit straight-alpha RGBA PNGs with a manifest, so what is measured is known: A's own faces (a
perfect swap), or B's own faces (no swap at all). The sample photos are still, so expression is measured
on a clip whose mouth opens and closes (the photo's jaw warped down, the gap between the lips dark)."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.__main__ import main
from engine.base import colorspace, media
from engine.base.frames import format_ranges, parse_ranges
from engine.faces import align, masks
from engine.folders.faceset import Alignments
from engine.folders.output import layer_path, read_manifest
from engine.stages.convert import convert
from engine.stages.evaluate import composite, evaluate, layer_space
from tests.conftest import empty_copy


def write_layers(folder: Path, shot: Path, shot_faceset: Path, donor: Path, noise: float = 0.0,
                 brighten: float = 0.0, seed: int = 0, exr: bool = False, blur: float = 0.0,
                 donor_face: int | None = None, plate: bool = False, soft_features: float = 0.0) -> Path:
    """Convert-style output for `shot`: the donor faceset's faces at the shot's faces. `noise` (frame
    pixels) shakes the landmarks the placement is fitted to, as an unsmoothed detector would; `brighten`
    lifts the face's levels, as a failed colour match would; `blur` (pixels) softens the face, as a
    low-resolution model draws it; `donor_face` puts that one donor face in every frame; `plate` takes
    the colour from the shot's own frame (only the donor's mask is used): B re-composited over itself;
    `soft_features` (pixels) blurs only the eyes and the mouth, as a model that has not learnt them yet
    draws them under skin that convert's --detail made sharp;
    `exr` writes scene-linear float EXR layers instead of 16-bit sRGB PNGs."""
    source = media.FrameSource(shot)
    alignments = Alignments.load(shot_faceset)
    donors = [face for _, face in Alignments.load(donor).faces()]
    rng = np.random.default_rng(seed)
    w, h = source.size
    ext = ".exr" if exr else ".png"
    plates = dict(source.frames()) if plate else {}
    for i, number in enumerate(source.numbers):
        layer = np.zeros((h, w, 4), np.float32)
        frame = alignments.frame(number)
        if frame is not None and frame.faces:
            face, given = frame.faces[0], donors[i % len(donors) if donor_face is None else donor_face]
            pixels = media.read_image(donor / given.image).astype(np.float32) / 255.0 + brighten
            if blur and not plate:
                pixels = cv2.GaussianBlur(pixels, (0, 0), blur)
            mask = media.read_image(donor / given.mask_extended).astype(np.float32) / 255.0
            mask = cv2.GaussianBlur(mask, (0, 0), 2.0)
            points = np.asarray(face.landmarks) + rng.normal(0, noise, 2) + rng.normal(0, noise / 2, (68, 2))
            matrix = align.alignment_matrix(points, alignments.face_size, alignments.coverage) if noise else face.matrix
            back = align.invert_matrix(matrix)
            layer[..., :3] = np.clip(cv2.warpAffine(pixels, back, (w, h), flags=cv2.INTER_CUBIC), 0, 1)
            layer[..., 3] = np.clip(cv2.warpAffine(mask, back, (w, h)), 0, 1)
            if plate:
                pixels = plates[number].astype(np.float32) / 255.0
                layer[..., :3] = cv2.GaussianBlur(pixels, (0, 0), blur) if blur else pixels
            if soft_features:
                points, side = np.asarray(face.landmarks), max(w, h)
                features = np.maximum(masks.eyes_mask(points, side), masks.mouth_mask(points, side))[:h, :w, None]
                soft = cv2.GaussianBlur(layer[..., :3], (0, 0), soft_features)
                layer[..., :3] = layer[..., :3] * (1 - features) + soft * features
        if exr:
            layer[..., :3] = colorspace.srgb_to_linear(layer[..., :3])
        else:
            layer = np.round(layer * 65535).astype(np.uint16)
        media.write_image(folder / "face" / f"face_{number:06d}{ext}", layer)
    media.write_json(folder / "manifest.json", {
        "format": "facereplace.convert", "version": 1, "source": str(source.path.resolve()),
        "source_size": list(source.size), "frame_numbers": list(source.numbers), "linear": False,
        "colorspace": "linear" if exr else "sRGB", "alpha": "straight", "files": {"face": f"face/face_%06d{ext}"},
    })
    return folder


@pytest.fixture(scope="module")
def layers_a(shot_b, faceset_a, faceset_b, tmp_path_factory) -> Path:
    """A perfect swap: the astronaut's faces in Grace Hopper's place."""
    return write_layers(tmp_path_factory.mktemp("layers_a"), shot_b, faceset_b, faceset_a)


@pytest.fixture(scope="module")
def clean(shot_b, faceset_a, faceset_b, layers_a) -> dict:
    return evaluate(shot_b, faceset_b, layers_a, faceset_a)


def test_identity_is_high_for_a_faces_and_low_for_b_faces(shot_b, faceset_a, faceset_b, clean, tmp_path):
    swap = clean["summary"]
    assert swap["frames_evaluated"] == swap["frames_swapped"] == 16
    assert swap["redetected"] == 1.0
    assert swap["identity_a"] > 0.98 and swap["distance_a"] < 0.3
    assert swap["id_retrieval"] == 1.0

    own = write_layers(tmp_path / "layers_b", shot_b, faceset_b, faceset_b)
    unchanged = evaluate(shot_b, faceset_b, own, faceset_a)["summary"]
    assert unchanged["identity_a"] < 0.92 and unchanged["distance_a"] > 0.6
    assert unchanged["identity_b"] > 0.98
    assert unchanged["id_retrieval"] == 0.0
    # B's own face back in place keeps B's expression and pose; A's face is another face shape.
    assert unchanged["landmark_error"] < 0.04
    assert unchanged["landmark_error"] < swap["landmark_error"] < 0.15
    assert unchanged["flicker_ratio"] == pytest.approx(1.0, abs=0.1)


def test_same_person_and_gallery_tell_a_from_b(shot_b, faceset_a, faceset_b, clean, talking, tmp_path):
    assert clean["summary"]["same_person"] == 1.0
    assert clean["summary"]["gallery_retrieval"] is None  # no gallery given
    # Another faceset of Grace Hopper as the gallery: A's faces are still nearest A ...
    gallery = evaluate(shot_b, faceset_b, clean["layers"], faceset_a, output=tmp_path / "gallery",
                       gallery=[talking["faceset"]])["summary"]
    assert gallery["gallery_retrieval"] == 1.0
    # ... and B's own faces are nearest B or the gallery, and nowhere near A.
    own = write_layers(tmp_path / "own", shot_b, faceset_b, faceset_b)
    unchanged = evaluate(shot_b, faceset_b, own, faceset_a, gallery=[talking["faceset"]])["summary"]
    assert unchanged["same_person"] == 0.0 and unchanged["gallery_retrieval"] == 0.0


def test_an_untrained_blob_is_not_the_same_person(shot_b, faceset_a, faceset_b, tmp_path):
    """22 iterations: a blotchy layer that is nearer A than B often enough to pass ID retrieval."""
    from engine.stages.train import train

    train(faceset_a, faceset_b, tmp_path / "model", preset="tiny", iterations=22, seed=0, device="cpu")
    layers = tmp_path / "layers"
    convert(shot_b, faceset_b, tmp_path / "model", layers, device="cpu")
    blob = evaluate(shot_b, faceset_b, layers, faceset_a)["summary"]
    assert blob["frames_swapped"] == 16
    assert blob["same_person"] == 0.0
    assert blob["detail_ratio"] < 0.5


def test_detail_is_one_for_a_sharp_layer_and_falls_when_blurred(shot_b, faceset_a, faceset_b, tmp_path):
    sharp = write_layers(tmp_path / "sharp", shot_b, faceset_b, faceset_b, plate=True)
    sharp = evaluate(shot_b, faceset_b, sharp, faceset_a)
    assert sharp["summary"]["detail_ratio"] == pytest.approx(1.0, abs=0.02)
    assert all(r["detail_original"] > 0 for r in sharp["frames"])
    # B's faces through the faceset and back: resampled twice, a little softer.
    faceset = evaluate(shot_b, faceset_b, write_layers(tmp_path / "faceset", shot_b, faceset_b, faceset_b),
                       faceset_a)["summary"]
    assert 0.75 < faceset["detail_ratio"] < 1.0
    assert sharp["summary"]["feature_detail_ratio"] == pytest.approx(1.0, abs=0.02)
    soft = write_layers(tmp_path / "soft", shot_b, faceset_b, faceset_b, plate=True, blur=1.5)
    soft = evaluate(shot_b, faceset_b, soft, faceset_a)["summary"]
    assert soft["detail_ratio"] < 0.5 and soft["feature_detail_ratio"] < 0.5


def test_feature_detail_tells_soft_eyes_and_mouth_under_sharp_skin(shot_b, faceset_a, faceset_b, tmp_path):
    """Sharp skin around smudged eyes and mouth (what --detail makes of a young model) passes the detail
    ratio; the eyes-and-mouth ratio does not."""
    layers = write_layers(tmp_path / "smudged", shot_b, faceset_b, faceset_b, plate=True, soft_features=2.0)
    summary = evaluate(shot_b, faceset_b, layers, faceset_a)["summary"]
    assert summary["detail_ratio"] > 0.6
    assert summary["feature_detail_ratio"] < 0.5
    assert summary["feature_detail_ratio"] < summary["detail_ratio"] - 0.2


def test_expression_is_carried_only_when_the_mouth_moves(talking, faceset_a, tmp_path):
    shot, faceset = talking["shot"], talking["faceset"]
    own = evaluate(shot, faceset, write_layers(tmp_path / "own", shot, faceset, faceset), faceset_a)["summary"]
    assert own["mouth_correlation"] > 0.9 and own["mouth_difference"] < 0.03 and 0.85 < own["mouth_gain"] < 1.15
    # The first frame's closed mouth pasted over every frame: the shot's mouth moves, the swap's does not.
    closed = write_layers(tmp_path / "closed", shot, faceset, faceset, donor_face=0)
    still = evaluate(shot, faceset, closed, faceset_a)
    assert still["summary"]["mouth_correlation"] < 0.5
    assert still["summary"]["mouth_difference"] > 3 * own["mouth_difference"]
    assert abs(still["summary"]["mouth_gain"]) < 0.3
    opened = max(still["frames"], key=lambda r: r["mouth_open_original"])
    assert opened["mouth_open_original"] > 0.15 and opened["mouth_open"] < 0.08


def test_frames_whose_expression_faceset_a_lacks_are_marked(talking, faceset_a, tmp_path, capsys):
    """The astronaut's smile parts her lips by about 0.11 of the eye distance, never more: the frames where
    Grace Hopper opens her mouth twice as wide are the ones a model of A draws half shut, and evaluate says
    which. A faceset that does open it covers every frame."""
    shot, faceset = talking["shot"], talking["faceset"]
    layers = write_layers(tmp_path / "own", shot, faceset, faceset)
    args = ["evaluate", str(shot), "--alignments", str(faceset), "--layers", str(layers), "--events"]
    assert main([*args, "--source", str(faceset_a), "--output", str(tmp_path / "astronaut")]) == 0
    warnings = [e["message"] for e in map(json.loads, capsys.readouterr().out.splitlines()) if e["event"] == "warning"]
    report = json.loads((tmp_path / "astronaut" / "evaluation.json").read_text())
    wide = [r["frame"] for r in report["frames"] if r["mouth_open_original"] > 0.21]
    shut = [r["frame"] for r in report["frames"] if r["mouth_open_original"] < 0.1]
    assert wide and shut
    assert not any(r["expression_covered"] for r in report["frames"] if r["frame"] in wide)
    assert all(r["expression_covered"] for r in report["frames"] if r["frame"] in shut)
    uncovered = [r["frame"] for r in report["frames"] if not r["expression_covered"]]
    assert report["summary"]["expression_covered"] == pytest.approx(1 - len(uncovered) / 16, abs=1e-4)
    message = [w for w in warnings if w.startswith("B opens its mouth wider than A's faces do")]
    assert len(message) == 1 and f"in {len(uncovered)} of 16 frames ({format_ranges(uncovered)})" in message[0]
    assert [n for a, b in parse_ranges(format_ranges(uncovered)) for n in range(a, b + 1)] == uncovered

    assert main([*args, "--source", str(faceset), "--output", str(tmp_path / "herself")]) == 0
    assert '"warning"' not in capsys.readouterr().out
    summary = json.loads((tmp_path / "herself" / "evaluation.json").read_text())["summary"]
    assert summary["expression_covered"] == 1.0
    assert summary["same_person_covered"] == summary["same_person"]


def test_linear_exr_layers_measure_as_their_png_twins(shot_b, faceset_a, faceset_b, clean, tmp_path):
    exr = write_layers(tmp_path / "exr", shot_b, faceset_b, faceset_a, exr=True)
    linear = evaluate(shot_b, faceset_b, exr, faceset_a)["summary"]
    for key, tolerance in (("identity_a", 0.002), ("landmark_error", 0.005), ("flicker", 0.2), ("seam_excess", 0.3)):
        assert linear[key] == pytest.approx(clean["summary"][key], abs=tolerance), key


def test_writes_the_report_and_the_plot(clean):
    report = json.loads(Path(clean["outputs"]["report"]).read_text())
    assert report["summary"] == clean["summary"]
    assert [r["frame"] for r in report["frames"]] == list(range(1, 17))
    first, later = report["frames"][0], report["frames"][1]
    assert "flicker" not in first and {"flicker", "flicker_original", "jitter"} <= later.keys()
    assert {"identity_a", "identity_b", "nearer_a", "same_person", "landmark_error", "seam", "seam_original", "detail",
            "detail_original", "mouth_open", "mouth_open_original", "eye_open", "eye_open_original"} <= first.keys()
    plot = media.read_image(clean["outputs"]["plot"])
    assert plot.shape[0] > 400 and plot.shape[1] > 600


def test_jitter_and_flicker_rise_when_the_landmarks_are_noisy(shot_b, faceset_a, faceset_b, clean, tmp_path):
    shaky = write_layers(tmp_path / "shaky", shot_b, faceset_b, faceset_a, noise=2.0)
    noisy = evaluate(shot_b, faceset_b, shaky, faceset_a)["summary"]
    assert noisy["jitter"] > 1.3 * clean["summary"]["jitter"]
    assert noisy["flicker_ratio"] > 1.3 * clean["summary"]["flicker_ratio"]
    assert noisy["id_retrieval"] == 1.0  # still A, only shaking


def test_seam_rises_when_the_face_colour_does_not_match(shot_b, faceset_a, faceset_b, tmp_path):
    matched = evaluate(shot_b, faceset_b, write_layers(tmp_path / "own", shot_b, faceset_b, faceset_b), faceset_a)
    bright = write_layers(tmp_path / "bright", shot_b, faceset_b, faceset_b, brighten=0.15)
    mismatched = evaluate(shot_b, faceset_b, bright, faceset_a)
    assert matched["summary"]["seam_excess"] < 2.0  # B's own face: the original's step, no more
    assert mismatched["summary"]["seam_excess"] > 8.0  # delta E; about 2 is just noticeable


def test_cli_reports_progress_and_the_summary_as_events(shot_b, faceset_a, faceset_b, layers_a, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(shot_b), "--alignments", str(faceset_b / "alignments.json"), "--layers",
                 str(layers_a), "--source", str(faceset_a), "--output", str(out), "--frames", "3-6",
                 "--gallery", str(faceset_b), "--events"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["frame"] for e in events if e["event"] == "progress"] == [3, 4, 5, 6]
    done = events[-1]
    assert done["event"] == "done" and done["frames_evaluated"] == 4 and done["id_retrieval"] == 1.0
    assert done["same_person"] == done["gallery_retrieval"] == 1.0
    assert (out / "evaluation.json").is_file() and (out / "evaluation.png").is_file()


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_input_gets_one_clear_line(shot_a, shot_b, faceset_a, faceset_b, layers_a, tmp_path, capsys):
    def args(shot=shot_b, alignments=faceset_b, layers=layers_a, source=faceset_a):
        return ["evaluate", str(shot), "--alignments", str(alignments), "--layers", str(layers),
                "--source", str(source), "--output", str(tmp_path / "out")]

    # Layers made from shot B, evaluated against shot A (same size and frame count, another shot).
    message = _error(args(shot=shot_a, alignments=faceset_a), capsys)
    assert message.startswith(f"error: layers in {layers_a} were made from ") and str(shot_a.resolve()) in message

    # Alignments of another shot.
    assert "alignments" in _error(args(alignments=faceset_a), capsys)

    # Layers of another size than the shot.
    resized = tmp_path / "resized"
    shutil.copytree(layers_a, resized)
    manifest = json.loads((resized / "manifest.json").read_text())
    manifest["source_size"] = [640, 480]
    media.write_json(resized / "manifest.json", manifest)
    assert "were made from a 640x480 shot" in _error(args(layers=resized), capsys)

    # Not a convert output folder.
    (tmp_path / "plain").mkdir()
    assert "is not a convert output folder" in _error(args(layers=tmp_path / "plain"), capsys)

    # A faceset A with no faces.
    empty = empty_copy(faceset_a, tmp_path / "empty")
    assert _error(args(source=empty), capsys) == f"error: faceset A {empty} holds no faces with identity embeddings"
    message = _error(args() + ["--gallery", str(faceset_b), str(empty)], capsys)
    assert message == f"error: gallery faceset {empty} holds no faces with identity embeddings"

    # Layer files missing altogether.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(layers_a / "manifest.json", bare / "manifest.json")
    assert "holds no face layers" in _error(args(layers=bare), capsys)

    assert not (tmp_path / "out").exists()  # no error left anything behind


def test_evaluate_composites_the_frames_convert_writes(shot_b, faceset_b, tiny_model, tmp_path):
    """Evaluate's composite of convert's face layer over the plate is convert's own finished frame
    (--write-frames) to the 8-bit level: both put the layer over in linear light, premultiplied, through
    engine.base.composite, so what evaluate scores is what convert writes. (A straight mix in the plate's sRGB
    is many levels off wherever the matte is soft.)"""
    source = media.FrameSource(shot_b)
    numbers = source.numbers[:3]
    out = tmp_path / "out"
    convert(shot_b, faceset_b, tiny_model, out, write_frames=True, frames=format_ranges(numbers), device="cpu")
    manifest, plate = read_manifest(out), colorspace.plate_space(None, None, source.linear)
    soft = 0
    for number, frame in source.frames(numbers):
        swapped, alpha = composite(frame, media.read_image(layer_path(out, manifest, number)), plate,
                                   layer_space(manifest))
        written = colorspace.display8(media.read_image(out / "frames" / f"frame_{number:06d}.png"), plate)
        assert np.abs(swapped.astype(int) - written).max() <= 1
        soft += int(((alpha > 0.05) & (alpha < 0.95)).sum())
    assert soft > 300  # the matte's feathered edge, where the two ways of compositing differ, was compared
