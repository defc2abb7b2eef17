"""The whole face swap inside Blender, headless, through the FaceReplace extension's own operators.

    .venv/bin/python demo/blender_demo.py [--iterations 3000] [--preset tiny] [--detail 3] [--device auto]

It builds the extension zip and installs it into a private Blender user folder (demo/out/blender-user),
makes a .blend whose sequencer holds the sample shot (Grace Hopper, an mp4) as B, with A (the face put in) the
astronaut as a folder of frames, then runs extract, a short train and convert (with the plate's own fine
texture put back onto the face, convert's --detail), which adds the face layer and matte strips. A hand
and a microphone (demo/occluders.py) cross B's face: before training, the Masks panel's operators label a
few frames (the occluders' outlines drawn into label Masks, as an artist would), train the mask model and
apply it, and convert intersects its mask with the learned matte, so the occluders stay the plate's. It
saves demo/out/demo.blend, renders the sequencer to demo/out/demo.mp4, and writes demo/out/still.png (a
frame of the plate beside the same frame swapped, and the matte, the occluders cut out of it).
"""

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo" / "out"
USER = OUT / "blender-user"
# The best CPU settings docs/train.md ("Quality per minute of training") measured on a 64 px model: the
# late phase from 80% of the iterations with learning-rate dropout 0.3 (the mouth carried), the mouth
# openings each faceset has few faces of shown more often (the same-person rate held on reruns), and at convert
# the plate's texture back (--detail 3), the edge matched to the plate (--edge-match 1) and the mask eroded
# by 3.6% of the face's width (8 px of d18's 223; the sample's face is 127 px wide): the seam halved.
LATE_PHASE, LR_DROPOUT = 0.8, 0.3
BALANCE_EXPRESSIONS = True
DETAIL = 3.0
EDGE_MATCH = 1.0
ERODE = 5
LABELLED_FRAMES = 8  # frames of B labelled in the Masks panel, spread over the shot
MASK_ITERATIONS = 300
os.environ["BLENDER_USER_RESOURCES"] = str(USER)  # before bpy starts: the extension installs in here
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from demo import occluders, samples  # noqa: E402
from scripts.build_extension import build  # noqa: E402

PACKAGE = "bl_ext.user_default.facereplace"
SIZE = (480, 360)
FPS = 24


def make_shots(out: Path, frames: int) -> tuple[Path, Path, list[np.ndarray]]:
    """A: the astronaut as an image sequence. B: Grace Hopper as an mp4 shot, a hand and a
    microphone crossing her face; and B's occluders per frame (boolean masks)."""
    frames_a, _ = samples.make_clip("astronaut", frames, SIZE)
    frames_b, matrices = samples.make_clip("grace_hopper", frames, SIZE, scale=0.7)
    frames_b, occluder, _ = occluders.occlude(frames_b, occluders.clip_landmarks("grace_hopper", matrices))
    return (samples.write_sequence(out / "shot_a", frames_a), samples.write_video(out / "shot_b.mp4", frames_b, FPS),
            occluder)


def learn_occlusion(scene: bpy.types.Scene, occluder: list[np.ndarray]) -> None:
    """The Masks panel: label a few frames of B (the occluders' outlines drawn into each label Mask's
    Occluders layer), train the mask model, apply it; convert then intersects its mask with the matte."""
    masks = importlib.import_module(f"{PACKAGE}.masks")
    plate = next(s for s in scene.sequence_editor.strips if s.name == "Hopper")
    for index in np.linspace(0, len(occluder) - 1, LABELLED_FRAMES).round().astype(int):
        scene.frame_set(plate.frame_final_start + int(index))
        bpy.ops.facereplace.mask_label()
        label = bpy.data.masks[f"FaceReplace B {index + 1:06d}"]  # the movie's frames are numbered from 1
        occluders.draw_outlines(label.layers[masks.OCCLUDER_LAYER], occluder[index], masks.to_mask_space)
    scene.facereplace_masks.iterations = MASK_ITERATIONS
    bpy.ops.facereplace.mask_train()
    bpy.ops.facereplace.mask_apply()
    scene.facereplace.convert.mask = "predicted+extended+learned"


def install_extension() -> None:
    zip_path = build(dist=OUT / "dist")
    bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    print(f"installed {zip_path.name} as {PACKAGE}")


