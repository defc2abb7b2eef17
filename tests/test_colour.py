"""Colour-managed plates: ACEScg EXR and 10-bit DPX sequences made from the packaged photos through
OpenColorIO, converted and extracted in their own colour space; the errors for an unknown space or config.
Colour matching of A's face to B's on the packaged photos' faces."""

import json

import numpy as np
import pytest

from demo import samples
from engine.base import colorspace, media
from engine.folders.faceset import Alignments
from engine.stages.convert import convert
from engine.stages.extract import extract
from tests.conftest import run_engine
from tests.test_convert import passthrough_model, source_frames  # noqa: F401  (a fixture)
from tests.test_extract import assert_one_line_error

ACESCG = colorspace.Space("ACEScg")
HIGHLIGHT = 6.0  # scene-linear, far above what any display-referred file holds


def acescg_plate(frames: dict[int, np.ndarray], folder) -> dict[int, np.ndarray]:
    """The sRGB frames as an ACEScg EXR sequence, a highlight above 1.0 in a corner of each."""
    plates = {}
    for number, frame in frames.items():
        plate = colorspace.convert(frame / 255.0, colorspace.MODEL, ACESCG)
        plate[:24, :48] = HIGHLIGHT
        media.write_image(folder / f"plate.{number:04d}.exr", plate)
        plates[number] = media.read_image(folder / f"plate.{number:04d}.exr")
    return plates


def test_acescg_exr_round_trips_bit_identical_outside_the_matte(passthrough_model, faceset_b, shot_b,  # noqa: F811
                                                                tmp_path):
    """Outside the matte frames/ holds the plate's own float values, highlights included; inside, the
    face comes back in ACEScg unshifted; and the layer over the plate in ACEScg is convert's frame."""
    (tmp_path / "plate").mkdir()
    plates = acescg_plate(source_frames(shot_b), tmp_path / "plate")
    out = tmp_path / "out"
    convert(tmp_path / "plate", faceset_b, passthrough_model, out, mask="predicted", feather=3, color="none",
            format="exr", write_frames=True, frames="1-4", device="cpu", plate_colorspace="ACEScg")
    for number in range(1, 5):
        plate = plates[number]
        layer = media.read_image(out / "face" / f"face_{number:06d}.exr")
        finished = media.read_image(out / "frames" / f"frame_{number:06d}.exr")
        alpha = layer[..., 3]
        assert (alpha == 0).mean() > 0.5 and (alpha > 0.999).sum() > 1000
        assert np.array_equal(finished[alpha == 0], plate[alpha == 0])  # bit for bit
        assert np.all(finished[:24, :48] == HIGHLIGHT)
        core = alpha > 0.999
        assert np.abs(layer[..., :3][core] - plate[core]).mean() < 0.01  # the face, in ACEScg, unshifted
        ratio = layer[..., :3][core].mean(0) / plate[core].mean(0)
        assert np.all(np.abs(ratio - 1) < 0.01), ratio
        over = layer[..., :3] + plate * (1 - alpha[..., None])  # premultiplied over, as a compositor does
        assert np.abs(over - finished).max() < 1e-5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["colorspace"] == manifest["plate_colorspace"] == "ACEScg"
    assert manifest["ocio_config"] == colorspace.BUILTIN_CONFIG


def test_srgb_png_and_acescg_exr_swaps_match_in_display_space(tiny_model, faceset_b, shot_b, tmp_path):
    """The same shot as sRGB PNGs and as ACEScg EXRs: the trained model swaps both alike, seen on a display."""
    frames = source_frames(shot_b)
    png = samples_sequence(frames, tmp_path / "png")
    (tmp_path / "exr").mkdir()
    acescg_plate(frames, tmp_path / "exr")
    convert(png, faceset_b, tiny_model, tmp_path / "out_png", direction="b2a", write_frames=True, frames="1-3",
            device="cpu")
    convert(tmp_path / "exr", faceset_b, tiny_model, tmp_path / "out_exr", direction="b2a", format="exr",
            write_frames=True, frames="1-3", device="cpu", plate_colorspace="ACEScg")
    for number in range(1, 4):
        shown_png = media.read_image(tmp_path / "out_png" / "frames" / f"frame_{number:06d}.png") / 65535.0
        exr = media.read_image(tmp_path / "out_exr" / "frames" / f"frame_{number:06d}.exr")
        shown_exr = np.clip(colorspace.convert(exr, ACESCG, colorspace.MODEL), 0, 1)
        matte = media.read_image(tmp_path / "out_exr" / "matte" / f"matte_{number:06d}.exr") > 0
        assert matte.sum() > 1000
        difference = np.abs(shown_png - shown_exr)[matte]
        # The EXR's crop and warp resample linear values, the PNG's sRGB ones: fine detail differs by a few
        # levels (measured: mean 0.0065, 99th percentile 0.025 with a 2-iteration model); a shift would not.
        assert difference.mean() < 0.012 and np.quantile(difference, 0.99) < 0.05, (difference.mean(), difference.max())


