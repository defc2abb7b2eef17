"""Run by tests/test_blend.py in a fresh Python with the bpy module: renders the sequencer headless with
and without the FaceReplace Blend modifier on synthetic face layers and prints the pixels' figures as
one JSON line. (A separate process: the render settings and strips never touch another test's scene.)"""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import bpy
import cv2
import numpy as np
import OpenEXR

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("blend", ROOT / "addon" / "blend.py")
blend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(blend)

folder = Path(sys.argv[1])
W, H = 96, 64
BOX = (slice(16, 48), slice(24, 72))  # the opaque face: rows 16-47, columns 24-71


def write_layer(name: str, rgb) -> Path:
    layer = np.zeros((H, W, 4), np.float32)
    layer[BOX] = [*rgb, 1.0]
    path = folder / f"{name}.exr"
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"RGBA": layer}) as f:
        f.write(str(path))
    return path


scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
scene.view_settings.view_transform = "Standard"
scene.render.dither_intensity = 0.0
scene.frame_start = scene.frame_end = 1
strips = scene.sequence_editor_create().strips


def render(name: str, depth: str = "32") -> np.ndarray:
    settings = scene.render.image_settings
    if depth == "8":
        settings.file_format, settings.color_depth, settings.color_mode = "PNG", "8", "RGBA"
        scene.render.filepath = str(folder / f"{name}.png")
    else:
        settings.file_format, settings.color_depth, settings.color_mode = "OPEN_EXR", "32", "RGBA"
        scene.render.filepath = str(folder / f"{name}.exr")
    bpy.ops.render.render(write_still=True)
    if depth == "8":
        image = bpy.data.images.load(scene.render.filepath)
        pixels = np.array(image.pixels[:], np.float32).reshape(scene.render.resolution_y, scene.render.resolution_x, 4)
        bpy.data.images.remove(image)
        return np.round(pixels * 255)
    with OpenEXR.File(scene.render.filepath) as f:
        return np.array(f.channels()["RGBA"].pixels)


def high_pass_energy(rgb: np.ndarray) -> float:
    """Mean squared difference of each pixel from its 3x3 mean, inside the face (edges left out)."""
    inner = rgb[20:44, 28:68]
    padded = rgb[19:45, 27:69]
    mean = sum(padded[dy:dy + inner.shape[0], dx:dx + inner.shape[1]] for dy in range(3) for dx in range(3)) / 9
    return float(((inner - mean) ** 2).mean())


face = strips.new_image("face", str(write_layer("face", (0.4, 0.3, 0.2))), 1, 1)
face.alpha_mode = "PREMUL"
out = {"has_compositor_modifier": blend.has_compositor_modifier()}
plain, plain8 = render("plain"), render("plain8", "8")
blend.add_blend_modifier(face, scene)
out["modifiers"] = [(m.type, m.name) for m in face.modifiers]
neutral, neutral8 = render("neutral"), render("neutral8", "8")
out["neutral_8bit_identical"] = bool(np.array_equal(plain8, neutral8))
out["neutral_float_max_diff"] = float(np.abs(neutral - plain).max())
# the same modifier with a bare pass-through group: what the modifier itself costs in float
passthrough = bpy.data.node_groups.new("pass", "CompositorNodeTree")
passthrough.interface.new_socket("Image", in_out="INPUT", socket_type="NodeSocketColor")
passthrough.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
passthrough.links.new(passthrough.nodes.new("NodeGroupInput").outputs[0], passthrough.nodes.new("NodeGroupOutput").inputs[0])
wrapper = face.modifiers[0].node_group
face.modifiers[0].node_group = passthrough
out["passthrough_float_max_diff"] = float(np.abs(render("passthrough") - plain).max())
face.modifiers[0].node_group = wrapper


def alpha_box(image):
    ys, xs = np.nonzero(image[..., 3] > 0.5)
    return [int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())]


out["alpha_box"] = {"neutral": alpha_box(neutral)}
for erode in (3, -2):
    blend.set_values(face, {"Erode": erode})
    out["alpha_box"][str(erode)] = alpha_box(render(f"erode{erode}"))
