"""Extract speed: frames per second for each detector backend at 480p and 1080p, CPU and CUDA.

    .venv/bin/python bench/extract.py [--frames 24]

Prints one line per (backend, device, resolution); a backend that cannot load says why.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo import samples  # noqa: E402
from engine.events import EngineError  # noqa: E402
from engine.extract import extract  # noqa: E402

RESOLUTIONS = {"480p": (854, 480), "1080p": (1920, 1080)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"extract benchmark: {args.frames} frames per run, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shots = {}
        for name, size in RESOLUTIONS.items():
            scale = size[1] / 360  # the face keeps its share of the frame
            frames, _ = samples.make_clip("grace_hopper", args.frames, size, scale=scale * 0.6)
            shots[name] = samples.write_video(tmp / f"{name}.mp4", frames)
        for backend in ("dlib", "fan"):
            for device in devices if backend == "fan" else ["cpu"]:
                for name, shot in shots.items():
                    out = tmp / f"{backend}-{device}-{name}"
                    start = time.perf_counter()
                    try:
                        summary = extract(shot, out, detector=backend, size=256, device=device)
                    except EngineError as e:
                        print(f"{backend:5s} {device:4s} {name:6s}  unavailable: {e}")
                        break
                    seconds = time.perf_counter() - start
                    print(f"{backend:5s} {device:4s} {name:6s}  {args.frames / seconds:6.2f} frames/s  "
                          f"({summary['faces']}/{args.frames} faces, {seconds:.1f} s incl. model load)")


if __name__ == "__main__":
    main()
