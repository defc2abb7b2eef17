"""Convert's face layers as applications nobody here wrote read them: OpenImageIO's oiiotool, Blender's
compositor and Pillow put the layer over the plate, and the result must be convert's own finished frame.

Everything is compared in linear light, in float. The plate is the 8-bit sRGB shot as convert decodes it,
linearised with the sRGB curve (IEC 61966-2-1, colorspace.srgb_to_linear) and handed to each reader as a float
EXR, so only the layer's reading is under test; convert composites in linear light too.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.base import colorspace, media
from engine.folders.output import read_marking
from engine.stages.convert import convert

FRAMES = (2, 3)  # two frames of the 16-frame shot
TOLERANCE = 1e-3  # in linear light, on 0-1 values


def oiiotool() -> str | None:
    """The oiiotool console script of the OpenImageIO wheel in this venv (requirements.txt), else any."""
    beside = Path(sys.executable).parent / "oiiotool"
    return str(beside) if beside.is_file() else shutil.which("oiiotool")


@pytest.fixture(scope="module")
def shot(shot_b, tmp_path_factory) -> dict:
    """The plate's frames linearised, and written as float RGBA EXRs for the readers."""
    folder = tmp_path_factory.mktemp("plates")
    plates = {}
    for number, frame in media.FrameSource(shot_b).frames(list(FRAMES)):
        linear = colorspace.srgb_to_linear(frame / 255.0)
        path = folder / f"plate_{number:06d}.exr"
        media.write_image(path, np.dstack([linear, np.ones(linear.shape[:2], np.float32)]))
        plates[number] = (linear, path)
    return plates


def converted(kind: str, fmt: str, alpha: str | None, shot_b, faceset_b, tiny_model, factory) -> Path:
    out = factory.mktemp(kind) / "out"
    convert(shot_b, faceset_b, tiny_model, out, direction="a2b", format=fmt, alpha=alpha, write_frames=True,
            frames=f"{FRAMES[0]}-{FRAMES[1]}", device="cpu")
    return out


@pytest.fixture(scope="module")
def exr_layers(shot_b, faceset_b, tiny_model, tmp_path_factory) -> Path:
    """B's shot drawn as A, EXR layers with the default (premultiplied) alpha and finished frames."""
    return converted("exr", "exr", None, shot_b, faceset_b, tiny_model, tmp_path_factory)


@pytest.fixture(scope="module")
def straight_exr_layers(shot_b, faceset_b, tiny_model, tmp_path_factory) -> Path:
    """The same with --alpha straight: what every EXR reader takes for premultiplied."""
    return converted("straight", "exr", "straight", shot_b, faceset_b, tiny_model, tmp_path_factory)


@pytest.fixture(scope="module")
def png_layers(shot_b, faceset_b, tiny_model, tmp_path_factory) -> Path:
    return converted("png", "png16", None, shot_b, faceset_b, tiny_model, tmp_path_factory)


def layer_path(out: Path, number: int, ext: str) -> Path:
    return out / "face" / f"face_{number:06d}{ext}"


def finished_linear(out: Path, number: int) -> np.ndarray:
    """Convert's own finished frame, in linear light."""
    exr = out / "frames" / f"frame_{number:06d}.exr"
    if exr.is_file():
        return media.read_image(exr)
    return colorspace.srgb_to_linear(media.read_image(out / "frames" / f"frame_{number:06d}.png") / 65535.0)


def errors(result: np.ndarray, expected: np.ndarray) -> dict:
    diff = np.abs(result[..., :3].astype(np.float64) - expected[..., :3]).max(axis=2)
    return {"mean": diff.mean(), "max": diff.max(), "pixels_over_tolerance": int((diff > TOLERANCE).sum())}