def samples_sequence(frames: dict[int, np.ndarray], folder):
    for number, frame in frames.items():
        media.write_image(folder / f"frame_{number:04d}.png", frame)
    return folder


def test_extract_records_the_plate_space_and_sees_acescg_as_srgb(shot_b, tmp_path):
    frames = {n: f for n, f in source_frames(shot_b).items() if n <= 2}
    (tmp_path / "exr").mkdir()
    acescg_plate(frames, tmp_path / "exr")
    extract(samples_sequence(frames, tmp_path / "png"), tmp_path / "fs_png", detector="dlib", size=64)
    extract(tmp_path / "exr", tmp_path / "fs_exr", detector="dlib", size=64, plate_colorspace="ACEScg")
    a, b = Alignments.load(tmp_path / "fs_png"), Alignments.load(tmp_path / "fs_exr")
    assert b.settings["colorspace"] == "ACEScg" and a.settings["colorspace"] == colorspace.DISPLAY
    assert json.loads((tmp_path / "fs_exr" / "extract.json").read_text())["colorspace"] == "ACEScg"
    for fa, fb in zip(a.frames, b.frames, strict=True):
        assert np.abs(np.subtract(fa.faces[0].landmarks, fb.faces[0].landmarks)).max() < 1.0
        faces = [media.read_image(folder / fa.faces[0].image).astype(float) for folder in (tmp_path / "fs_png",
                                                                                            tmp_path / "fs_exr")]
        assert np.abs(faces[0] - faces[1]).mean() < 2.0  # faces/ holds sRGB either way


@pytest.mark.parametrize("verb", ["extract", "convert", "evaluate"])
def test_unknown_colour_space_names_the_available_ones(verb, shot_a, tmp_path, monkeypatch):
    monkeypatch.delenv("OCIO", raising=False)
    extra = {"extract": ["-o", tmp_path / "fs"],
             "convert": ["--alignments", tmp_path, "--model", tmp_path, "-o", tmp_path / "out"],
             "evaluate": ["--alignments", tmp_path, "--layers", tmp_path, "--source", tmp_path]}[verb]
    result = run_engine(verb, shot_a, *extra, "--colorspace", "ACEScgg")
    assert_one_line_error(result, "'ACEScgg'", "ACEScg", "ARRI LogC4", colorspace.BUILTIN_CONFIG)


def test_missing_config_names_the_path_tried(shot_a, tmp_path, monkeypatch):
    monkeypatch.delenv("OCIO", raising=False)
    missing = tmp_path / "studio" / "config.ocio"
    result = run_engine("extract", shot_a, "-o", tmp_path / "fs", "--colorspace", "ACEScg", "--ocio-config", missing)
    assert_one_line_error(result, str(missing))
    monkeypatch.setenv("OCIO", str(missing))  # $OCIO wins over the option
    result = run_engine("extract", shot_a, "-o", tmp_path / "fs", "--colorspace", "ACEScg")
    assert_one_line_error(result, str(missing))


def test_10bit_dpx_sequence_extracts_like_its_png_and_converts(passthrough_model, tmp_path):  # noqa: F811
    """A 10-bit DPX scan of the shot finds the same faces as its PNG frames, and converts with its pixels
    outside the matte kept at the scan's own 10-bit levels."""
    frames, _ = samples.make_clip("astronaut", 3, (320, 240))
    png = samples.write_sequence(tmp_path / "png", frames)
    for i, frame in enumerate(frames, 1):
        media.write_image(tmp_path / "dpx" / f"scan.{i:04d}.dpx", frame.astype(np.uint16) * 257, bits=10)
    scan = media.read_image(tmp_path / "dpx" / "scan.0001.dpx")
    assert scan.dtype == np.uint16 and np.abs(scan.astype(int) - frames[0].astype(int) * 257).max() <= 64  # one 10-bit level
    a = extract(png, tmp_path / "fs_png", detector="dlib", size=128)
    b = extract(tmp_path / "dpx", tmp_path / "fs_dpx", detector="dlib", size=128, plate_colorspace="sRGB Encoded Rec.709 (sRGB)")
    assert a["faces"] == b["faces"] == 3
    for fa, fb in zip(Alignments.load(tmp_path / "fs_png").frames, Alignments.load(tmp_path / "fs_dpx").frames,
                      strict=True):
        assert np.abs(np.subtract(fa.faces[0].landmarks, fb.faces[0].landmarks)).max() < 1.0
    out = tmp_path / "out"
    convert(tmp_path / "dpx", tmp_path / "fs_dpx", passthrough_model, out, color="none", write_frames=True,
            device="cpu", plate_colorspace="sRGB Encoded Rec.709 (sRGB)")
    for number in (1, 2, 3):
        plate = media.read_image(tmp_path / "dpx" / f"scan.{number:04d}.dpx")
        finished = media.read_image(out / "frames" / f"frame_{number:06d}.png")
        matte = media.read_image(out / "matte" / f"matte_{number:06d}.png")
        assert (matte > 0).sum() > 1000 and np.array_equal(finished[matte == 0], plate[matte == 0])


