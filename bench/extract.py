"""Extract speed: frames per second for each detector backend at 480p and 1080p, CPU and CUDA.

    .venv/bin/python bench/extract.py [--frames 24]
    .venv/bin/python bench/extract.py --backends fan --resolutions 1080p --batch 8 --json extract.json

Prints one line per (backend, device, resolution); a backend that cannot load says why. "detect" is the
detection pass alone (detector, landmarks and identity embedding per frame), "overall" the whole extract
including model load and writing the faceset; both follow one untimed detector batch (face-alignment's
numba JIT and cuDNN's autotuning happen once per process, and over a few frames they dominated). The fan backend uses its published weights where they are
on disk (--fan-weights DIR, or the engine's weights folder); elsewhere it runs face-alignment's networks
with random weights (bench/random_fan.py), which are as fast: nothing is downloaded.
"""

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.random_fan import write_random_fan_weights  # noqa: E402
from demo import samples  # noqa: E402
from engine.base import media  # noqa: E402
from engine.base.events import EngineError, Events  # noqa: E402
from engine.faces import detect  # noqa: E402
from engine.stages.extract import extract  # noqa: E402

RESOLUTIONS = {"480p": (854, 480), "1080p": (1920, 1080)}


def fan_weights(given: Path | None, folder: Path) -> tuple[Path, str]:
    """(weights folder, "published" or "random"). Random weights are written into `folder`, and this
    process's FAN_WEIGHTS table is swapped for one that trusts them."""
    if given is not None:
        return given, "published"
    if all((detect.weights_folder() / w.name).is_file() for w in detect.FAN_WEIGHTS.values()):
        return detect.weights_folder(), "published"
    detect.FAN_WEIGHTS = write_random_fan_weights(folder)
    return folder, "random"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS))
    parser.add_argument("--backends", nargs="+", default=["dlib", "fan"], choices=["dlib", "fan"])
    parser.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, help="frames per detector call (extract's default where unset)")
    parser.add_argument("--fan-weights", type=Path, help="folder with the published fan weights")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every figure to this JSON file")
    args = parser.parse_args()
    import torch

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name() if "cuda" in devices else None
    print(f"extract benchmark: {args.frames} frames per run, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {gpu}" if gpu else ""))
    report = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "gpu": gpu,
              "frames": args.frames, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shots = {}
        for name in args.resolutions:
            size = RESOLUTIONS[name]
            scale = size[1] / 360  # the face keeps its share of the frame
            frames, _ = samples.make_clip("grace_hopper", args.frames, size, scale=scale * 0.6)
            shots[name] = samples.write_video(tmp / f"{name}.mp4", frames)
        weights, kind = fan_weights(args.fan_weights, tmp / "fan") if "fan" in args.backends else (None, None)
        report["fan_weights"] = kind
        for backend in args.backends:
            for device in devices if backend == "fan" else ["cpu"]:
                for name, shot in shots.items():
                    out = tmp / f"{backend}-{device}-{name}"
                    log = io.StringIO()
                    # One detector batch first, untimed: face-alignment's numba JIT and cuDNN's autotuning
                    # happen once per process, and over a few frames they would be most of the time.
                    warm = (args.batch or detect.BACKENDS[backend].cuda_batch) if device == "cuda" else 1
                    try:
                        extract(shot, tmp / f"warm-{backend}-{device}-{name}", detector=backend, size=256,
                                device=device, fan_weights=weights, offline=True, batch=args.batch,
                                frames=f"1-{min(warm, args.frames)}", events=Events("extract", True, io.StringIO()))
                    except EngineError:
                        pass  # the timed run says why
                    start = time.perf_counter()
                    try:
                        summary = extract(shot, out, detector=backend, size=256, device=device, fan_weights=weights,
                                          offline=True, batch=args.batch, events=Events("extract", True, log))
                    except EngineError as e:
                        print(f"{backend:5s} {device:4s} {name:6s}  unavailable: {e}")
                        report["rows"].append({"backend": backend, "device": device, "resolution": name,
                                               "error": str(e)})
                        break
                    seconds = time.perf_counter() - start
                    events = [json.loads(line) for line in log.getvalue().splitlines()]
                    detect_fps = [e["fps"] for e in events if e["event"] == "progress" and "phase" not in e][-1]
                    label = f"{backend} ({kind} weights)" if backend == "fan" else backend
                    print(f"{label:22s} {device:4s} {name:6s}  detect {detect_fps:6.2f} frames/s, overall "
                          f"{args.frames / seconds:6.2f} frames/s  ({summary['faces']}/{args.frames} faces, "
                          f"{seconds:.1f} s incl. model load)")
                    report["rows"].append({"backend": backend, "device": device, "resolution": name,
                                           "weights": kind if backend == "fan" else None,
                                           "detect_fps": detect_fps, "overall_fps": round(args.frames / seconds, 2),
                                           "faces": summary["faces"], "seconds": round(seconds, 2)})
    if args.json:
        media.write_json(args.json, report)


if __name__ == "__main__":
    main()