blend.set_values(face, {"Erode": 0, "Feather": 8.0})
out["feather_row"] = render("feather")[32, 16:34, 3].tolist()
blend.set_values(face, {"Feather": 0.0, "Gain": (2.0, 2.0, 2.0, 1.0)})
out["gain_centre"] = render("gain")[32, 48].tolist()
blend.set_values(face, {"Gain": (1.0, 1.0, 1.0, 1.0), "Saturation": 0.0})
out["grey_centre"] = render("grey")[32, 48].tolist()
blend.set_values(face, {"Saturation": 1.0})

# grain, on a flat grey face: the high-pass energy added, against what white noise of that spread adds
face.elements[0].filename = write_layer("grey", (0.5, 0.5, 0.5)).name
blend.set_values(face, blend.NEUTRAL)
flat = render("flat")
out["grain"] = {"sigma": 0.05, "before": high_pass_energy(flat[..., :3])}
for size in (1.0, 4.0):
    blend.set_values(face, {"Grain": 0.05, "Grain Size": size})
    grainy = render(f"grain{size}")
    out["grain"][str(size)] = {"energy": high_pass_energy(grainy[..., :3]),
                               "std": float((grainy - flat)[20:44, 28:68, :3].std()),
                               "outside": float(np.abs(grainy - flat)[:8].max())}
blend.set_values(face, blend.NEUTRAL)

# Bake: erode and feather move into the convert settings, colour stays
blend.set_values(face, {"Erode": 3, "Feather": 8.0, "Gain": (1.5, 1.5, 1.5, 1.0)})
convert = SimpleNamespace(erode=1, use_auto_feather=True, feather=0)
out["baked"] = {"moved": blend.bake(face, convert, 6.0), "erode": convert.erode, "feather": convert.feather,
                "auto": convert.use_auto_feather, "left": {k: v for k, v in blend.values(face).items()
                                                            if k in ("Erode", "Feather", "Gain")}}

# Feather and Edge Blur, one pixel a step, on a layer as convert writes one: a soft edge EDGE pixels wide
# (a Gaussian of sigma EDGE/4, as engine.stages.convert.shape_mask draws it) and detail (stripes 4 pixels apart)
# up to it, in a wider frame so the widest edge stays inside
EDGE, SOFT_W, SOFT_H = 12.0, 192, 96
scene.render.resolution_x, scene.render.resolution_y = SOFT_W, SOFT_H
cover = np.zeros((SOFT_H, SOFT_W), np.float32)
cover[16:80, 48:144] = 1.0
cover = cv2.GaussianBlur(cover, (13, 13), EDGE / 4)
stripes = np.where(np.arange(SOFT_W) % 4 < 2, 0.6, 0.2).astype(np.float32)[None, :].repeat(SOFT_H, 0)
soft = np.dstack([stripes * cover, stripes * cover, stripes * cover, cover])  # premultiplied
with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"RGBA": soft}) as f:
    f.write(str(folder / "soft.exr"))
face.elements[0].filename = "soft.exr"
blend.set_values(face, {**blend.NEUTRAL, blend.CONVERTED_EDGE: EDGE})  # as add_result_strips sets it
out["soft"] = {"feather_rows": [], "edge_blur_rows": []}
for step in range(13):
    blend.set_values(face, {"Feather": float(step), "Edge Blur": 0.0})
    out["soft"]["feather_rows"].append(render(f"feather_{step}")[48, :96].tolist())  # across the left edge
for step in range(9):
    blend.set_values(face, {"Feather": 0.0, "Edge Blur": float(step)})
    out["soft"]["edge_blur_rows"].append(render(f"edge_blur_{step}")[48, :120].tolist())
scene.render.resolution_x, scene.render.resolution_y = W, H

# Before Blender 5.0: the Color Balance modifier instead
blend.has_compositor_modifier = lambda: False
older = strips.new_image("older", str(folder / "face.exr"), 3, 1)
blend.add_blend_modifier(older, scene)
out["fallback"] = [(m.type, m.name) for m in older.modifiers]
print(json.dumps(out))
