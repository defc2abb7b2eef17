"""Convert's --detail and --sharpen, and the extended mask's soft top, on the sample faces."""

import cv2
import numpy as np
import pytest

from engine import media
from engine.convert import convert
from engine.faces import masks
from engine.faceset import Alignments, Faceset

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
    runs = {}
    for name, options in (("plain", {}), ("detail", {"detail": 2.0}), ("sharpen", {"sharpen": 1.0})):
        convert(shot_b, faceset_b, tiny_model, out / name, frames="1-4", write_frames=True, device="cpu", **options)
        runs[name] = {n: media.read_image(out / name / "frames" / f"frame_{n:06d}.png").astype(np.float64) / 65535
                      for n in range(1, 5)}
    plates = dict(media.FrameSource(shot_b).frames())
    faces = {f.number: np.asarray(f.faces[0].landmarks) for f in Alignments.load(faceset_b / "alignments.json").frames}
    return runs, {n: plates[n].astype(np.float64) / 255 for n in range(1, 5)}, faces


def detail_ratio(frames, plates, faces, points=slice(17, 68)) -> float:
    """The swapped inner face's fine detail over the plate's, in the same region."""
    swap = plate = 0.0
    for n, frame in frames.items():
        inside = region(faces[n][points], frame.shape)
        swap += np.abs(high_pass(frame)[inside]).mean()
        plate += np.abs(high_pass(plates[n])[inside]).mean()
    return swap / plate


def test_detail_brings_the_plates_fine_detail_onto_the_face(detail_runs):
    runs, plates, faces = detail_runs
    plain = detail_ratio(runs["plain"], plates, faces)
    detail = detail_ratio(runs["detail"], plates, faces)
    assert plain < 0.7  # a 64 px face enlarged into the frame is soft
    assert detail > 2 * plain and detail > plain + 0.2
    assert detail_ratio(runs["sharpen"], plates, faces) > plain * 1.2


def test_detail_leaves_the_eyes_and_mouth_as_the_model_drew_them(detail_runs):
    """The plate's lashes and lip lines belong to the face being replaced: they are not brought back."""
    runs, _, faces = detail_runs
    eyes = mouth = cheeks = 0.0
    for n in runs["plain"]:
        change = np.abs(runs["detail"][n] - runs["plain"][n]).mean(2)
        points = faces[n]
        eyes += change[region(points[36:42], change.shape) | region(points[42:48], change.shape)].mean()
        mouth += change[region(points[60:68], change.shape)].mean()
        cheek_box = np.zeros(change.shape, bool)
        cheek_box |= region(np.array([points[1], points[31], points[48], points[4]]), change.shape)
        cheeks += change[cheek_box].mean()
    assert eyes < 0.25 * cheeks and mouth < 0.25 * cheeks


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
