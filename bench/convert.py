"""Convert speed: frames per second at 480p, 1080p and 4K for each output format, CPU and CUDA, with the
time split between decode, model, warp/blend and encode, and what the output weighs and costs to read.

    .venv/bin/python bench/convert.py [--frames 24] [--preset fast] [--write-frames] [--resolutions 1080p 4k]
    .venv/bin/python bench/convert.py --resolutions 1080p 4k --devices cuda --json convert.json
    .venv/bin/python bench/convert.py --resolutions 4k --small-face --formats exr exr-multilayer --frames 8

--small-face keeps the face as small as in a 360p shot (about 150 px) whatever the resolution: the case
exr-multilayer's data window is for. "MB/frame" is the face layer and matte files of one frame; "read ms"
reads all their channels back with OpenEXR (PNG: OpenCV).

    .venv/bin/python bench/convert.py --io [--resolutions 1080p]     still-image read/write only

--io times reading and writing one frame of convert's outputs (16-bit RGBA PNG, float RGBA EXR) through
engine.base.media (OpenImageIO), against the path before it: OpenCV for PNG, the OpenEXR module for EXR.

The shots are the Grace Hopper sample moving with known transforms, so their alignments come from the
transforms (no detector in the timing): the photo's 68 landmarks, found once by dlib, are kept in
bench/sample_landmarks.json, so the benchmark needs no detector models (a GPU machine may lack them). The model is a freshly initialised one of the preset: its speed
does not depend on its weights. Stage times are busy seconds per frame summed over the threads that run
the stage; the stages overlap (reader thread, model, writer pool), so the frame rate follows the
slowest stage per thread rather than their sum.
"""

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo import samples  # noqa: E402
from engine.base import colorspace, media  # noqa: E402
from engine.faces import align  # noqa: E402
from engine.folders.faceset import Alignments, Face, Frame  # noqa: E402
from engine.networks import model as model_module  # noqa: E402
from engine.stages.convert import StageClock, convert  # noqa: E402

RESOLUTIONS = {"480p": (854, 480), "1080p": (1920, 1080), "4k": (3840, 2160)}
FORMATS = ("png16", "exr", "exr-multilayer")
FACE_SIZE = 256
SAMPLE_LANDMARKS = Path(__file__).with_name("sample_landmarks.json")  # dlib's, on samples.grace_hopper()


def make_shot(folder: Path, name: str, size: tuple[int, int], frames: int, landmarks: np.ndarray,
              small_face: bool = False) -> tuple[Path, Path]:
    """An mp4 of the sample face and its alignments, taken from the clip's known photo->frame transforms."""
    clip, matrices = samples.make_clip("grace_hopper", frames, size, scale=0.6 if small_face else size[1] / 360 * 0.6)
    shot = samples.write_video(folder / f"{name}.mp4", clip)
    alignments = Alignments(source=str(shot), source_kind="video", source_size=list(size),
                            source_frames=list(range(1, frames + 1)), fps=24.0, linear=False, face_size=FACE_SIZE,
                            coverage=align.DEFAULT_COVERAGE, detector="known transform", complete=True)
    for number, m in enumerate(matrices, 1):
        points = align.transform_points(landmarks, m)
        matrix = align.alignment_matrix(points, FACE_SIZE)
        face = Face(bbox=[*points.min(0), *points.max(0)], score=1.0, landmarks=points.tolist(),
                    landmarks_raw=points.tolist(), matrix=matrix.tolist(), embedding=[0.0] * 128,
                    image="", mask_hull="", mask_extended="")
        alignments.frames.append(Frame(number=number, faces=[face]))
    alignments.save(folder / f"{name}.json")
    return shot, folder / f"{name}.json"


def make_model(folder: Path, preset: str) -> Path:
    config = model_module.make_config(preset, face_size=FACE_SIZE, coverage=align.DEFAULT_COVERAGE)
    model = model_module.FaceModel(config)
    state = {"format": model_module.FORMAT, "version": model_module.VERSION, "config": asdict(config),
             "model": model.state_dict(), "iteration": 0}
    model_module.write_checkpoint(folder, state)
    return folder


def output_cost(out: Path) -> tuple[float, float]:
    """Megabytes per frame of the face layers and mattes in `out`, and milliseconds per frame to read
    every channel of them back."""
    import OpenEXR

    files = sorted((out / "face").iterdir()) + (sorted((out / "matte").iterdir()) if (out / "matte").is_dir() else [])
    frames = len(list((out / "face").iterdir()))
    started = time.perf_counter()
    for path in files:
        if path.suffix == ".exr":
            with OpenEXR.File(str(path)) as f:
                for channel in f.channels().values():
                    channel.pixels.sum()
        else:
            media.read_image(path)
    read_ms = 1000 * (time.perf_counter() - started) / frames
    return sum(p.stat().st_size for p in files) / frames / 1e6, read_ms

