"""Swap quality per minute of training: train each configuration for fixed time budgets, convert the held-out
shot, evaluate it, and print one table (also written as JSON).

    .venv/bin/python bench/quality.py                                  # fast preset, 2, 5 and 10 minutes
    .venv/bin/python bench/quality.py --budgets 2 10 --work work/quality
    .venv/bin/python bench/quality.py --iterations 120 600             # fixed work, on a busy machine
    .venv/bin/python bench/quality.py --budgets 2 5 8 --cumulative     # one run, measured as it passes each
    .venv/bin/python bench/quality.py --config base="--preset fast" \\
        --config late="--preset fast --no-warp-after 0.8" --config detail="--preset fast | --detail 0.5"

    .venv/bin/python bench/quality.py --iterations 600 --config plain="--preset fast --size 64" \\
        --config enhanced="--preset fast --size 64 | | --size 128 --iterations 300"

    .venv/bin/python bench/quality.py --iterations 300 600 --base "--preset fast --size 64" \\
        --config scratch="--preset fast --size 64" --config init="--preset fast --size 64 --init-from BASE"

    .venv/bin/python bench/quality.py --combine run1.json run2.json --json both.json   # one table and grid

A configuration is NAME="TRAIN ARGS | CONVERT ARGS | ENHANCE ARGS": engine train's options, after a `|`
engine convert's and after a second `|` engine enhance's, exactly as on the command line. With the third
part the model's enhancer is trained (after the face model, on A's faceset) and convert uses it; without
it convert runs with `--enhancer off`; "train min" then counts both. `BASE` in them is the base model that `--base` trains
(`engine train --pretrain`, for `--base-iterations`) on the clips' people other than A and B. Configurations with the same train options share their
models, so a convert option is measured on the same weights. Each budget trains its own model from
scratch (a schedule that depends on the budget stays honest), with `--time-budget` in seconds, or with
`--iterations` where budgets are given as iteration counts.

Data: with the shared talking-head clips (`../shared/clips` from the repository root, or `--clips`), A is
d19.mp4 and B is d18.mp4, a pair the engine has not been tuned on (from a git worktree, the folder beside
the main checkout); `--pair d18.mp4 d19.mp4` swaps them, or names any two of the clips. The gallery is
the main person of the other clips among s18, s32 and s20 (every 10th frame). Without them, A and B are clips made from the packaged photos, B's
mouth opening and closing, and there is no gallery. Facesets (dlib, 256 px) are extracted once into
`--work` and reused, as are trained models and converted layers: a rerun only re-evaluates, so a new
measure reaches old models at the cost of an evaluation.

Training runs at the caller's priority. Wall-clock budgets on a shared machine buy fewer iterations when
it is busy: the table gives the iterations each model reached and the minutes it took, and the load
average is recorded. On a busy machine give `--iterations` instead: the fast preset at 64 px runs about
1 iteration a second on an idle 2-core CPU, so 120 and 600 iterations are its 2 and 10 minutes.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import samples  # noqa: E402
from engine.base import media  # noqa: E402
from engine.networks.model import PREVIEW_FILE  # noqa: E402


def default_clips() -> Path:
    """../shared/clips beside the repository, or beside its main checkout when this is a git worktree."""
    roots = [ROOT]
    common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                            capture_output=True, text=True)
    if common.returncode == 0:
        roots.append(Path(common.stdout.strip()).parent)
    return next((r.parent / "shared" / "clips" for r in roots if (r.parent / "shared" / "clips").is_dir()),
                ROOT.parent / "shared" / "clips")

SHARED_PAIR = ("d19.mp4", "d18.mp4")  # A, B: d19's faces never open the mouth as wide as d18 does
SHARED_GALLERY = {"s18": "s18.mp4", "s32": "s32.mp4", "s20": "s20.mp4"}
GALLERY_EVERY = 10
PRETRAIN_EVERY = 2  # the base model's faces: every 2nd frame of the clips that are not A or B
BASE = "BASE"  # in a configuration's train options, the base model that --base trains
SAMPLE_FRAMES, SAMPLE_SIZE = 48, (480, 360)
DEFAULT_CONFIGS = ["fast=--preset fast --size 64"]

# The table's columns: (heading, summary key, format); where a viewer looks first, the plain detail ratio beside.
COLUMNS = [
    ("eyes+mouth detail", "feature_detail_ratio", "{:.2f}"),
    ("same-person", "same_person", "{:.2f}"),
    ("gallery", "gallery_retrieval", "{:.2f}"),
    ("mouth corr", "mouth_correlation", "{:.2f}"),
    ("mouth gain", "mouth_gain", "{:.2f}"),
    ("flicker", "flicker_ratio", "{:.2f}"),
    ("detail", "detail_ratio", "{:.2f}"),
    ("mouth diff", "mouth_difference", "{:.3f}"),
    ("eye corr", "eye_correlation", "{:.2f}"),
    ("seam excess", "seam_excess", "{:.2f}"),
    ("dist A", "distance_a", "{:.3f}"),
    ("ID retrieval", "id_retrieval", "{:.2f}"),
]
# The verdict's targets (issue "a face a viewer believes"): each is (summary key, test, as the table says it).
# Identity goes with eyes-and-mouth detail, so a blur that dlib still calls A fails.
TARGETS = [
    ("feature_detail_ratio", lambda v: v >= 0.6, "eyes+mouth detail < 0.6"),
    ("same_person", lambda v: v >= 0.95, "same-person < 0.95"),
    ("gallery_retrieval", lambda v: v >= 0.95, "gallery < 0.95"),
    ("mouth_correlation", lambda v: v >= 0.9, "mouth corr < 0.9"),
    ("flicker_ratio", lambda v: v <= 1.2, "flicker > 1.2"),
]
GRID_FRAMES = 4  # B's frames in the face grid, spread over the evaluated ones
GRID_MARGIN = 0.35  # the grid's crop: the landmarks' box grown by this share of its size on every side
GRID_LABEL_WIDTH = 120


def verdict(summary: dict) -> str:
    """"believable" when every target holds; else the targets missed (a missing figure is not a pass)."""
    missed = [said for key, holds, said in TARGETS if summary.get(key) is None or not holds(summary[key])]
    return "believable" if not missed else "no: " + ", ".join(missed)


def engine(*args: str) -> dict:
    """Run `python -m engine ARGS --events` at this process's priority; returns the `done` event."""
    command = [sys.executable, "-m", "engine", *args, "--events"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    done = [e for e in events if e.get("event") == "done"]
    if result.returncode != 0 or not done:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr.strip()[-2000:]}")
    return done[-1]


