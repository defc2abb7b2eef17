"""The contract between the engine and the add-on (`python -m engine schema`): the add-on's bundled copy
is the engine's answer, every choice the engine takes has what runs it, and the rules both sides share
live in one standard-library module."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.base import color, frames
from engine.faces import detect
from engine.networks import model
from engine.schema import schema

ROOT = Path(__file__).resolve().parents[1]


def test_the_add_ons_bundled_schema_is_the_engines_answer():
    bundled = json.loads((ROOT / "addon" / "engine_schema.json").read_text())
    # in the same order too: the order of a menu's items, and the numbers a .blend stores them by
    assert json.dumps(bundled) == json.dumps(schema()), (
        "addon/engine_schema.json is stale: regenerate it with `python -m engine schema > addon/engine_schema.json`")


def test_the_schema_verb_prints_the_contract():
    done = subprocess.run([sys.executable, "-m", "engine", "schema"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    answer = json.loads(done.stdout)
    assert answer["verbs"]["convert"]["color"]["choices"]["rct"]["label"] == "Reinhard"
    assert answer["verbs"]["convert"]["color"]["default"] == "rct"
    assert answer["sizes"] == list(model.SIZES)
    assert answer["folders"]["output"]["files"]["exr"]["face"] == "face/face_%06d.exr"


def test_each_combined_mask_says_the_masks_it_combines():
    """A mask mode's tooltip names, by their own labels, the masks the engine combines for it."""
    from engine.stages.convert import mask_sources

    modes = schema()["verbs"]["convert"]["mask"]["choices"]
    said = modes["intersection"]["description"].lower()
    assert [source for source in mask_sources("intersection") if modes[source]["label"].lower() not in said] == []
    assert "hull" not in said


def test_every_published_choice_has_what_runs_it():
    answer = schema()["verbs"]
    assert set(answer["convert"]["color"]["choices"]) == set(color.MATCHERS)
    assert set(answer["extract"]["detector"]["choices"]) == {"auto", *detect.BACKENDS}
    assert set(answer["train"]["preset"]["choices"]) == set(model.PRESETS)


def test_one_preset_default_for_the_cli_the_api_and_the_add_on():
    published = schema()
    assert published["verbs"]["train"]["preset"]["default"] is None  # the CLI leaves it to train()
    assert published["default_presets"] == {"cuda": "quality", "cpu": "fast"}
    assert model.default_preset("cpu") == "fast" and model.default_preset("cuda") == "quality"
    assert model.default_preset("mps") == "fast"


def test_frame_rules_load_without_numpy_or_the_engine():
    """What the add-on (Blender's Python, no numpy) loads from the bundled engine: engine/base/frames.py alone."""
    script = (
        "import importlib.util, sys\n"
        "sys.modules['numpy'] = None\n"  # any import of numpy fails
        f"spec = importlib.util.spec_from_file_location('frames', {str(ROOT / 'engine' / 'base' / 'frames.py')!r})\n"
        "frames = importlib.util.module_from_spec(spec); spec.loader.exec_module(frames)\n"
        "print(frames.parse_ranges('1..3,5,9-10'), frames.sequence_numbers(['a_7.png', 'a_9.png']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[(1, 3), (5, 5), (9, 10)] [7, 9]"


def test_frame_rules():
    assert frames.parse_range(" 3 - 7 ") == (3, 7) and frames.parse_range("150") == (150, 150)
    assert frames.sequence_numbers(["a.png", "b.png"]) == [1, 2]  # no numbers: the name order
    assert frames.sequence_numbers(["x_1_5.png", "x_2_5.png"]) == [1, 2]  # the last numbers clash
    assert frames.frame_file("face/face_%06d.png", 12) == "face/face_000012.png"


@pytest.mark.parametrize("call", [lambda: frames.parse_range("7-3"), lambda: frames.parse_ranges("1-2;4"),
                                  lambda: frames.frame_file("face/face.png", 1)])
def test_frame_rules_refuse_what_they_cannot_read(call):
    with pytest.raises(ValueError):
        call()