def old_write(path: Path, image: np.ndarray, metadata: dict) -> None:
    """Convert's writes before OpenImageIO: OpenCV's PNG with our iTXt chunks, the OpenEXR module's EXR."""
    if path.suffix == ".png":
        media.write_bytes(path, media.encode_png(image, metadata))
        return
    import OpenEXR

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage, **metadata}
    with media.atomic_path(path) as tmp, OpenEXR.File(header, {"RGBA": image}) as f:
        f.write(str(tmp))


def old_read(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        import cv2

        return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    import OpenEXR

    with OpenEXR.File(str(path)) as f:
        return np.array(f.channels()["RGBA"].pixels)


def io_speeds(resolutions: list[str], repeats: int = 5) -> list[dict]:
    """ms per frame to write and read a face layer, old path and OpenImageIO's, per format and size."""
    rows = []
    print(f"{'size':6s} {'format':6s} {'write old':>10s} {'write new':>10s} {'read old':>10s} {'read new':>10s}  ms/frame")
    marking = {"facereplace": '{"tool": "FaceReplace"}'}
    with tempfile.TemporaryDirectory() as tmp:
        for name in resolutions:
            width, height = RESOLUTIONS[name]
            clip, _ = samples.make_clip("grace_hopper", 1, (width, height), scale=height / 360 * 0.6)
            rgba = np.dstack([clip[0], np.full((height, width), 255, np.uint8)])
            for fmt, image in (("png16", rgba.astype(np.uint16) * 257),
                               ("exr", colorspace.srgb_to_linear(rgba / 255.0))):
                path = Path(tmp) / f"layer{'.png' if fmt == 'png16' else '.exr'}"
                times = {}
                for label, write, read in (("old", old_write, old_read),
                                           ("new", media.write_image, media.read_image)):
                    started = time.perf_counter()
                    for _ in range(repeats):
                        write(path, image, marking)
                    times[f"write_{label}"] = 1000 * (time.perf_counter() - started) / repeats
                    started = time.perf_counter()
                    for _ in range(repeats):
                        assert np.array_equal(read(path), image)
                    times[f"read_{label}"] = 1000 * (time.perf_counter() - started) / repeats
                print(f"{name:6s} {fmt:6s} " + " ".join(f"{times[k]:10.1f}" for k in
                                                        ("write_old", "write_new", "read_old", "read_new")))
                rows.append({"resolution": name, "format": fmt, **{k: round(v, 2) for k, v in times.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--preset", default=None, help="model preset (default: fast on CPU, quality on CUDA)")
    parser.add_argument("--resolutions", nargs="+", default=["480p", "1080p"], choices=list(RESOLUTIONS))
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"])
    parser.add_argument("--write-frames", action="store_true", help="also write finished frames")
    parser.add_argument("--small-face", action="store_true", help="a face as small as in a 360p shot at every size")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every figure to this JSON file")
    parser.add_argument("--io", action="store_true", help="time still-image reads and writes only, old path and new")
    args = parser.parse_args()
    if args.io:
        rows = io_speeds(args.resolutions)
        if args.json:
            media.write_json(args.json, {"io": rows})
        return
    import torch

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"convert benchmark: {args.frames} frames per run, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    report = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "frames": args.frames,
              "gpu": torch.cuda.get_device_name() if "cuda" in devices else None, "rows": []}
    landmarks = np.asarray(media.read_json(SAMPLE_LANDMARKS), np.float64)
    stages = " ".join(f"{s:>10s}" for s in StageClock.STAGES)
    print(f"{'device':6s} {'preset':7s} {'size':6s} {'format':14s} {'frames/s':>9s}   ms per frame: {stages}"
          f"   MB/frame  read ms")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shots = {name: make_shot(tmp, name, RESOLUTIONS[name], args.frames, landmarks, args.small_face)
                 for name in args.resolutions}
        for device in devices:
            preset = args.preset or model_module.default_preset(device)
            model_dir = tmp / f"model-{preset}"
            if not model_dir.exists():
                make_model(model_dir, preset)
            for name, (shot, alignments) in shots.items():
                for fmt in args.formats:
                    out = tmp / f"out-{device}-{name}-{fmt}"
                    started = time.perf_counter()
                    summary = convert(shot, alignments, model_dir, out, format=fmt, write_frames=args.write_frames,
                                      device=device)
                    seconds = time.perf_counter() - started
                    split = " ".join(f"{1000 * s / args.frames:10.1f}" for s in summary["stage_seconds"].values())
                    megabytes, read_ms = output_cost(out)
                    print(f"{device:6s} {preset:7s} {name:6s} {fmt:14s} {summary['fps']:9.2f}   "
                          f"{'':14s}{split}   {megabytes:8.2f} {read_ms:8.1f}   ({seconds:.1f} s incl. model load)")
                    report["rows"].append({
                        "device": device, "preset": preset, "resolution": name, "format": fmt,
                        "small_face": args.small_face, "fps": summary["fps"], "seconds": round(seconds, 2),
                        "mb_per_frame": round(megabytes, 3), "read_ms_per_frame": round(read_ms, 1),
                        "ms_per_frame": {k: round(1000 * v / args.frames, 2)
                                         for k, v in summary["stage_seconds"].items()}})
    if args.json:
        media.write_json(args.json, report)


if __name__ == "__main__":
    main()
