"""convert --format exr-multilayer: one EXR per frame with face, matte, hull (and occlusion) layers over
the face's box, read back with OpenEXR, compared with the single-layer EXRs, and read by Blender."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.base import media
from engine.faces import align
from engine.folders import exr_layers
from engine.folders.faceset import Alignments, learned_mask
from engine.folders.output import read_marking
from engine.stages.convert import convert
from tests.test_convert import SoftMaskModel, passthrough_model  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
FRAMES = "1-3"


def convert_both(model, faceset, shot, folder: Path, **settings) -> dict[str, Path]:
    outs = {}
    for fmt in ("exr", "exr-multilayer"):
        outs[fmt] = folder / fmt
        convert(shot, faceset, model, outs[fmt], feather=6, erode=2, color="none", format=fmt, frames=FRAMES,
                device="cpu", **settings)
    return outs


@pytest.mark.parametrize("alpha", ["premultiplied", "straight"])
@pytest.mark.parametrize("passthrough_model", [SoftMaskModel], indirect=True)
def test_layers_hold_the_single_layer_pixels_over_the_face_box_only(passthrough_model, faceset_b, shot_b,  # noqa: F811
                                                                    tmp_path, alpha):
    outs = convert_both(passthrough_model, faceset_b, shot_b, tmp_path, alpha=alpha)
    single, multi = outs["exr"], outs["exr-multilayer"]
    assert not (multi / "matte").exists()
    manifest = json.loads((multi / "manifest.json").read_text())
    assert manifest["files"] == {"face": "face/face_%06d.exr"}
    assert manifest["layers"] == ["face", "matte", "hull"] and manifest["alpha"] == alpha
    shot = Alignments.load(faceset_b / "alignments.json")
    w, h = shot.source_size
    for number in (1, 2, 3):
        path = multi / "face" / f"face_{number:06d}.exr"
        layers, header = exr_layers.read(path)
        assert sorted(layers) == ["face", "hull", "matte"]
        face = media.read_image(single / "face" / f"face_{number:06d}.exr")
        matte = media.read_image(single / "matte" / f"matte_{number:06d}.exr")
        assert np.array_equal(layers["face"], face)  # float32 scene-linear, bit for bit, as --alpha chose
        assert np.array_equal(layers["matte"], matte)
        assert 0 < matte.max() and (matte > 0).mean() < 0.5
        # the data window: the face crop's box, smaller than the frame, holding all of the face
        (x0, y0), (x1, y1) = header["dataWindow"]
        assert tuple(header["displayWindow"][1]) == (w - 1, h - 1)
        assert (x1 - x0 + 1) * (y1 - y0 + 1) < 0.6 * w * h  # the crop, not the frame
        ys, xs = np.nonzero(matte)
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
        # the hull: the landmarks' convex hull in frame pixels
        face_record = shot.frame(number).faces[0]
        expected = np.zeros((h, w), np.uint8)
        points = np.asarray(face_record.landmarks, np.float32)
        cv2.fillConvexPoly(expected, cv2.convexHull(np.round(points).astype(np.int32)), 1)
        hull = layers["hull"] > 0.5
        assert (hull & (expected > 0)).sum() / (hull | (expected > 0)).sum() > 0.95
        # placement and model in the header
        assert header["facereplace_model_hash"] == "pass-through"
        placed = json.loads(header["facereplace_matrices"])
        matrix = align.scale_matrix(face_record.matrix, shot.face_size, placed["patch_size"])
        assert np.allclose(placed["faces"][0]["matrix"], matrix, atol=1e-8)
        assert np.allclose(placed["faces"][0]["inverse"], align.invert_matrix(matrix), atol=1e-6)
        assert read_marking(path)["content"] == "layers"


def test_a_learned_matte_becomes_the_occlusion_layer(passthrough_model, faceset_b, shot_b, tmp_path):  # noqa: F811
    """With --mask learned, each face's learned matte (here a synthetic bar across the aligned mouth, as
    `mask apply` would write it into the faceset) comes out in frame pixels as a holdout matte: 1 on the
    bar, 0 on the rest of the face and off it."""
    faceset = tmp_path / "faceset"
    shutil.copytree(faceset_b, faceset)
    alignments = Alignments.load(faceset / "alignments.json")
    for _, face in alignments.faces():
        size = alignments.face_size
        learned = np.full((size, size), 255, np.uint8)
        learned[int(size * 0.62):int(size * 0.72)] = 0
        path = learned_mask(faceset, face)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), learned)
    out = tmp_path / "out"
    convert(shot_b, faceset, passthrough_model, out, mask="learned", format="exr-multilayer", frames="2", device="cpu")
    assert json.loads((out / "manifest.json").read_text())["layers"] == ["face", "matte", "occlusion", "hull"]
    layers, header = exr_layers.read(out / "face" / "face_000002.exr")
    occlusion = layers["occlusion"]
    matrix = np.asarray(json.loads(header["facereplace_matrices"])["faces"][0]["inverse"])
    size = json.loads(header["facereplace_matrices"])["patch_size"]
    on_bar = align.transform_points(np.array([[size * 0.5, size * 0.67]]), matrix).round().astype(int)[0]
    above = align.transform_points(np.array([[size * 0.5, size * 0.4]]), matrix).round().astype(int)[0]
    assert occlusion[on_bar[1], on_bar[0]] == 1.0
    assert occlusion[above[1], above[0]] == 0.0 and occlusion[0, 0] == 0.0
    assert 0.01 < (occlusion > 0.5).mean() < 0.2


BLENDER_CHECK = textwrap.dedent("""
    import json, sys
    import bpy
    path, out = sys.argv[1], sys.argv[2]
    image = bpy.data.images.load(path)
    scene = bpy.context.scene
    tree = bpy.data.node_groups.new("Read", "CompositorNodeTree")
    scene.compositing_node_group = tree
    node = tree.nodes.new("CompositorNodeImage")
    node.image = image
    passes = [o.name for o in node.outputs]
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    tree.links.new(node.outputs["face"], tree.nodes.new("NodeGroupOutput").inputs[0])
    (x0, y0), (x1, y1) = json.loads(sys.argv[3])
    scene.render.resolution_x, scene.render.resolution_y = x1 - x0 + 1, y1 - y0 + 1
    scene.render.resolution_percentage = 100
    scene.render.use_sequencer = False
    scene.view_settings.view_transform = "Standard"
    settings = scene.render.image_settings
    settings.file_format, settings.color_depth, settings.color_mode = "OPEN_EXR", "32", "RGBA"
    scene.render.filepath = out
    bpy.ops.render.render(write_still=True)
    print(json.dumps({"type": image.type, "passes": passes}))
""")


@pytest.mark.parametrize("passthrough_model", [SoftMaskModel], indirect=True)
def test_blenders_compositor_reads_the_layers(passthrough_model, faceset_b, shot_b, tmp_path):  # noqa: F811
    """Blender opens the file as a multilayer image whose passes are the layers, and its compositor
    gives back the face layer's linear values exactly. (Blender reads the data window as the whole
    image, so the check renders at the data window's size.)"""
    pytest.importorskip("bpy")
    out = tmp_path / "out"
    convert(shot_b, faceset_b, passthrough_model, out, color="none", format="exr-multilayer", frames="1", device="cpu")
    path = out / "face" / "face_000001.exr"
    layers, header = exr_layers.read(path)
    window = [[int(v) for v in corner] for corner in header["dataWindow"]]
    rendered = tmp_path / "rendered.exr"
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender-user"), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", BLENDER_CHECK, str(path), str(rendered), json.dumps(window)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"type": "MULTILAYER", "passes": ["face", "hull", "matte"]}
    (x0, y0), (x1, y1) = window
    assert np.array_equal(media.read_image(rendered), layers["face"][y0:y1 + 1, x0:x1 + 1])
