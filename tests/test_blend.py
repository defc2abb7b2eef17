"""Live blending in the sequencer: the FaceReplace Blend compositor modifier, rendered headless by Blender
(tests/blend_render.py in its own process), and Bake."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    pytest.importorskip("bpy")
    folder = tmp_path_factory.mktemp("blend")
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(folder / "blender-user"), "HOME": str(folder)}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "blend_render.py"), str(folder)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_face_strip_gets_the_compositor_modifier(rendered):
    assert rendered["has_compositor_modifier"]
    assert rendered["modifiers"] == [["COMPOSITOR", "FaceReplace Blend"]]


def test_neutral_values_leave_the_layer_unchanged(rendered):
    """The rendered sequencer is pixel-identical with and without the modifier (8-bit PNG, the
    sequencer's usual output); in float it differs only by what any Compositor modifier's colour
    round trip costs (a bare pass-through group: about 1e-5)."""
    assert rendered["neutral_8bit_identical"]
    assert rendered["neutral_float_max_diff"] < 2e-5
    assert rendered["passthrough_float_max_diff"] > 0  # the modifier's own round trip, not ours


def test_erode_shrinks_and_dilate_grows_the_alpha_by_whole_pixels(rendered):
    top, bottom, left, right = rendered["alpha_box"]["neutral"]
    assert rendered["alpha_box"]["3"] == [top + 3, bottom - 3, left + 3, right - 3]
    assert rendered["alpha_box"]["-2"] == [top - 2, bottom + 2, left - 2, right + 2]


def rise(row: list, low: float, high: float) -> float:
    """Pixels between where a rising alpha crosses `low` and where it crosses `high` (interpolated)."""
    alpha = np.array(row)[:, 3] if np.ndim(row) == 2 else np.array(row)

    def crossing(level):
        i = int(np.argmax(alpha >= level))
        return i - 1 + (level - alpha[i - 1]) / (alpha[i] - alpha[i - 1])

    return crossing(high) - crossing(low)


# A Gaussian edge W pixels wide (convert's: sigma W/4) rises from 10% to 90% over this share of W.
RISE_10_90 = 2 * 1.2816 / 4


def test_feather_is_a_soft_edge_of_that_width(rendered):
    row = rendered["feather_row"]  # columns 16-33 across the hard left edge at column 24, Feather 8
    assert all(a <= b for a, b in zip(row, row[1:], strict=False))
    assert rise(row, 0.1, 0.9) == pytest.approx(8 * RISE_10_90, rel=0.1)  # as convert's --feather 8
    assert row[0] == 0.0 and row[-1] > 0.9999


def test_each_pixel_of_feather_widens_a_converted_edge_by_a_pixel(rendered):
    """Over a layer converted with a 12 px edge, Feather 1, 2, ... 12 make it 13, 14, ... 24 px wide: each
    step visibly (several 8-bit levels of the matte), where Gaussian widths adding in quadrature once
    made 12 px of Feather change it by 2-3 levels in all."""
    rows = rendered["soft"]["feather_rows"]
    widths = [rise(row, 0.1, 0.9) for row in rows]
    assert widths[0] == pytest.approx(12 * RISE_10_90, rel=0.1)
    steps = np.diff(widths)
    assert steps.min() > 0.5 * RISE_10_90 and steps.max() < 1.5 * RISE_10_90
    assert widths[12] == pytest.approx(24 * RISE_10_90, rel=0.1)
    levels = [255 * np.abs(np.array(b)[:, 3] - np.array(a)[:, 3]).max() for a, b in zip(rows, rows[1:], strict=False)]
    assert min(levels) >= 2.0, levels


def test_each_pixel_of_edge_blur_softens_the_faces_detail_at_its_edge(rendered):
    """Stripes up to the soft edge: each step of Edge Blur smooths them more at the edge (their high-pass
    energy in the 10 px inside the half-cover line falls by 5% or more, the pixels move by 2 levels or
    more), the matte stays, and the face's middle is untouched."""
    rows = [np.array(row) for row in rendered["soft"]["edge_blur_rows"]]
    half = int(np.argmax(rows[0][:, 3] >= 0.5))

    def energy(row):
        band = (row[:, 0] / np.maximum(row[:, 3], 1e-6))[half:half + 10]
        return float(np.mean((band[1:-1] - (band[:-2] + band[1:-1] + band[2:]) / 3) ** 2))

    energies = [energy(row) for row in rows]
    assert all(b < 0.95 * a for a, b in zip(energies, energies[1:], strict=False)), energies
    assert energies[6] < 0.7 * energies[0]  # Edge Blur 6 is plain to see
    for a, b in zip(rows, rows[1:], strict=False):
        assert 255 * np.abs(b[:, :3] - a[:, :3]).max() >= 1.5
        assert np.abs(b[:, 3] - rows[0][:, 3]).max() < 1e-4
    assert np.abs(rows[-1][100:] - rows[0][100:]).max() == 0.0


def test_gain_and_saturation_grade_the_face(rendered):
    assert rendered["gain_centre"][:3] == pytest.approx([0.8, 0.6, 0.4], abs=1e-4)
    red, green, blue, alpha = rendered["grey_centre"]
    assert red == green == blue and alpha == 1.0


def test_grain_adds_the_high_pass_energy_of_its_spread(rendered):
    """White noise of standard deviation s, one value per pixel, adds 8/9 s^2 to the mean square of
    (pixel - its 3x3 mean); bigger grains add less high-pass energy at the same spread; off the face
    nothing changes."""
    grain = rendered["grain"]
    sigma = grain["sigma"]
    assert grain["before"] == 0.0
    assert grain["1.0"]["energy"] == pytest.approx(8 / 9 * sigma**2, rel=0.1)
    assert grain["1.0"]["std"] == pytest.approx(sigma, rel=0.1)
    assert grain["4.0"]["std"] == pytest.approx(sigma, rel=0.2)
    assert grain["4.0"]["energy"] < 0.5 * grain["1.0"]["energy"]
    assert grain["1.0"]["outside"] == 0.0 and grain["4.0"]["outside"] == 0.0


def test_bake_moves_erode_and_feather_into_the_convert_settings(rendered):
    """Erode adds to what convert used (1 + 3); Feather 8 over a converted 6 is an edge of 14, as the
    artist saw it; they go back to neutral on the strip, the colour stays."""
    baked = rendered["baked"]
    assert baked["moved"] == ["erode 4", "feather 14"]
    assert (baked["erode"], baked["feather"], baked["auto"]) == (4, 14, False)
    assert baked["left"] == {"Erode": 0, "Feather": 0.0, "Gain": [1.5, 1.5, 1.5, 1.0]}


def test_blender_before_5_gets_the_color_balance_modifier(rendered):
    assert rendered["fallback"] == [["COLOR_BALANCE", "Color Match"]]
