"""Fingerprints of one seeded run of the whole pipeline through the command line, to show that a change
meant to keep behaviour (a refactor) keeps it bit for bit: run it before and after and compare the JSON.

    .venv/bin/python bench/same_result.py --json before.json
    ... change ...
    .venv/bin/python bench/same_result.py --json after.json && cmp before.json after.json

It extracts the packaged sample shots, trains a tiny model with options of every group (model, loss,
augmentation, late phase, adversarial phase, feedback), trains its enhancer, masks and converts, each as
`python -m engine VERB` on one CPU thread, and prints the SHA-256 of the history's losses, of every
tensor of every checkpoint and of every output image's pixels and metadata.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import samples  # noqa: E402

TRAIN = ["--preset", "tiny", "--iterations", "30", "--seed", "7", "--save-every", "15", "--preview-every", "10",
         "--log-every", "5", "--keep", "5", "--validation", "0.2", "--learning-rate", "0.0003", "--latent", "96",
         "--no-warp-after", "0.5", "--lr-dropout", "0.5", "--gan-weight", "0.1", "--gan-after", "20",
         "--balance-expressions", "--rotation", "12", "--mask", "hull"]
ENHANCE = ["--iterations", "12", "--seed", "3", "--save-every", "6", "--log-every", "3", "--width", "16",
           "--blocks", "1", "--batch", "4"]
CONVERT = ["--format", "exr", "--mask", "intersection", "--erode", "2", "--detail", "1", "--edge-match", "0.5",
           "--write-frames"]


def engine(*args) -> None:
    subprocess.run([sys.executable, "-m", "engine", *map(str, args), "--device", "cpu"], cwd=ROOT, check=True,
                   env={**os.environ, "FACEREPLACE_THREADS": "1"}, stdout=subprocess.DEVNULL)


def tensors_digest(path: Path) -> str:
    """SHA-256 over every tensor of a checkpoint, by name, in name order (the file's own bytes carry times)."""
    import torch

    digest = hashlib.sha256()

    def walk(name: str, value) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(f"{name}/{key}", value[key])
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(f"{name}/{i}", item)

    walk("", torch.load(path, map_location="cpu", weights_only=True))
    return digest.hexdigest()


def history_digest(path: Path) -> str:
    """SHA-256 of history.csv without its elapsed-time column."""
    lines = path.read_text().splitlines()
    keep = [i for i, name in enumerate(lines[0].split(",")) if name != "elapsed_s"]
    return hashlib.sha256("\n".join(",".join(row.split(",")[i] for i in keep) for row in lines).encode()).hexdigest()


def image_digest(path: Path) -> str:
    """SHA-256 of an image's pixels and metadata, less the model's and enhancer's hashes: those hash the
    checkpoint files, whose bytes carry the time of their save."""
    import OpenImageIO as oiio

    image = oiio.ImageBuf(str(path))
    digest = hashlib.sha256(image.get_pixels(oiio.FLOAT).tobytes())
    for attribute in sorted(image.spec().extra_attribs, key=lambda a: a.name):
        value = attribute.value
        if attribute.name == "facereplace_model_hash":
            continue
        if attribute.name == "facereplace":
            record = json.loads(value)
            record.pop("model_hash", None)
            record.get("settings", {}).pop("enhancer", None)
            value = json.dumps(record, sort_keys=True)
        digest.update(f"{attribute.name}={value}".encode())
    return digest.hexdigest()


def fingerprints(work: Path) -> dict:
    shots = {}
    for name, clip, scale in (("a", "astronaut", 1.0), ("b", "grace_hopper", 0.6)):
        frames, _ = samples.make_clip(clip, 8, (320, 240), scale=scale)
        shots[name] = samples.write_sequence(work / f"shot_{name}", frames)
        engine("extract", shots[name], "--output", work / f"faceset_{name}", "--detector", "dlib",
               "--size", 128)
    model = work / "model"
    engine("train", "--a", work / "faceset_a", "--b", work / "faceset_b", "--model", model, *TRAIN)
    engine("enhance", "--model", model, "--faceset-a", work / "faceset_a", *ENHANCE)
    engine("convert", shots["b"], "--alignments", work / "faceset_b", "--model", model, "--output",
           work / "out", *CONVERT)
    result = {"history": history_digest(model / "history.csv"),
              "enhancer history": history_digest(model / "enhancer" / "history.csv")}
    for checkpoint in sorted(model.rglob("*.pt")):
        result[str(checkpoint.relative_to(work))] = tensors_digest(checkpoint)
    for file in sorted((work / "out").rglob("*")):
        if file.is_file() and file.suffix in (".exr", ".png"):
            result[str(file.relative_to(work))] = image_digest(file)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the fingerprints here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = fingerprints(Path(work))
    text = json.dumps(result, indent=1, sort_keys=True)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