def extract(shot: Path, folder: Path, *options: str) -> Path:
    if not (folder / "alignments.json").is_file() or not _complete(folder):
        print(f"extracting {shot.name} -> {folder}", flush=True)
        engine("extract", str(shot), "--output", str(folder), "--detector", "dlib", *options)
    return folder


def _complete(folder: Path) -> bool:
    return bool(media.read_json(folder / "alignments.json").get("complete"))


def prepare_data(work: Path, clips: Path, pair: tuple[str, str]) -> dict:
    """{"shot": B's shot, "a", "b": facesets, "gallery": [facesets], "pair": a name for the pair (it keys the
    models and layers), "source": a description}."""
    facesets = work / "facesets"
    if all((clips / name).is_file() for name in pair):
        gallery = [extract(clips / file, facesets / name, "--every", str(GALLERY_EVERY))
                   for name, file in SHARED_GALLERY.items() if (clips / file).is_file() and file not in pair]
        a, b = (extract(clips / name, facesets / Path(name).stem) for name in pair)
        return {"shot": clips / pair[1], "a": a, "b": b, "gallery": gallery, "pair": f"{a.name}-{b.name}",
                "source": f"{clips}: A {pair[0]}, B {pair[1]}, gallery "
                          + ", ".join(SHARED_GALLERY[g.name] for g in gallery)}
    shots = work / "sample_shots"
    shot_a, shot_b = shots / "astronaut", shots / "hopper_talking.mp4"
    if not shot_a.is_dir():
        samples.write_sequence(shot_a, samples.make_clip("astronaut", SAMPLE_FRAMES, SAMPLE_SIZE)[0])
    if not shot_b.is_file():
        samples.write_video(shot_b, samples.make_clip("grace_hopper", SAMPLE_FRAMES, SAMPLE_SIZE, scale=0.8, mouth=0.3)[0])
    return {"shot": shot_b, "a": extract(shot_a, facesets / "a"), "b": extract(shot_b, facesets / "b"),
            "gallery": [], "pair": "photos", "source": "packaged photos: A astronaut, B Grace Hopper (mouth moving), no gallery"}


