"""The engine's argument lists, from plain values: the Blender modules read the scene and the
preferences into them (`plain`), and hand the lists to engine_client.engine_command."""

from dataclasses import dataclass, fields
from pathlib import Path

from .. import contract
from ..engine_client import ClientError

NEW_MODEL_LIMIT = 1000  # model, model_2, ... model_999: the folders a new model may take


def plain(cls, group):
    """The dataclass `cls` filled from the same-named properties of `group` (a scene's property group); a
    field the group lacks keeps its default."""
    return cls(**{f.name: getattr(group, f.name) for f in fields(cls) if hasattr(group, f.name)})


def shot_args(source: Path, frames: str, face_size: int, colour: list, reference: tuple[int, int] | None = None) -> list:
    """What a faceset of a shot holds: its `source`, `frames` (the engine's numbers), face size, colour
    options and the reference face (shot frame number, face index) that picks the person."""
    args = [source, "--frames", frames, "--size", face_size, *colour]
    if reference is not None:
        args += ["--reference-face", f"{reference[0]}:{reference[1]}"]
    return args


def detector_args(detector: str, weights: str, online: bool) -> list[str]:
    """--detector, and what keeps it off the network while Blender's Online Access is off: --offline (the
    engine then uses only what it has: the `weights` folder, else the packaged dlib detector)."""
    args = ["--detector", detector]
    if detector == "dlib":
        return args  # nothing to download
    if weights:
        args += ["--fan-weights", weights]
    if not online:
        if detector == "fan" and not weights:
            raise ClientError("the FAN detector downloads its weights, and Online Access is off: set Detector "
                              "Weights Folder in Preferences > Add-ons > FaceReplace, or pick the dlib detector")
        args.append("--offline")
    return args


def has_model(folder: Path) -> bool:
    return (folder / contract.folder("model")["summary"]).is_file()


def new_model_folder(work: Path) -> Path:
    """The next free model folder in `work`: a new model never overwrites an earlier one."""
    return next(work / name for i in range(1, NEW_MODEL_LIMIT)
                if not (work / (name := "model" if i == 1 else f"model_{i}")).exists())


@dataclass(frozen=True)
class TrainPanel:
    """The Train panel's settings."""

    iterations: int
    preset: str  # "AUTO": the engine picks
    size: str  # "PRESET": the preset's
    architecture: str  # "PRESET": the preset's
    late_phase: float
    lr_dropout: float
    gan_weight: float
    time_budget: float
    panel_options: tuple = ()  # the options of the properties the engine's schema makes (contract.panel_args)
    base_model: str = ""  # a new model starts from this model's weights (absolute; "": from scratch)


def train_args(faceset_a: Path, faceset_b: Path, model: Path, panel: TrainPanel, resume: bool,
               iterations: int = 0) -> list:
    """Train A<->B into `model`, or `resume` it; `iterations` overrides the panel's."""
    args = ["--a", faceset_a, "--b", faceset_b, "--model", model, "--iterations", iterations or panel.iterations]
    if resume:  # a model keeps the preset and resolution it was made with
        args.append("--resume")
    else:
        args += (["--preset", panel.preset] if panel.preset != "AUTO" else []) + (
            ["--size", panel.size] if panel.size != "PRESET" else []) + (
            ["--architecture", panel.architecture] if panel.architecture != "PRESET" else []) + (
            ["--init-from", panel.base_model] if panel.base_model else [])
    if panel.late_phase > 0:
        args += ["--no-warp-after", round(panel.late_phase, 3), "--lr-dropout", round(panel.lr_dropout, 3)]
        if panel.gan_weight > 0:
            args += ["--gan-weight", round(panel.gan_weight, 3)]
    args += panel.panel_options
    if panel.time_budget > 0:
        args += ["--time-budget", round(panel.time_budget, 1)]
    return args


def enhancer_folder(model: Path) -> Path:
    return model / contract.folder("model")["enhancer"]


def enhance_args(model: Path, faceset_a: Path, iterations: int) -> list:
    """Train the enhancer of the model in `model` on faceset A, resuming the one it holds."""
    args = ["--model", model, "--faceset-a", faceset_a, "--iterations", iterations]
    return args + (["--resume"] if has_model(enhancer_folder(model)) else [])


@dataclass(frozen=True)
class ConvertPanel:
    """The Convert panel's settings."""

    mask: str
    erode: int
    color: str
    format: str
    detail: float
    edge_match: float
    use_auto_feather: bool
    feather: int
    plate_mouth: bool = False


def convert_args(source: Path, frames: str, colour: list, faceset_b: Path, model: Path, output: Path,
                 panel: ConvertPanel) -> list:
    """Convert `frames` (the engine's numbers) of B's shot `source` with the model into `output`."""
    alignments = faceset_b / contract.folder("faceset")["alignments"]
    args = [source, "--alignments", alignments, "--model", model, "--output", output, "--mask", panel.mask,
            "--erode", panel.erode, "--color", panel.color, "--format", panel.format, "--detail", panel.detail,
            "--edge-match", panel.edge_match, "--frames", frames, *colour]
    return args + ([] if panel.use_auto_feather else ["--feather", panel.feather]) + (
        ["--plate-mouth"] if panel.plate_mouth else [])


def mask_train_args(faceset: Path, labels: Path, model: Path, iterations: int) -> list:
    """`engine mask train` on the label images in `labels`, refining the mask model already in `model`."""
    args = ["train", "--faceset", faceset, "--labels", labels, "--model", model, "--iterations", iterations]
    checkpoints = model / Path(contract.folder("model")["checkpoints"]).parent
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        args.append("--resume")  # more labels or iterations refine the model already there
    return args


def mask_apply_args(faceset: Path, model: Path) -> list:
    return ["apply", "--faceset", faceset, "--model", model]


def stop_file(model: Path) -> Path:
    """The file whose appearance stops a training run in `model` (it saves first)."""
    return model / contract.folder("model")["stop"]