def test_exr_parts_tiles_and_data_windows_read_as_the_frame(tmp_path):
    """A multi-part, tiled EXR whose picture part has a data window inside the frame: the frame comes back
    at the display window's size, the data in place and zeros around it."""
    import OpenImageIO as oiio

    path = tmp_path / "parts.exr"
    depth = oiio.ImageSpec(64, 48, 1, "float")
    depth.channelnames = ("Z",)
    depth.tile_width = depth.tile_height = 16
    beauty = oiio.ImageSpec(20, 10, 4, "half")
    beauty.x, beauty.y, beauty.full_width, beauty.full_height = 30, 7, 64, 48
    beauty.tile_width = beauty.tile_height = 16
    beauty.attribute("name", "beauty")
    depth.attribute("name", "depth")
    pixels = np.linspace(0, 8, 20 * 10 * 4, dtype=np.float32).reshape(10, 20, 4)
    output = oiio.ImageOutput.create(str(path))
    assert output.open(str(path), (depth, beauty))
    assert output.write_image(np.ones((48, 64, 1), np.float32))
    assert output.open(str(path), beauty, "AppendSubimage") and output.write_image(pixels) and output.close()
    frame = media.read_image(path)
    assert frame.shape == (48, 64, 4) and frame.dtype == np.float32
    assert np.allclose(frame[7:17, 30:50], pixels, rtol=1e-3) and frame[7:17, 30:50].max() > 7.9  # half floats
    frame[7:17, 30:50] = 0
    assert not frame.any()
    assert media.image_size(path) == (64, 48)


def test_the_srgb_curves_are_one_for_numpy_and_torch_and_are_the_configs(shot_b):
    """A real frame's 8-bit values decoded to linear light and back: the numpy path (media, evaluate, the
    CPU) and the torch path (convert on a GPU, colour matching) are one definition, so they agree to a
    float's last bits, and they are what the OCIO config itself does for sRGB <-> linear Rec.709."""
    import torch

    _, frame = next(iter(media.FrameSource(shot_b).frames()))
    encoded = frame[..., :3] / 255.0
    linear = colorspace.srgb_to_linear(encoded)
    as_tensor = colorspace.srgb_to_linear(torch.from_numpy(encoded.astype(np.float32)))
    assert linear.dtype == np.float32 and torch.is_tensor(as_tensor)
    np.testing.assert_allclose(as_tensor.numpy(), linear, rtol=1e-6, atol=1e-7)
    by_ocio = np.ascontiguousarray(encoded, np.float32).copy()
    colorspace._processor(colorspace.MODEL, colorspace.BUILTIN_LINEAR).applyRGB(by_ocio.reshape(-1, 3))
    np.testing.assert_allclose(linear, by_ocio, atol=2e-6)
    back = colorspace.linear_to_srgb(linear)
    np.testing.assert_allclose(colorspace.linear_to_srgb(torch.from_numpy(linear)).numpy(), back, rtol=1e-6, atol=1e-7)
    assert np.array_equal(np.round(back * 255), frame[..., :3])  # every 8-bit level comes back to itself


def _faces_and_hull(faceset) -> tuple:
    """The faceset's first face (1 x 3 x H x W in [0, 1]) and its landmark hull (1 x 1 x H x W)."""
    import torch

    from engine.folders.faceset import Faceset, read_face_image

    sample = Faceset(faceset).samples()[0]
    face = torch.from_numpy(read_face_image(sample.image, None) / 255.0).float().permute(2, 0, 1)[None]
    hull = torch.from_numpy(read_face_image(sample.mask_hull, None, grey=True) / 255.0).float()[None, None]
    return face, hull


def test_reinhard_gives_a_bs_light_and_keeps_as_own_colours(faceset_a, faceset_b):
    """B's face (Hopper: wrinkled, ruddy, glasses) spreads its colours far wider than A's: the match gives
    A's face B's mean colour and B's lightness contrast, but its colour axes spread at most 1.5 times as
    wide as A's own, so A's hair and brows at the forehead take no false colours."""
    from engine.base.color import _weighted_stats, match_color, rgb_to_lab

    face, hull = _faces_and_hull(faceset_a)  # aligned crops: A's hull is where both faces are measured
    target, _ = _faces_and_hull(faceset_b)
    face_mean, face_std = (s.flatten() for s in _weighted_stats(rgb_to_lab(face), hull))
    target_mean, target_std = (s.flatten() for s in _weighted_stats(rgb_to_lab(target), hull))
    assert (target_std[1:] / face_std[1:]).max() > 1.5  # what the clamp is for
    matched_mean, matched_std = (s.flatten() for s in _weighted_stats(rgb_to_lab(match_color("rct", face, target, hull)), hull))
    assert np.allclose(matched_mean, target_mean, atol=2.0)
    assert abs(matched_std[0] - target_std[0]) < 0.1 * target_std[0]
    assert (matched_std[1:] <= 1.5 * face_std[1:] + 0.5).all()