def pretrain(data: dict, work: Path, clips: Path, pair: tuple[str, str], base_args: list[str], iterations: int) -> Path:
    """The base model (`engine train --pretrain`) on every other person the clips hold, trained now or as an
    earlier run left it; an interrupted one resumes."""
    if not data["gallery"]:
        sys.exit("error: --base needs the shared clips: the packaged photos hold no people besides A and B")
    faces = [extract(clips / file, work / "facesets" / f"pretrain_{name}", "--every", str(PRETRAIN_EVERY))
             for name, file in SHARED_GALLERY.items() if (clips / file).is_file() and file not in pair]
    people = "-".join(f.name.removeprefix("pretrain_") for f in faces)
    folder = work / "models" / f"base_{people}_{_slug(base_args)}_{iterations}it"
    if not (folder / "bench_train.json").is_file():
        print(f"pretraining {' '.join(base_args)} for {iterations}it on {len(faces)} people -> {folder}", flush=True)
        resume = ["--resume"] if (folder / "model.json").is_file() else []
        done = engine("train", "--pretrain", "--faces", *map(str, faces), "--model", str(folder),
                      "--iterations", str(iterations), *resume, *base_args)
        if done["stopped"] != "iterations":
            sys.exit(f"error: pretraining stopped early ({done['stopped']}) at iteration {done['iterations']}")
        media.write_json(folder / "bench_train.json", {"iterations": done["iterations"], "args": base_args})
    return folder


def parse_config(text: str) -> tuple[str, list[str], list[str], list[str] | None]:
    """(name, train args, convert args, enhance args or None: no enhancer)."""
    name, sep, options = text.partition("=")
    if not sep or not name.isidentifier():
        sys.exit(f'error: --config {text!r}: expected NAME="TRAIN ARGS | CONVERT ARGS | ENHANCE ARGS"')
    train_args, _, rest = options.partition("|")
    convert_args, enhancing, enhance_args = rest.partition("|")
    return name, shlex.split(train_args), shlex.split(convert_args), shlex.split(enhance_args) if enhancing else None


def enhance(data: dict, model: dict, enhance_args: list[str]) -> dict:
    """The model's enhancer for these options, trained now on A's faceset (or as an earlier run left it);
    returns the model's record with the enhancer's iterations and seconds added."""
    folder = Path(model["model"])
    record = folder / "bench_enhance.json"
    if record.is_file() and media.read_json(record)["args"] == enhance_args:
        done = media.read_json(record)
    else:
        print(f"training the enhancer {' '.join(enhance_args)} -> {folder / 'enhancer'}", flush=True)
        if (folder / "enhancer").exists():  # another configuration's, or interrupted: start it again
            import shutil

            shutil.rmtree(folder / "enhancer")
        started = time.monotonic()
        result = engine("enhance", "--model", str(folder), "--faceset-a", str(data["a"]), *enhance_args)
        done = {"iterations": result["iterations"], "seconds": time.monotonic() - started, "args": enhance_args}
        media.write_json(record, done)
    return {**model, "enhancer_iterations": done["iterations"], "seconds": model["seconds"] + done["seconds"]}


def _slug(args: list[str]) -> str:
    import hashlib

    return hashlib.sha1(" ".join(args).encode()).hexdigest()[:10]


def budget_name(budget: tuple[str, float]) -> str:
    kind, amount = budget
    return f"{amount:g}min" if kind == "minutes" else f"{amount:g}it"


