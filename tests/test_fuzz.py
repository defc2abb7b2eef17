"""Seeded fuzzing of the JSON files a run reads from other people's folders: alignments.json,
aside/moved.json, a convert output's manifest.json and a model's model.json, each mutated and fed to every
verb that reads it. Each run must either work or be refused with exit status 2, exactly one `error:`
line and one error event: never a traceback, never another status.

The mutator is ours and seeded (random.Random), so a failure names a case that reruns the same way.
FUZZ_CASES is the number of mutated files per verb (default 12; 4 for model.json): 115 runs holding about
230 mutations in all (each case makes 1 to 3).
"""

import copy
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.__main__ import main
from engine.base import media
from engine.stages.convert import convert

ROOT = Path(__file__).resolve().parents[1]
CASES = int(os.environ.get("FUZZ_CASES", "12"))

ODD_VALUES = [
    None, True, False, 0, -1, 7, 2**70, -1e-300, 1e308, float("nan"), float("inf"), "", "x", "128",
    "../../outside.png", "/etc/hostname", "faces/../../x.png", "%s%s", "face/face_%d_%d.png", [], {}, [[[]]],
    {"a": 1}, [0.5] * 3, [[1, 2, 3], [4, 5, 6]],
]


class Mutator:
    """Random changes to a JSON document: a value swapped for an odd one, a key or item dropped, an item
    doubled, a key added, deep nesting, or the file cut short."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def paths(self, node, path=()):
        yield path
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            yield from self.paths(child, path + (key,))

    def text(self, data) -> tuple[str, str]:
        """(the mutated document as JSON text, what was done)."""
        data = copy.deepcopy(data)
        done = []
        for _ in range(self.rng.randint(1, 3)):
            data, what = self.once(data)
            done.append(what)
        text = json.dumps(data)
        if self.rng.random() < 0.08:
            cut = self.rng.randrange(len(text))
            text, done = text[:cut], done + [f"cut at {cut}"]
        return text, "; ".join(done)

    def once(self, data):
        path = self.rng.choice(list(self.paths(data)))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        op = self.rng.choice(["odd", "odd", "odd", "drop", "double", "add", "nest"])
        if not path:
            return self.rng.choice(ODD_VALUES), "whole document replaced"
        key = path[-1]
        if op == "drop":
            del parent[key]
        elif op == "double" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == "add" and isinstance(parent, dict):
            parent["unexpected"] = self.rng.choice(ODD_VALUES)
        elif op == "nest":
            parent[key] = [[[parent[key]]]]
        else:
            parent[key] = self.rng.choice(ODD_VALUES)
        return data, f"{op} at {'/'.join(map(str, path))}"


def check(code: int, out: str, err: str, what: str) -> None:
    """Worked, or one error line, one error event and exit status 2."""
    assert code in (0, 2), f"{what}: exit status {code}\n{err[-3000:]}"
    assert "Traceback" not in err, f"{what}:\n{err[-3000:]}"
    events = [json.loads(line) for line in out.splitlines()]  # every stdout line is an event
    if code == 2:
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, f"{what}: {lines}"
        assert [e["event"] for e in events].count("error") == 1, what


@pytest.fixture(scope="module")
def base(faceset_b, shot_b, quick_model, tmp_path_factory) -> Path:
    """A faceset with one face aside (so it has a moved.json), convert layers of frames 1-2, a model."""
    root = tmp_path_factory.mktemp("fuzz")
    faceset = root / "faceset"
    shutil.copytree(faceset_b, faceset)
    face = json.loads((faceset / "alignments.json").read_text())["frames"][3]["faces"][0]
    files = [face["image"], face["mask_hull"], face["mask_extended"]]
    for relative in files:
        (faceset / "aside" / relative).parent.mkdir(parents=True, exist_ok=True)
        (faceset / relative).rename(faceset / "aside" / relative)
    media.write_json(faceset / "aside" / "moved.json", {"format": "facereplace.aside", "version": 1, "faces": [
        {"frame": 4, "image": face["image"], "files": files, "reasons": ["blurred"]}]})
    convert(shot_b, faceset_b, quick_model, root / "layers", frames="1-2", device="cpu", color="none")
    shutil.copytree(quick_model, root / "model")
    return root


def verbs(base: Path, work: Path, shot_b: Path, faceset_a: Path) -> dict:
    """Each fuzzed file: where a case's copy of it goes, and the command lines that read it."""
    faceset, layers, model = work / "faceset", work / "layers", work / "model"
    alignments = ["--alignments", faceset / "alignments.json"]
    return {
        "alignments": (faceset / "alignments.json", {
            "curate": ["curate", faceset],
            "train": ["train", "--a", faceset_a, "--b", faceset, "--model", work / "new-model", "--preset", "tiny",
                      "--iterations", "1", "--preview-every", "1000"],
            "convert": ["convert", shot_b, *alignments, "--model", model, "--output", work / "out", "--frames", "1-1"],
            "evaluate": ["evaluate", shot_b, *alignments, "--layers", layers, "--source", faceset, "--frames", "1-1"],
        }),
        "moved": (faceset / "aside" / "moved.json", {
            "curate": ["curate", faceset],
            "curate --apply": ["curate", faceset, "--apply"],
            "curate --restore": ["curate", faceset, "--restore"],
        }),
        "manifest": (layers / "manifest.json", {
            "evaluate": ["evaluate", shot_b, "--alignments", faceset / "alignments.json", "--layers", layers,
                         "--source", faceset, "--frames", "1-1"],
            "convert": ["convert", shot_b, *alignments, "--model", model, "--output", layers, "--frames", "2-2"],
        }),
        "model": (model / "model.json", {  # for people and the add-on: what loads a model must not trust it
            "convert": ["convert", shot_b, *alignments, "--model", model, "--output", work / "out", "--frames", "1-1"],
        }),
    }


