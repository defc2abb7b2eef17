"""Live blending in the sequencer: the FaceReplace Blend compositor modifier, rendered headless by Blender
(tests/blend_render.py in its own process), and Bake."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_feather_is_a_soft_edge_of_that_width(rendered):
    row = rendered["feather_row"]  # columns 16-33 across the left edge at column 24, Feather 8
    assert all(a <= b for a, b in zip(row, row[1:], strict=False))
    soft = [v for v in row if 0.001 < v < 0.999]
    assert 6 <= len(soft) <= 9
    assert row[0] == 0.0 and row[-1] > 0.9999


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
    """Erode adds to what convert used (1 + 3); a feather of 8 over a converted 6 is one of 10 (Gaussian
    widths add in quadrature); they go back to neutral on the strip, the colour stays."""
    baked = rendered["baked"]
    assert baked["moved"] == ["erode 4", "feather 10"]
    assert (baked["erode"], baked["feather"], baked["auto"]) == (4, 10, False)
    assert baked["left"] == {"Erode": 0, "Feather": 0.0, "Gain": [1.5, 1.5, 1.5, 1.0]}


def test_blender_before_5_gets_the_color_balance_modifier(rendered):
    assert rendered["fallback"] == [["COLOR_BALANCE", "Color Match"]]
