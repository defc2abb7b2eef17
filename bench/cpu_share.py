"""Training beside other work on the same CPU: iterations done in a fixed time by a train run alone, beside
a busy process, with a passive OpenMP wait, and two train runs at once (each taking every core, as before
the engine shared them, against the engine's share from its runs' lock files).

    .venv/bin/python bench/cpu_share.py                  # fast preset, 64 px, 30 s per run
    .venv/bin/python bench/cpu_share.py --seconds 10 --preset tiny

Each run is `python -m engine train --time-budget S --events`; the figure is the iteration its "done"
event reports. The machine's other load changes every figure: run it on an otherwise idle machine.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import samples  # noqa: E402
from engine.extract import extract  # noqa: E402
from engine.model import PRESETS  # noqa: E402

BUSY = "while True: pass"  # a process that wants a whole core, as Blender playing back does


def facesets(folder: Path) -> tuple[Path, Path]:
    out = []
    for name in ("astronaut", "grace_hopper"):
        frames, _ = samples.make_clip(name, 16, (320, 240))
        shot = samples.write_sequence(folder / f"{name}_frames", frames)
        extract(shot, folder / f"{name}_faceset", detector="dlib", size=128)
        out.append(folder / f"{name}_faceset")
    return out[0], out[1]


def train(a: Path, b: Path, model: Path, seconds: float, preset: str, env: dict) -> subprocess.Popen:
    argv = [sys.executable, "-m", "engine", "train", "--a", str(a), "--b", str(b), "--model", str(model),
            "--preset", preset, "--size", "64", "--time-budget", str(seconds), "--device", "cpu", "--events"]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **env})


def iterations(process: subprocess.Popen) -> int:
    done = [json.loads(line) for line in process.stdout if line.startswith('{"event": "done"')]
    process.wait()
    return done[-1]["iterations"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--preset", default="fast", choices=list(PRESETS))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, b = facesets(tmp)
        runtime = {"FACEREPLACE_RUNTIME_DIR": str(tmp / "runs")}
        models = iter(tmp / f"model_{i}" for i in range(100))

        def alone(env: dict, busy: bool = False) -> int:
            spinner = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
            try:
                return iterations(train(a, b, next(models), args.seconds, args.preset, {**runtime, **env}))
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()

        def pair(env: dict) -> list[int]:
            runs = [train(a, b, next(models), args.seconds, args.preset, {**runtime, **env}) for _ in range(2)]
            return [iterations(r) for r in runs]

        print(f"{cores} cores, {args.preset} preset, 64 px, {args.seconds:g} s per run: iterations done")
        print(f"alone:                                  {alone({})}")
        print(f"beside a busy process:                  {alone({}, busy=True)}")
        print(f"beside a busy process, passive wait:    {alone({'OMP_WAIT_POLICY': 'PASSIVE'}, busy=True)}")
        print(f"beside a busy process, 1 thread:        {alone({'FACEREPLACE_THREADS': '1'}, busy=True)}")
        print(f"two at once, every core each:           {pair({'FACEREPLACE_THREADS': str(cores)})}")
        print(f"two at once, shared (lock files):       {pair({})}")
        print(f"two at once, shared, passive wait:      {pair({'OMP_WAIT_POLICY': 'PASSIVE'})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