def make_project(shot_a: Path, shot_b: Path, preset: str, iterations: int, detail: float) -> bpy.types.Scene:
    scene = bpy.context.scene
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = *SIZE, 100
    render.fps = FPS
    scene.view_settings.view_transform = "Standard"  # show the plate's own colours
    plate = scene.sequence_editor_create().strips.new_movie("Hopper", str(shot_b), 1, 1)
    scene.frame_start, scene.frame_end = plate.frame_final_start, plate.frame_final_end - 1
    settings = scene.facereplace
    settings.a.source, settings.a.folder = "FOLDER", str(shot_a)
    settings.b.strip = plate.name
    settings.train.preset, settings.train.iterations = preset, iterations
    settings.train.late_phase, settings.train.lr_dropout = LATE_PHASE, LR_DROPOUT
    settings.train.balance_expressions = BALANCE_EXPRESSIONS
    settings.convert.detail, settings.convert.edge_match, settings.convert.erode = detail, EDGE_MATCH, ERODE
    bpy.ops.wm.save_as_mainfile(filepath=str(OUT / "demo.blend"))
    return scene


def render_movie(scene: bpy.types.Scene, path: Path) -> None:
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0 splits images from video
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    scene.render.ffmpeg.format = "MPEG4"
    scene.render.ffmpeg.codec = "H264"
    scene.render.ffmpeg.constant_rate_factor = "HIGH"
    scene.render.use_file_extension = False
    scene.render.filepath = str(path)
    bpy.ops.render.render(animation=True)


def render_frame(scene: bpy.types.Scene, frame: int, path: Path) -> np.ndarray:
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "IMAGE"
    settings.file_format, settings.color_mode = "PNG", "RGB"
    scene.frame_set(frame)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return cv2.imread(str(path))


def write_still(scene: bpy.types.Scene, path: Path) -> None:
    """The middle frame: the plate (face layer muted) beside the swap and its matte."""
    face = next(s for s in scene.sequence_editor.strips if s.get("facereplace") == "face")
    frame = (face.frame_final_start + face.frame_final_end) // 2
    swapped = render_frame(scene, frame, OUT / "frame_swapped.png")
    face.mute = True
    plate = render_frame(scene, frame, OUT / "frame_plate.png")
    face.mute = False
    output = Path(bpy.path.abspath(scene.facereplace.convert.output))
    matte = cv2.imread(str(output / "matte" / f"matte_{frame - face.frame_final_start + 1:06d}.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(path), np.hstack([plate, swapped, cv2.cvtColor(matte, cv2.COLOR_GRAY2BGR)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000, help="training iterations (more: a better face)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "fast", "quality"])
    parser.add_argument("--detail", type=float, default=DETAIL, help="the plate's own fine detail put back (convert's --detail)")
    parser.add_argument("--frames", type=int, default=48, help="frames per sample shot")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    args = parser.parse_args()

    for leftover in (OUT / "facereplace", USER):  # an earlier run's work and extension: start afresh
        shutil.rmtree(leftover, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    install_extension()
    preferences = bpy.context.preferences.addons[PACKAGE].preferences
    preferences.detector = "dlib"  # offline and the same on every machine
    preferences.device = args.device
    shot_a, shot_b, occluder = make_shots(OUT / "shots", args.frames)
    scene = make_project(shot_a, shot_b, args.preset, args.iterations, args.detail)

    bpy.ops.facereplace.check_engine()
    print(preferences.engine_status)
    bpy.ops.facereplace.extract(side="BOTH")
    for side in ("a", "b"):  # each faceset's faces and masks, where a person looks first
        faceset = Path(bpy.path.abspath(getattr(scene.facereplace, side).faceset))
        shutil.copy(faceset / "contact_sheet.png", OUT / f"contact_sheet_{side}.png")
    learn_occlusion(scene, occluder)
    bpy.ops.facereplace.train()
    bpy.ops.facereplace.convert()
    bpy.ops.wm.save_mainfile()

    render_movie(scene, OUT / "demo.mp4")
    write_still(scene, OUT / "still.png")
    for name in ("demo.blend", "demo.mp4", "still.png", "contact_sheet_a.png", "contact_sheet_b.png"):
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
