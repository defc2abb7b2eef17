"""One source for every setting: a field of a settings dataclass (engine/base/options.py) is its command-line
option, its check, its schema entry, its add-on property (and, marked for the panel, its Train panel
property, its argv and its farm job setting), with no other edit. Shown for a field added in the test."""

import json
import shutil
from dataclasses import asdict, make_dataclass
from types import SimpleNamespace

import pytest

from engine.__main__ import main
from engine.base import options
from engine.base.events import EngineError
from engine.networks.model import ModelConfig, check_config
from engine.schema import schema
from engine.stages import train as train_module
from engine.stages.convert import ConvertSettings
from engine.stages.train import TrainSettings
from engine.verbs import build_parser
from scripts.build_extension import ROOT
from tests.test_addon_farm import compile_job, operator_call

# The new option: a share (0 to 1), on the panel.
NEW_FIELD = ("ema", float, options.setting(0.0, "weight of the moving average of the weights", low=0, high=1,
                                           metavar="X", label="Weight Average", panel=True))


@pytest.fixture
def one_more_field(monkeypatch):
    """TrainSettings with the one field NEW_FIELD more, where train.py uses it."""
    settings = make_dataclass("TrainSettings", [NEW_FIELD], bases=(TrainSettings,))
    monkeypatch.setattr(train_module, "TrainSettings", settings)
    monkeypatch.setattr(train_module, "SETTINGS", (train_module.TrainRun, ModelConfig, settings))
    return settings


def addon_contract():
    """addon/contract.py alone: bpy-free, as plain tests and the farm's build load it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("contract_under_test", ROOT / "addon" / "contract.py")
    contract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(contract)
    return contract


def test_a_new_train_field_is_an_option_a_check_a_schema_entry_a_property_and_a_farm_setting(
        one_more_field, tmp_path, capsys):
    # the command line, and the Python API's keywords
    args = build_parser("train").parse_args(["train", "--model", "m", "--ema", "0.25", "--eyes-weight", "2"])
    changes = options.changes_from_args(one_more_field, args)
    assert changes == {"ema": 0.25, "loss": {"eyes": 2.0}}
    assert options.split_changes({"ema": 0.25, "iterations": 5}, *train_module.SETTINGS) == [
        {"iterations": 5}, {}, {"ema": 0.25}]
    assert options.with_changes(one_more_field(), changes).ema == 0.25
    # the checks: the parser's, and the one that holds for the API (and a checkpoint) too, in one line
    assert main(["train", "--a", "x", "--b", "y", "--model", str(tmp_path / "m"), "--ema", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "error: python -m engine train: argument --ema: 2 is above 1 (see python -m engine train --help)\n"
    with pytest.raises(EngineError, match=r"^--ema must be a number from 0 to 1, got 2$"):
        options.check(one_more_field(ema=2))

    # the schema
    published = schema()
    assert published["verbs"]["train"]["ema"] == {
        "default": 0.0, "type": "float", "low": 0, "high": 1, "label": "Weight Average", "panel": True,
        "help": "weight of the moving average of the weights"}

    # the add-on's Train panel: a property of its own, and its option on the command line it sends
    contract = addon_contract()
    assert contract.panel_options("train", published) == {"balance_expressions": "balance-expressions",
                                                          "ema": "ema"}
    assert contract.property_spec("train", "ema", published) == ("FLOAT", {
        "name": "Weight Average", "description": "Weight of the moving average of the weights", "default": 0.0,
        "min": 0, "max": 1})
    panel = SimpleNamespace(balance_expressions=True, ema=0.25)
    assert contract.panel_args("train", panel, published) == ["--balance-expressions", "--ema", 0.25]
    assert contract.panel_args("train", SimpleNamespace(balance_expressions=False, ema=0.0), published) == []

    # the farm's Train job: built from that schema, it carries the setting and sets it before training
    if shutil.which("node") is None:
        pytest.skip("needs Node.js to run the job type")
    root = tmp_path / "root"
    for folder in ("addon", "farm"):
        (root / folder).mkdir(parents=True)
    shutil.copy(ROOT / "addon" / "contract.py", root / "addon")
    (root / "addon" / "engine_schema.json").write_text(json.dumps(published))
    for script in (ROOT / "farm").glob("*.js"):
        shutil.copy(script, root / "farm")
    compiled = compile_job(tmp_path, "train", root, ema=0.25)
    assert "ema" in compiled["keys"]
    script = compiled["tasks"][0]["commands"][0]["parameters"]["args"][5]
    assert ".facereplace.train.ema = 0.25" in script and operator_call(script, "train")


def test_the_bundled_schema_builds_the_farm_and_the_panel_without_blender():
    contract = addon_contract()
    assert contract.farm_settings("train")[0]["key"] == "balance_expressions"
    assert contract.property_spec("train", "lr-dropout", min=0.01)[1]["max"] == 1


def test_a_checkpoints_settings_from_before_a_group_existed_still_resume():
    stored = asdict(TrainSettings())
    del stored["schedule"], stored["adversarial"], stored["balance_expressions"]
    assert TrainSettings.from_dict(stored) == TrainSettings()
    assert TrainSettings.from_dict(asdict(TrainSettings(seed=4))).seed == 4


@pytest.mark.parametrize("settings, message", [
    (TrainSettings(validation=0.5), "--validation must be a number at least 0 and below 0.5, got 0.5"),
    (TrainSettings(mask="oval"), "--mask 'oval' is not one of extended, hull"),
    (TrainSettings(keep=0), "--keep must be a whole number at least 1, got 0"),
    (ConvertSettings(erode=501), "--erode must be a whole number from -500 to 500, got 501"),
    (ConvertSettings(feather=float("nan")), "--feather must be a number from 0 to 1000, got nan"),
])
def test_the_checks_come_from_the_fields_ranges(settings, message):
    with pytest.raises(EngineError) as refused:
        options.check(settings)
    assert str(refused.value) == message


def test_a_checkpoints_config_is_held_to_the_same_ranges():
    with pytest.raises(EngineError, match="^latent must be a whole number from 1 to 16384, got 0$"):
        check_config(ModelConfig(latent=0))
