"""Training beside other work on the same CPU: how much of the CPU a train gets, and how much training it
makes of it, alone, beside one and two busy programs in another session, and two trains at once; with
the thread count fixed at every core (as before) and re-picked while it runs (engine.base.device.ThreadAdapter,
what the add-on's runs do).

    .venv/bin/python bench/cpu_share.py                  # fast preset, 64 px, 30 s per run
    .venv/bin/python bench/cpu_share.py --seconds 20 --preset tiny

Each run is `python -m engine train --time-budget S --events`. Per run it prints the iterations its
"done" event reports, the cores' worth of CPU time it got (its CPU seconds over its wall seconds), and
its efficiency: iterations per CPU second against a 1-thread run alone, the most a CPU second gives.
"Of its share" is that efficiency: 100% means every CPU second it got trained as well as it can. The busy
programs start in their own session, so Linux's autogroup (on, as on a desktop) gives them their own
share, as it gives Blender or a render started from another terminal.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import samples  # noqa: E402
from engine.networks.model import PRESETS  # noqa: E402
from engine.stages.extract import extract  # noqa: E402

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


def finished(process: subprocess.Popen, started: float) -> tuple[int, float]:
    """(iterations the run did, cores' worth of CPU time it got)."""
    done = [json.loads(line) for line in process.stdout if line.startswith('{"event": "done"')]
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    return done[-1]["iterations"], (usage.ru_utime + usage.ru_stime) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--preset", default="fast", choices=list(PRESETS))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a, b = facesets(tmp)
        models = iter(tmp / f"model_{i}" for i in range(100))
        fixed = {"FACEREPLACE_THREADS": str(cores)}
        adaptive = {"FACEREPLACE_RUNTIME_DIR": str(tmp / "runs")}

        def runs(env: dict, trains: int = 1, busy: int = 0) -> list[tuple[int, float]]:
            spinners = [subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True) for _ in range(busy)]
            try:
                started = time.monotonic()
                processes = [train(a, b, next(models), args.seconds, args.preset, env) for _ in range(trains)]
                return [finished(p, started) for p in processes]
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()

        [(reference_iterations, reference_cores)] = runs({"FACEREPLACE_THREADS": "1"})
        best = reference_iterations / reference_cores  # iterations per core-second of wall time

        def row(name: str, results: list[tuple[int, float]]) -> None:
            cells = [f"{it} it, {got:.2f} cores, {it / got / best:.0%}" for it, got in results]
            print(f"| {name} | {' / '.join(cells)} |", flush=True)

        print(f"{cores} cores, autogroup {Path('/proc/sys/kernel/sched_autogroup_enabled').read_text().strip()}, "
              f"{args.preset} preset, 64 px, {args.seconds:g} s per run")
        print("| run | iterations, CPU it got, of its share |\n| --- | --- |")
        row("alone, 1 thread (the reference)", [(reference_iterations, reference_cores)])
        row("alone, every core", runs(fixed))
        row("alone, adaptive", runs(adaptive))
        for busy in (1, 2):
            row(f"beside {busy} busy program(s), every core", runs(fixed, busy=busy))
            row(f"beside {busy} busy program(s), adaptive", runs(adaptive, busy=busy))
        row("two trains at once, every core each", runs(fixed, trains=2))
        row("two trains at once, adaptive", runs(adaptive, trains=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
