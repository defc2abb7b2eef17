"""Convert's --detail and --sharpen, and the extended mask's soft top, on the sample faces."""

import cv2
import numpy as np
import pytest

from engine.base import media
from engine.faces import masks
from engine.folders.faceset import Alignments, Faceset
from engine.stages.convert import convert

SIGMA = 1.5  # the detail measure: mean absolute (grey image minus its 1.5 px Gaussian blur)


def high_pass(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY)
    return grey - cv2.GaussianBlur(grey, (0, 0), SIGMA)


def region(points: np.ndarray, shape) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    return mask > 0


@pytest.fixture(scope="module")
def detail_runs(tiny_model, faceset_b, shot_b, tmp_path_factory):
    """B's shot drawn as A with no detail, with the plate's detail, and sharpened: finished frames."""
    out = tmp_path_factory.mktemp("detail")
    # A real plate holds texture (skin, film grain) that the packaged photo, scaled down, has lost: give it
    # some, the same grain in every run, so there is fine detail for --detail to bring back.
    plate = out / "plate"
    plate.mkdir()
    grain = np.random.default_rng(0)
    for n, frame in media.FrameSource(shot_b).frames():
        noisy = frame.astype(np.float64) + grain.normal(0, 4, frame.shape)
        media.write_image(plate / f"plate_{n:04d}.png", np.clip(np.round(noisy), 0, 255).astype(np.uint8))
    runs = {}
    for name, options in (("plain", {}), ("detail", {"detail": 2.0}), ("sharpen", {"sharpen": 1.0})):
        convert(plate, faceset_b, tiny_model, out / name, frames="1-4", write_frames=True, device="cpu", **options)
        runs[name] = {n: media.read_image(out / name / "frames" / f"frame_{n:06d}.png").astype(np.float64) / 65535
                      for n in range(1, 5)}
    plates = dict(media.FrameSource(plate).frames())
    faces = {f.number: np.asarray(f.faces[0].landmarks) for f in Alignments.load(faceset_b / "alignments.json").frames}
    return runs, {n: plates[n].astype(np.float64) / 255 for n in range(1, 5)}, faces


def cheeks(points: np.ndarray, shape) -> np.ndarray:
    """Both cheeks: skin, where a plate's fine detail is texture, not a feature's outline."""
    return (region(np.array([points[1], points[31], points[48], points[4]]), shape)
            | region(np.array([points[15], points[35], points[54], points[12]]), shape))


def detail_ratio(frames, plates, faces) -> float:
    """The swapped face's fine detail over the plate's, on the same skin."""
    swap = plate = 0.0
    for n, frame in frames.items():
        inside = cheeks(faces[n], frame.shape)
        swap += np.abs(high_pass(frame)[inside]).mean()
        plate += np.abs(high_pass(plates[n])[inside]).mean()
    return swap / plate


def test_detail_brings_the_plates_fine_detail_onto_the_face(detail_runs):
    """Measured on the cheeks: --detail keeps strong edges (a nose's outline) out by design, and on this
    small sample face the inner face's high-pass is mostly such edges (measured: plain 0.30, detail 0.43)."""
    runs, plates, faces = detail_runs
    plain = detail_ratio(runs["plain"], plates, faces)
    detail = detail_ratio(runs["detail"], plates, faces)
    assert plain < 0.7  # a 64 px face enlarged into the frame is soft
    assert detail > 1.3 * plain
    assert detail_ratio(runs["sharpen"], plates, faces) > plain * 1.2


def test_detail_leaves_the_eyes_and_mouth_as_the_model_drew_them(detail_runs):
    """The plate's lashes and lip lines belong to the face being replaced: they are not brought back."""
    runs, _, faces = detail_runs
    eyes = mouth = skin = 0.0
    for n in runs["plain"]:
        change = np.abs(runs["detail"][n] - runs["plain"][n]).mean(2)
        points = faces[n]
        eyes += change[region(points[36:42], change.shape) | region(points[42:48], change.shape)].mean()
        mouth += change[region(points[60:68], change.shape)].mean()
        skin += change[cheeks(points, change.shape)].mean()
    assert eyes < 0.25 * skin and mouth < 0.25 * skin


def test_extended_mask_top_is_a_ramp_not_a_step(faceset_b):
    sample = Faceset(faceset_b).samples()[0]
    size = 256
    points = sample.landmarks * size / Faceset(faceset_b).face_size
    extended, hull = masks.extended_mask(points, size), masks.hull_mask(points, size)
    column = int(round(points[27, 0]))  # the top of the nose bridge, the forehead's middle
    above_brows = slice(0, int(points[17:27, 1].min()))
    ramp = extended[above_brows, column]
    assert ramp.max() > 0.99 and ramp.min() < 0.01
    assert np.count_nonzero((ramp > 0.05) & (ramp < 0.95)) >= 8  # a gradient several pixels tall
    assert np.all(np.diff(ramp[ramp > 0.01]) >= -1e-6)  # rising toward the brows, never banded
    # the face itself stays solid: the soft top only fades the forehead
    assert extended[hull > 0.99].min() > 0.99


def test_edge_match_closes_the_seam_and_leaves_the_middle(tiny_model, faceset_b, shot_b, tmp_path):
    """--edge-match: the colour step across the matte's edge moves toward the plate's own (seam excess, as
    evaluate measures it, down by more than a quarter), while the middle of the face (nose and mouth)
    stays as drawn."""
    from engine.stages.evaluate import seam_steps

    frames = {}
    for name, options in (("plain", {}), ("matched", {"edge_match": 1.0})):
        convert(shot_b, faceset_b, tiny_model, tmp_path / name, frames="1-3", mask="extended", write_frames=True,
                device="cpu", **options)
        frames[name] = {n: np.round(media.read_image(tmp_path / name / "frames" / f"frame_{n:06d}.png") / 257.0)
                        .astype(np.uint8) for n in range(1, 4)}  # sRGB bytes, as evaluate measures the seam
    plates = dict(media.FrameSource(shot_b).frames())
    faces = {f.number: np.asarray(f.faces[0].landmarks) for f in Alignments.load(faceset_b / "alignments.json").frames}
    excess = {name: [] for name in frames}
    for n in range(1, 4):
        alpha = media.read_image(tmp_path / "plain" / "matte" / f"matte_{n:06d}.png").astype(np.float32) / 65535
        for name in frames:
            excess[name].append(seam_steps(frames[name][n], plates[n], alpha, 4)["seam_excess"])
        middle = region(faces[n][[31, 33, 35, 54, 57, 48]], plates[n].shape)  # under the nose, the mouth
        difference = np.abs(frames["matched"][n].astype(np.float32) - frames["plain"][n])[middle].mean() / 255
        assert difference < 0.01
    assert np.mean(excess["matched"]) < 0.75 * np.mean(excess["plain"]), excess  # measured: 23.0 -> 15.6