def train(data: dict, work: Path, train_args: list[str], budget: tuple[str, float],
          previous: float | None = None) -> dict:
    """The model for these options and budget ("minutes" or "iterations", amount): trained now, or as an
    earlier run left it. With `previous` (--cumulative: the budget before this one, 0 for the first), one model
    of these options is resumed from there, so the budgets are points along one training run."""
    if previous is not None:
        folder = work / "models" / f"{data['pair']}_{_slug(train_args)}_cumulative"
        record = folder / f"bench_train_{budget_name(budget)}.json"
        if record.is_file():
            return media.read_json(record)
        # --iterations counts from the model's start, --time-budget from the run's
        stop = budget if budget[0] == "iterations" else (budget[0], budget[1] - previous)
        return _run_train(data, folder, record, train_args, stop, (folder / "model.json").is_file())
    folder = work / "models" / f"{data['pair']}_{_slug(train_args)}_{budget_name(budget)}"
    record = folder / "bench_train.json"
    if record.is_file():
        return media.read_json(record)
    resume = False
    if folder.exists():  # interrupted: iterations resume exactly; a wall-clock budget must start again
        if budget[0] == "iterations" and (folder / "model.json").is_file():
            resume = True
        else:
            import shutil

            shutil.rmtree(folder)
    return _run_train(data, folder, record, train_args, budget, resume)


def _run_train(data: dict, folder: Path, record: Path, train_args: list[str], budget: tuple[str, float],
               resume: bool) -> dict:
    print(f"training {' '.join(train_args)} for {budget_name(budget)} -> {folder}", flush=True)
    load_before = os.getloadavg()[0]
    stop = ["--time-budget", str(budget[1] * 60)] if budget[0] == "minutes" else ["--iterations", str(int(budget[1]))]
    args = train_args
    if resume:  # the model has its weights: --init-from only starts one, and a resume refuses it
        at = train_args.index("--init-from") if "--init-from" in train_args else None
        args = ["--resume", *(train_args if at is None else train_args[:at] + train_args[at + 2:])]
    done = engine("train", "--a", str(data["a"]), "--b", str(data["b"]), "--model", str(folder), *stop, *args)
    from engine.networks.model import read_history

    history = read_history(folder / "history.csv")
    summary = {"model": str(folder), "iterations": done["iterations"], "stopped": done["stopped"],
               "seconds": history[-1]["elapsed_s"] if history else done["seconds"],
               "loss_a": done["loss_a"], "loss_b": done["loss_b"],
               "load": [round(load_before, 2), round(os.getloadavg()[0], 2)], "args": train_args}
    if done["stopped"] in ("iterations", "time budget"):  # a model stopped short is measured, not kept as done
        media.write_json(record, summary)
    else:
        print(f"warning: training stopped early ({done['stopped']}) at iteration {done['iterations']}", flush=True)
    return summary


def convert(data: dict, work: Path, name: str, model: dict, convert_args: list[str], budget: tuple[str, float]) -> Path:
    folder = work / "layers" / f"{data['pair']}_{name}_{budget_name(budget)}"
    print(f"converting {data['shot'].name} with {name} at {budget_name(budget)} -> {folder}", flush=True)
    engine("convert", str(data["shot"]), "--alignments", str(data["b"]), "--model", model["model"],
           "--output", str(folder), *convert_args)
    return folder


def swapped(layers: Path, number: int, frame, plate):
    """B's frame `number` (`frame`, in the plate's colour space `plate`) with the face layer that convert
    wrote into `layers` over it, as sRGB uint8: evaluate's composite, which is convert's."""
    from engine.stages.evaluate import composite, layer_space

    manifest = media.read_json(layers / "manifest.json")
    layer = media.read_image(layers / (manifest["files"]["face"] % number))
    return composite(frame, layer, plate, layer_space(manifest))[0]


