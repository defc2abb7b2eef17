"""`python -m engine weights`: the FAN detector's published weight files, fetched into a folder and
checked against their published SHA-256, so that extract can later run offline with `--fan-weights`.
The add-on's Download Detector Weights runs this; a farm admin can run it once per shared folder."""

from pathlib import Path

from ..base.events import EngineError
from ..faces import detect


def add_arguments(parser) -> None:
    parser.add_argument("--folder", type=Path, metavar="DIR",
                        help="where the files go (default: $FACEREPLACE_WEIGHTS, else ~/.cache/facereplace/weights); "
                             "pass it to extract as --fan-weights DIR")
    parser.add_argument("--check", action="store_true", help="only check the files already there; download nothing")


def run(args, events) -> None:
    folder = (args.folder or detect.weights_folder()).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"cannot make the weights folder {folder}: {e.strerror or e}") from None
    specs = list(detect.FAN_WEIGHTS.values())
    events.start(folder=str(folder), files=[spec.name for spec in specs])
    for spec in specs:
        path = folder / spec.name
        if path.is_file():
            detect.verified_bytes(spec, path)  # a file already there is kept only when it is the published one
        elif args.check:
            raise EngineError(f"{folder} lacks {spec.name}; run `python -m engine weights --folder {folder}`")
        else:
            detect.download(spec, path, lambda done, total, name=spec.name: events.progress(done, total, file=name))
    events.done(folder=str(folder), files=[str(folder / spec.name) for spec in specs])
