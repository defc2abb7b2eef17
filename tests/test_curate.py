"""Curate on the real sample faces: it finds the face of another person, a blurred face and a near-copy
in the astronaut faceset, moves them aside and puts them back byte for byte; head pose follows the image."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from demo import samples
from engine.__main__ import main
from engine.base import media
from engine.faces import align, masks
from engine.faces.detect import make_detector
from engine.faces.pose import MODEL, camera_matrix, head_pose
from engine.folders import faceset as faceset_module
from engine.folders.faceset import Alignments, Faceset, Frame
from engine.stages import curate as curate_module
from engine.stages.curate import curate, restore, sharpness
from tests.conftest import empty_copy

OTHER, BLURRED, NEAR_COPY = 1001, 1002, 1003


def _add_face(alignments: Alignments, folder: Path, number: int, face, donor: Path, image=None) -> None:
    """Append frame `number` holding `face` (with its files copied from `donor`), optionally with new pixels."""
    name = f"{number:06d}_0.png"
    new = dataclasses.replace(face, image=f"faces/{name}", mask_hull=f"masks/hull/{name}",
                              mask_extended=f"masks/extended/{name}")
    for old_path, new_path in ((face.image, new.image), (face.mask_hull, new.mask_hull),
                               (face.mask_extended, new.mask_extended)):
        shutil.copy(donor / old_path, folder / new_path)
    if image is not None:
        media.write_image(folder / new.image, image)
    alignments.frames.append(Frame(number=number, faces=[new]))


@pytest.fixture
def mixed(faceset_a, faceset_b, tmp_path) -> Path:
    """The astronaut faceset plus: a Grace Hopper face with its alignment entry, a blurred copy of an
    astronaut face, and a copy of that face with faint noise (a near-duplicate)."""
    folder = tmp_path / "mixed"
    shutil.copytree(faceset_a, folder)
    alignments = Alignments.load(folder)
    hopper = next(face for _, face in Alignments.load(faceset_b).faces())
    _add_face(alignments, folder, OTHER, hopper, faceset_b)
    face = alignments.frames[5].faces[0]
    pixels = media.read_image(folder / face.image)
    _add_face(alignments, folder, BLURRED, face, folder, cv2.GaussianBlur(pixels, (0, 0), 2.0))
    noise = np.random.default_rng(0).normal(0, 2.0, pixels.shape)
    _add_face(alignments, folder, NEAR_COPY, face, folder, np.clip(pixels + noise, 0, 255).astype(np.uint8))
    alignments.save(folder / "alignments.json")
    return folder


def _turn(yaw: float, pitch: float) -> np.ndarray:
    """The rotation vector that turns the model face by `yaw`, then tilts it by `pitch` (pose.py's signs:
    the camera's y axis points down, so turning the nose right is a negative turn about it)."""
    about_y = cv2.Rodrigues(np.array([0.0, np.radians(-yaw), 0.0]))[0]
    about_x = cv2.Rodrigues(np.array([np.radians(-pitch), 0.0, 0.0]))[0]
    return cv2.Rodrigues(about_y @ about_x)[0]


def _hashes(folder: Path) -> dict[str, str]:
    """Every face file of the faceset (not curate's own outputs), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*.png")
        if p.relative_to(folder).parts[0] in ("faces", "masks")
    }


def test_flags_the_other_person_the_blurred_face_and_the_near_copy(mixed):
    report = curate(mixed)

    flagged = {s["frame"]: s for s in report["faces"] if s["flags"]}
    assert set(flagged) == {OTHER, BLURRED, NEAR_COPY}
    assert flagged[OTHER]["flags"] == ["other person"]
    assert flagged[OTHER]["identity_distance"] > 0.6
    assert flagged[BLURRED]["flags"] == ["blurred"]
    assert flagged[BLURRED]["sharpness_share"] < 0.2
    assert flagged[NEAR_COPY]["flags"] == ["duplicate"]
    assert flagged[NEAR_COPY]["duplicate_of"] == 6  # the face it copies, kept as the first of the two
    assert report["summary"] | {"other_person": 1, "blurred": 1, "duplicates": 1, "flagged": 3, "kept": 16} \
        == report["summary"]
    astronaut = [s for s in report["faces"] if s["frame"] <= 16]
    assert all(s["identity_distance"] < 0.3 for s in astronaut)
    assert all(abs(s["yaw"]) < 20 and abs(s["pitch"]) < 20 for s in astronaut)

    on_disk = json.loads((mixed / "curate" / "report.json").read_text())
    assert on_disk["summary"] == report["summary"]
    sheet = media.read_image(report["outputs"]["contact_sheet"])
    assert sheet.shape[0] == 128 and sheet.shape[1] >= 3 * 128  # one row holding the three flagged tiles
    assert media.read_image(report["outputs"]["pose"]).ndim == 3


def test_apply_moves_flagged_faces_aside_and_restore_puts_them_back_exactly(mixed, capsys):
    before = _hashes(mixed)
    assert len(Faceset(mixed)) == 19

    assert main(["curate", str(mixed), "--apply", "--events"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["event"] == "done" and done["moved"] == 3 and done["aside"] == 3
    assert len(Faceset(mixed)) == 16  # training no longer sees them
    moved = json.loads((mixed / "aside" / "moved.json").read_text())
    assert {e["frame"] for e in moved["faces"]} == {OTHER, BLURRED, NEAR_COPY}
    for entry in moved["faces"]:
        for relative in entry["files"]:
            assert not (mixed / relative).exists() and (mixed / "aside" / relative).is_file()

    # A rerun still scores the faces that are aside, and says they are.
    again = curate(mixed)
    assert {s["frame"] for s in again["faces"] if s["aside"]} == {OTHER, BLURRED, NEAR_COPY}

    assert main(["curate", str(mixed), "--restore", "--events"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["restored"] == 3 and done["still_aside"] == 0
    assert _hashes(mixed) == before
    assert len(Faceset(mixed)) == 19


def test_an_interrupted_apply_is_recorded_and_restores_fully(mixed, monkeypatch):
    before = _hashes(mixed)
    report = curate(mixed)
    real_replace, calls = faceset_module.os.replace, []

    def dying_replace(src, dst):
        if len(calls) == 4:  # killed after moving one face's three files and one more
            raise KeyboardInterrupt
        calls.append(src)
        real_replace(src, dst)

    monkeypatch.setattr(faceset_module.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        faceset_module.move_aside(mixed, [s for s in report["faces"] if s["flags"]])
    monkeypatch.setattr(faceset_module.os, "replace", real_replace)

    recorded = json.loads((mixed / "aside" / "moved.json").read_text())["faces"]
    assert len(recorded) == 3  # the record was written before anything moved
    summary = restore(mixed)
    assert summary["restored"] == 3
    assert _hashes(mixed) == before


def test_warns_when_the_target_has_poses_or_expressions_the_source_lacks(faceset_a, faceset_b, talking, tmp_path,
                                                                          capsys):
    """The target turns its head: the landmarks of a third of its frames are a generic 3-D face turned
    40° and projected where the face was, which pose estimation must read back as such."""
    alignments = Alignments.load(faceset_b)
    turned = [frame.faces[0] for frame in alignments.frames[::3] if frame.faces]
    camera = camera_matrix(alignments.source_size)
    for face in turned:
        points = np.asarray(face.landmarks)
        distance = camera[0, 0] / np.ptp(points[:, 0])
        centre = (points.mean(0) - camera[:2, 2]) / camera[0, 0] * distance
        projected, _ = cv2.projectPoints(MODEL, _turn(40.0, 0.0), np.array([*centre, distance]), camera, None)
        face.landmarks = projected.reshape(68, 2).tolist()
    target = tmp_path / "target"
    target.mkdir()
    alignments.save(target / "alignments.json")
    source = tmp_path / "source"
    shutil.copytree(faceset_a, source)

    assert main(["curate", str(source), "--target", str(target), "--events"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    share = len(turned) / len(alignments.frames)
    assert f"B has |yaw| > 15° in {share:.0%} of frames; A has none" in warnings
    report = json.loads((source / "curate" / "report.json").read_text())
    assert report["coverage"]["covered_share"] == pytest.approx(1 - share, abs=0.01)
    assert report["coverage"]["messages"] == warnings

    # A target whose mouth opens wider than any face of A: said, with the frames, and in the report.
    assert main(["curate", str(source), "--target", str(talking["faceset"]), "--events"]) == 0
    warnings = [e["message"] for e in map(json.loads, capsys.readouterr().out.splitlines()) if e["event"] == "warning"]
    report = json.loads((source / "curate" / "report.json").read_text())
    expression = report["expression_coverage"]
    assert expression["messages"] == [w for w in warnings if w.startswith("B opens its mouth wider")] != []
    assert expression["mouth_wider_frames"] and expression["covered_share"] < 1

    # A target whose poses A covers draws no warning.
    assert main(["curate", str(source), "--target", str(faceset_b), "--events"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if '"warning"' in line]


def test_head_pose_follows_a_mirrored_and_a_rolled_photo():
    detector = make_detector("dlib")
    photo = samples.astronaut()
    h, w = photo.shape[:2]

    def pose(image):
        return np.array(head_pose(max(detector.detect(image), key=lambda d: d.area).landmarks, (w, h)))

    upright = pose(photo)
    mirrored = pose(np.ascontiguousarray(photo[:, ::-1]))
    assert mirrored[0] == pytest.approx(-upright[0], abs=2.0)  # yaw flips
    assert mirrored[1] == pytest.approx(upright[1], abs=2.0)  # pitch stays
    assert mirrored[2] == pytest.approx(-upright[2], abs=2.0)  # roll flips
    centre = samples.FACE_CENTRES["astronaut"]
    rolled = pose(cv2.warpAffine(photo, cv2.getRotationMatrix2D(centre, -20.0, 1.0), (w, h)))  # clockwise
    assert rolled[2] - upright[2] == pytest.approx(20.0, abs=2.0)
    assert rolled[:2] == pytest.approx(upright[:2], abs=3.0)

    # The generic face turned by known angles and projected reads back as those angles.
    camera = camera_matrix((640, 480))
    for yaw, pitch in ((30.0, 0.0), (-50.0, 10.0), (0.0, -20.0)):
        points, _ = cv2.projectPoints(MODEL, _turn(yaw, pitch), np.array([0.0, 0.0, 6.0]), camera, None)
        assert head_pose(points.reshape(68, 2), (640, 480))[:2] == pytest.approx((yaw, pitch), abs=0.5)


def test_sharpness_ignores_face_size_and_exposure_but_not_blur(faceset_a, shot_a):
    """The same frame aligned at 128 and 256 px, as extract would cut it, scores alike; a darker copy too;
    a 2 px blur of the 256 px face falls below the default flagging share."""
    number, face = next(iter(Alignments.load(faceset_a).faces()))
    frame = media.read_image(next(shot_a.glob(f"*{number:04d}.png")))

    def cut(size):
        matrix = align.scale_matrix(face.matrix, 128, size)
        hull = masks.hull_mask(align.transform_points(np.asarray(face.landmarks), matrix), size)
        return align.warp_face(frame, matrix, size), np.round(hull * 255).astype(np.uint8)

    small, large = cut(128), cut(256)
    reference = sharpness(*large)
    assert sharpness(*small) == pytest.approx(reference, rel=0.15)
    assert sharpness((large[0] * 0.6).astype(np.uint8), large[1]) == pytest.approx(reference, rel=0.1)
    assert sharpness(cv2.GaussianBlur(large[0], (0, 0), 2.0), large[1]) < curate_module.DEFAULT_BLUR * reference


def test_bad_input_gets_one_clear_line(faceset_a, tmp_path, capsys):
    empty = empty_copy(faceset_a, tmp_path / "empty")
    assert main(["curate", str(empty)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: faceset {empty} holds no faces"

    assert main(["curate", str(tmp_path / "nowhere")]) == 2
    assert "faceset folder not found" in capsys.readouterr().err

    assert main(["curate", str(faceset_a), "--target", str(tmp_path / "nowhere")]) == 2
    assert "alignments file not found" in capsys.readouterr().err

    assert main(["curate", str(faceset_a), "--blur-threshold", "-1"]) == 2
    assert "--blur-threshold must be 0 or more" in capsys.readouterr().err

    assert main(["curate", str(faceset_a), "--apply", "--restore"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err