def still(data: dict, layers: Path, report: dict, path: Path) -> Path:
    """Plate beside composite, at the shot's middle evaluated frame, for looking at."""
    import numpy as np

    from engine.base import colorspace

    numbers = [r["frame"] for r in report["frames"]]
    number = numbers[len(numbers) // 2]
    source = media.FrameSource(data["shot"])
    _, frame = next(iter(source.frames([number])))
    picture = swapped(layers, number, frame, colorspace.plate_space(None, None, source.linear))
    media.write_image(path, np.concatenate([media.to_srgb8(frame), picture], axis=1))
    return path


def face_grid(data: dict, rows: list[dict], path: Path) -> Path:
    """B's face at 1:1 in GRID_FRAMES frames: the plate's row, then each row's (configuration's) composite,
    each labelled, so a table's figures sit beside what they measure."""
    import cv2
    import numpy as np

    from engine.base import colorspace
    from engine.folders.faceset import Alignments

    alignments = Alignments.load(data["b"])
    evaluated = rows[0]["frames"]
    numbers = [evaluated[round(i * (len(evaluated) - 1) / max(GRID_FRAMES - 1, 1))] for i in range(GRID_FRAMES)]
    boxes = []
    for number in numbers:
        points = np.asarray(alignments.frame(number).faces[0].landmarks)
        low, high = points.min(0), points.max(0)
        grow = (high - low).max() * (0.5 + GRID_MARGIN)
        centre = (low + high) / 2
        boxes.append(np.round(np.concatenate([centre - grow, centre + grow])).astype(int))
    side = max(int(b[2] - b[0]) for b in boxes)
    source = media.FrameSource(data["shot"])
    plates = dict(source.frames(numbers))

    def crop(picture: np.ndarray, box) -> np.ndarray:
        """The side x side square at the box's corner; black where it reaches beyond the frame."""
        padded = np.zeros((side, side, 3), np.uint8)
        x0, y0 = max(box[0], 0), max(box[1], 0)
        part = picture[y0:box[1] + side, x0:box[0] + side]
        padded[y0 - box[1]:y0 - box[1] + part.shape[0], x0 - box[0]:x0 - box[0] + part.shape[1]] = part
        return padded

    def labelled(label: str, cells: list) -> np.ndarray:
        strip = np.full((side, GRID_LABEL_WIDTH, 3), 255, np.uint8)
        for line, text in enumerate(label.split("\n")):
            cv2.putText(strip, text, (4, 18 + 18 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        return np.concatenate([strip, *cells], axis=1)

    plate = colorspace.plate_space(None, None, source.linear)
    lines = [labelled("B (plate)", [crop(media.to_srgb8(plates[n]), b) for n, b in zip(numbers, boxes, strict=True)])]
    for row in rows:
        cells = [crop(swapped(Path(row["layers"]), number, plates[number], plate), box)
                 for number, box in zip(numbers, boxes, strict=True)]
        lines.append(labelled(f"{row['config']}\n{row['budget']}\n{row['train_seconds'] / 60:.0f} min", cells))
    media.write_image(path, np.concatenate(lines, axis=0))
    return path


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(rows: list[dict]) -> str:
    headings = ["config", "budget", "iterations", "train min", "verdict"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(headings) + " |", "|" + " --- |" * len(headings)]
    for row in rows:
        cells = [row["config"], row["budget"], str(row["iterations"]), f"{row['train_seconds'] / 60:.1f}",
                 verdict(row["summary"])]
        cells += [_cell(row["summary"].get(key), fmt) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar='NAME="TRAIN ARGS | CONVERT ARGS"',
                        help=f"a configuration to measure (repeatable; default {DEFAULT_CONFIGS[0]})")
    parser.add_argument("--budgets", nargs="+", type=float, default=[2, 5, 10], metavar="MINUTES",
                        help="training budgets in minutes of wall clock (default 2 5 10)")
    parser.add_argument("--iterations", nargs="+", type=int, metavar="N",
                        help="training budgets in iterations instead of minutes (for a busy machine)")
    parser.add_argument("--cumulative", action="store_true",
                        help="the budgets are points along one training run per configuration (each resumes the "
                             "model of the budget before it), not separate runs from scratch")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "quality", metavar="DIR",
                        help="where facesets, models, layers and the results are kept (default work/quality)")
    parser.add_argument("--clips", type=Path, default=default_clips(), metavar="DIR",
                        help="the shared clips folder (default ../shared/clips); absent, the packaged photos")
    parser.add_argument("--pair", nargs=2, default=SHARED_PAIR, metavar=("A", "B"),
                        help=f"the clips of A and B among the shared clips (default {' '.join(SHARED_PAIR)})")
    parser.add_argument("--frames", metavar="FIRST-LAST", help="evaluate only these frames of B's shot")
    parser.add_argument("--base", metavar='"TRAIN ARGS"',
                        help=f"train a base model (--pretrain) with these options on the clips' other people; a "
                             f"configuration starts from it with --init-from {BASE}")
    parser.add_argument("--base-iterations", type=int, default=1546, metavar="N",
                        help="the base model's iterations (default 1546, 10 idle minutes of the fast preset)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="results file (default WORK/quality.json)")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="FILE",
                        help="train nothing: one table and one face grid per budget from earlier results files of "
                             "--pair (runs made in other --work folders, or at other times), written as --json")
    args = parser.parse_args()

    from engine.stages.evaluate import evaluate

    work = args.work.resolve()
    data = prepare_data(work, args.clips, tuple(args.pair))
    if args.combine:
        rows = [row for results in args.combine for row in media.read_json(results)["rows"]]
        return publish(data, work, rows, list(dict.fromkeys(row["budget"] for row in rows)), args.json)
    configs = [parse_config(c) for c in (args.config or DEFAULT_CONFIGS)]
    if any(BASE in train_args for _, train_args, _, _ in configs):
        if args.base is None:
            sys.exit(f"error: a configuration names {BASE}; give --base \"TRAIN ARGS\" to train it")
        base = str(pretrain(data, work, args.clips, tuple(args.pair), shlex.split(args.base), args.base_iterations))
        configs = [(name, [base if a == BASE else a for a in train_args], convert_args, enhance_args)
                   for name, train_args, convert_args, enhance_args in configs]
    if args.cumulative and any(e is not None for *_, e in configs):
        sys.exit("error: --cumulative resumes each model, which would leave its enhancer behind: measure an "
                 "enhancer with separate budgets")
    print(f"data: {data['source']}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    budgets = [("iterations", n) for n in args.iterations] if args.iterations else [("minutes", m) for m in args.budgets]
    rows = []
    for name, train_args, convert_args, enhance_args in configs:
        for index, budget in enumerate(budgets):
            previous = (budgets[index - 1][1] if index else 0) if args.cumulative else None
            model = train(data, work, train_args, budget, previous)
            if enhance_args is not None:
                model = enhance(data, model, enhance_args)
            layers = convert(data, work, name, model,
                             convert_args if enhance_args is not None else [*convert_args, "--enhancer", "off"], budget)
            started = time.monotonic()
            report = evaluate(data["shot"], data["b"], layers, data["a"], frames=args.frames, gallery=data["gallery"])
            picture = still(data, layers, report, work / "stills" / f"{data['pair']}_{name}_{budget_name(budget)}.png")
            grid = Path(model["model"]) / PREVIEW_FILE
            if grid.is_file():  # the training's face grid at this budget, beside the still
                media.write_bytes(picture.with_name(f"{picture.stem}_grid.png"), grid.read_bytes())
            rows.append({"config": name, "train_args": train_args, "convert_args": convert_args,
                         "enhance_args": enhance_args, "enhancer_iterations": model.get("enhancer_iterations"),
                         "budget": budget_name(budget),
                         "iterations": model["iterations"], "train_seconds": model["seconds"], "load": model["load"],
                         "evaluate_seconds": round(time.monotonic() - started, 1), "summary": report["summary"],
                         "layers": str(layers), "still": str(picture),
                         "frames": [r["frame"] for r in report["frames"]]})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    publish(data, work, rows, [budget_name(budget) for budget in budgets], args.json)


def publish(data: dict, work: Path, rows: list[dict], budgets: list[str], output: Path | None) -> None:
    """One face grid per budget (every configuration's swap beside the plate), the results file and the table."""
    for budget in budgets:
        measured = [row for row in rows if row["budget"] == budget]
        grid = face_grid(data, measured, work / "stills" / f"{data['pair']}_faces_{budget}.png")
        for row in measured:
            row["face_grid"] = str(grid)
        print(f"face grid: {grid}")
    output = output or work / "quality.json"
    media.write_json(output, {"data": data["source"], "cpus": os.cpu_count(), "rows": rows})
    print(f"\n{data['source']}\n{table(rows)}\n\nwritten: {output}")


if __name__ == "__main__":
    main()