CASES_PER_VERB = [(kind, verb) for kind, names in {
    "alignments": ["curate", "train", "convert", "evaluate"],
    "moved": ["curate", "curate --apply", "curate --restore"],
    "manifest": ["evaluate", "convert"],
    "model": ["convert"],
}.items() for verb in names]


@pytest.mark.parametrize("kind, verb", CASES_PER_VERB)
def test_mutated_files_work_or_are_refused_in_one_line(kind, verb, base, shot_b, faceset_a, tmp_path, capsys):
    seed = CASES_PER_VERB.index((kind, verb))
    mutator = Mutator(seed)
    cases = CASES // 3 if kind == "model" else CASES
    for case in range(cases):
        work = tmp_path / str(case)
        shutil.copytree(base, work, symlinks=True)
        path, commands = verbs(base, work, shot_b, faceset_a)[kind]
        text, what = mutator.text(json.loads(path.read_text()))
        path.write_text(text)
        code = main([str(a) for a in commands[verb]] + ["--events", "--device", "cpu"])
        captured = capsys.readouterr()
        check(code, captured.out, captured.err, f"{kind} through {verb}, seed {seed} case {case}: {what}")
        shutil.rmtree(work)


def test_the_real_command_line_too(base, shot_b, faceset_a, tmp_path):
    """A few cases through `python -m engine` in its own process, as the add-on and a farm run it."""
    mutator = Mutator(1000)
    for case, (kind, verb) in enumerate([("alignments", "convert"), ("moved", "curate --restore"),
                                         ("manifest", "evaluate")]):
        work = tmp_path / str(case)
        shutil.copytree(base, work, symlinks=True)
        path, commands = verbs(base, work, shot_b, faceset_a)[kind]
        text, what = mutator.text(json.loads(path.read_text()))
        path.write_text(text)
        result = subprocess.run([sys.executable, "-m", "engine", *map(str, commands[verb]), "--events",
                                 "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        check(result.returncode, result.stdout, result.stderr, f"{kind} through {verb}, case {case}: {what}")


# The mask verbs: odd faces and labels (what a stranger's faceset or a hurried artist hands them), and
# mask checkpoints whose settings the mutator changes.
ODD_IMAGES = {
    "half size": lambda a: a[::2, ::2], "grey": lambda a: a[..., 0], "1x1": lambda a: a[:1, :1],
    "16-bit": lambda a: a.astype(np.uint16) * 257, "RGBA": lambda a: np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]),
    "float": lambda a: a.astype(np.float32) / 255,
}


def odd_image(path: Path, rng: random.Random) -> str:
    """Rewrite the image at `path` as one of ODD_IMAGES (a float one as EXR beside it); says which."""
    name, change = rng.choice(list(ODD_IMAGES.items()))
    image = media.read_image(path)
    image = np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image
    if name == "float":
        path.unlink()
        path = path.with_suffix(".exr")
    media.write_image(path, np.ascontiguousarray(change(image)))
    return f"{path.name} made {name}"


def test_mask_verbs_take_or_refuse_odd_checkpoints_faces_and_labels(mask_model, tmp_path, capsys):
    import torch

    from engine.base.checkpoints import checkpoint_paths

    mutator, rng = Mutator(2000), random.Random(2000)
    for case in range(CASES):
        work = tmp_path / str(case)
        shutil.copytree(mask_model.parent, work, symlinks=True)
        faceset, labels = work / "faceset", work / "labels"
        if case % 3 == 0:
            path = checkpoint_paths(faceset / "mask_model")[0]
            state = torch.load(path, weights_only=True)
            text, what = mutator.text(state["settings"])
            try:
                state["settings"] = json.loads(text)
            except ValueError:
                state["settings"] = text
            torch.save(state, path)
        elif case % 3 == 1:
            what = odd_image(rng.choice(sorted((faceset / "faces").iterdir())), rng)
        else:
            what = odd_image(labels / "mask_000001.png", rng)
        for verb in (["apply"], ["train", "--labels", labels, "--resume", "--iterations", "3"]):
            code = main([str(a) for a in ["mask", *verb, "--faceset", faceset, "--events", "--device", "cpu"]])
            captured = capsys.readouterr()
            check(code, captured.out, captured.err, f"mask {verb[0]}, case {case}: {what}")
        shutil.rmtree(work)