def oiio_over(layer: Path, plate: Path, out: Path) -> np.ndarray:
    tool = oiiotool()
    if tool is None:
        pytest.skip("oiiotool not installed (pip install -r requirements.txt brings OpenImageIO's)")
    result = subprocess.run([tool, str(layer), str(plate), "--over", "-d", "float", "-o", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return media.read_image(out)


# ---------------------------------------------------------------- the layer itself


def test_exr_layer_is_premultiplied_and_solid(exr_layers):
    """Premultiplied in the file and its marking, exactly 0 colour where alpha is 0, and a matte that
    reaches exactly 1.0 over the face (test_convert checks the core and the clean outside in full)."""
    assert media.read_json(exr_layers / "manifest.json")["alpha"] == "premultiplied"
    for number in FRAMES:
        path = layer_path(exr_layers, number, ".exr")
        assert read_marking(path)["alpha"] == "premultiplied"
        layer = media.read_image(path)
        alpha, color = layer[..., 3], layer[..., :3]
        assert np.array_equal(alpha, media.read_image(exr_layers / "matte" / f"matte_{number:06d}.exr"))
        assert not color[alpha == 0].any()
        assert np.all(color <= alpha[..., None] + 1e-6)  # colour times alpha, of a face within 0-1
        assert (alpha == 1.0).sum() > 1000


def test_png_layer_is_straight_and_reaches_full_scale(png_layers):
    assert media.read_json(png_layers / "manifest.json")["alpha"] == "straight"
    for number in FRAMES:
        path = layer_path(png_layers, number, ".png")
        layer = media.read_image(path)
        assert layer.dtype == np.uint16 and read_marking(path)["alpha"] == "straight"
        assert not layer[..., :3][layer[..., 3] == 0].any()
        assert (layer[..., 3] == 65535).sum() > 1000


# ---------------------------------------------------------------- composited by others


def test_oiiotool_over_equals_the_finished_frames(exr_layers, shot, tmp_path):
    for number in FRAMES:
        result = oiio_over(layer_path(exr_layers, number, ".exr"), shot[number][1], tmp_path / f"{number}.exr")
        measured = errors(result, finished_linear(exr_layers, number))
        assert measured["max"] < TOLERANCE, measured


def test_straight_exr_fails_the_same_readers(straight_exr_layers, shot, tmp_path):
    """What --alpha straight gives a reader that follows EXR's convention: the face's colour added over
    the plate, far off wherever the matte is soft."""
    for number in FRAMES:
        result = oiio_over(layer_path(straight_exr_layers, number, ".exr"), shot[number][1],
                           tmp_path / f"{number}.exr")
        measured = errors(result, finished_linear(straight_exr_layers, number))
        assert measured["max"] > 0.1 and measured["pixels_over_tolerance"] > 300, measured


@pytest.fixture(scope="module")
def bpy(tmp_path_factory):
    """Blender as a module, its user folders in a temporary folder (set before it first starts)."""
    if "bpy" not in sys.modules:
        os.environ["BLENDER_USER_RESOURCES"] = str(tmp_path_factory.mktemp("blender-user"))
        with pytest.MonkeyPatch.context() as patch:  # and whatever it creates under HOME as it starts
            patch.setenv("HOME", os.environ["BLENDER_USER_RESOURCES"])
            return pytest.importorskip("bpy")
    return pytest.importorskip("bpy")


def blender_alpha_over(bpy, layer: Path, plate: Path, out: Path) -> np.ndarray:
    """A scene of its own whose compositor reads both images with Image nodes and puts the layer over the
    plate with Alpha Over, rendered headless to a float EXR."""
    height, width = media.read_image(plate).shape[:2]
    scene = bpy.data.scenes.new("layers")
    tree = bpy.data.node_groups.new("layers", "CompositorNodeTree")
    try:
        scene.compositing_node_group = tree
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        images = [tree.nodes.new("CompositorNodeImage") for _ in range(2)]
        for node, path in zip(images, (plate, layer), strict=True):
            node.image = bpy.data.images.load(str(path))  # EXR: linear, premultiplied, as Blender reads it
        over = tree.nodes.new("CompositorNodeAlphaOver")
        output = tree.nodes.new("NodeGroupOutput")
        tree.links.new(images[0].outputs["Image"], over.inputs["Background"])
        tree.links.new(images[1].outputs["Image"], over.inputs["Foreground"])
        tree.links.new(over.outputs["Image"], output.inputs[0])
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
        settings = scene.render.image_settings
        settings.file_format, settings.color_depth, settings.color_mode = "OPEN_EXR", "32", "RGB"
        scene.render.filepath = str(out)
        bpy.ops.render.render(write_still=True, scene=scene.name)
        return media.read_image(out)
    finally:
        for node in list(tree.nodes):
            if node.bl_idname == "CompositorNodeImage" and node.image:
                bpy.data.images.remove(node.image)
        bpy.data.scenes.remove(scene)
        bpy.data.node_groups.remove(tree)


def test_blender_compositor_alpha_over_equals_the_finished_frames(bpy, exr_layers, straight_exr_layers, shot,
                                                                   tmp_path):
    for number in FRAMES:
        result = blender_alpha_over(bpy, layer_path(exr_layers, number, ".exr"), shot[number][1],
                                    tmp_path / f"{number}.exr")
        measured = errors(result, finished_linear(exr_layers, number))
        assert measured["max"] < TOLERANCE, measured
        result = blender_alpha_over(bpy, layer_path(straight_exr_layers, number, ".exr"), shot[number][1],
                                    tmp_path / f"straight_{number}.exr")
        assert errors(result, finished_linear(straight_exr_layers, number))["max"] > 0.1


def over_straight_srgb(layer: np.ndarray, plate_linear: np.ndarray) -> np.ndarray:
    """A straight sRGB layer (0-1 floats) over a linear plate, in linear light."""
    alpha = layer[..., 3:]
    return colorspace.srgb_to_linear(layer[..., :3]) * alpha + plate_linear * (1 - alpha)


def test_png_layer_read_as_straight_equals_the_finished_frames(png_layers, shot):
    """OpenImageIO reads the 16-bit PNG as it is stored (straight, 16 bits); Pillow, as most scripts
    would, gets only its top 8 bits, so it is held to an 8-bit tolerance."""
    from PIL import Image

    oiio = pytest.importorskip("OpenImageIO", reason="OpenImageIO not installed (pip install -r requirements.txt)")
    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)  # keep PNG's straight colour as it is stored
    for number in FRAMES:
        path = layer_path(png_layers, number, ".png")
        reader = oiio.ImageInput.open(str(path), config)
        try:
            assert reader.spec().format == oiio.TypeDesc("uint16")
            layer = reader.read_image(oiio.FLOAT)
        finally:
            reader.close()
        expected = finished_linear(png_layers, number)
        measured = errors(over_straight_srgb(layer, shot[number][0]), expected)
        assert measured["max"] < TOLERANCE, measured
        with Image.open(path) as image:
            assert image.mode == "RGBA"
            eight_bit = np.asarray(image, np.float32) / 255.0
        # Pillow keeps the high byte of each sample: up to 1/255 below, about 0.01 in linear light.
        assert errors(over_straight_srgb(eight_bit, shot[number][0]), expected)["max"] < 0.012


# ---------------------------------------------------------------- the add-on


@pytest.mark.parametrize("fmt, mode", [("exr", "PREMUL"), ("png16", "STRAIGHT")])
def test_addon_strip_takes_its_alpha_mode_from_the_manifest(fmt, mode, bpy, shot, request):
    """The add-on's face strip over a plate folder: Premultiplied for EXR layers, Straight for PNG."""
    from addon import strips

    output = request.getfixturevalue("exr_layers" if fmt == "exr" else "png_layers")
    plates = shot[FRAMES[0]][1].parent
    scene = bpy.data.scenes.new(f"strips-{fmt}")
    try:
        target = strips.Shot("plates", plates, FRAMES, 1, None)
        added = strips.add_result_strips(scene, target, output)
        assert added["face"].alpha_mode == mode and added["face"].blend_type == "ALPHA_OVER"
        ext = ".exr" if fmt == "exr" else ".png"
        assert [e.filename for e in added["face"].elements] == [layer_path(output, n, ext).name for n in FRAMES]
    finally:
        bpy.data.scenes.remove(scene)
