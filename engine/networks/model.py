"""The face model, in one of two architectures, and the model folder it lives in, which this module alone
lays out.

- "df" (the classic deepfake hourglass, DeepFaceLab's DF): one shared encoder with its bottleneck, one
  decoder per person.
- "liae" (DeepFaceLab's LIAE): a shared encoder, two intermediates, inter_AB (A and B) and inter_B
  (B only), and a single decoder. A's code is inter_AB's output twice, B's is inter_B's beside
  inter_AB's; the swap draws B's faces from inter_AB twice, as A's. The decoder learns both people from
  one code space, which carries B's expression and light across better; DF keeps A's likeness crisper.

    MODEL/
      model.json                  what is in here, for people and the add-on: config, settings, iteration
      checkpoints/model_%08d.pt   the last few checkpoints (torch.load(weights_only=True), no pickle)
      history.csv                 losses over time
      preview.png, previews/      the latest preview grid, and one per preview interval (a timelapse)
      stop                        create this file to make a running train save and stop
                                  (checkpoints/ and stop as engine.base.checkpoints keeps them for every network)
      enhancer/                   the optional enhancer (engine.networks.enhancer, `engine enhance`), laid out as
                                  this folder is: model.json, checkpoints/, history.csv, preview.png,
                                  previews/ and stop, of its own

Both people's faces go through the same encoder, so it learns a description of a face (pose, expression,
light) that either decoder can draw; decoding B's faces with A's decoder is the swap. Each decoder draws
RGB and a mask. Upscaling is a 3x3 convolution followed by pixel-shuffle (sub-pixel convolution),
initialised with ICNR so it starts as nearest-neighbour upsampling rather than a checkerboard.
"""

import contextlib
import csv
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..base import media
from ..base.checkpoints import (
    CHECKPOINT_NAME,
    CHECKPOINTS,
    check_weights,
    checkpoint_paths,
    load_state,
    newest_loadable,
)
from ..base.events import EngineError
from ..base.options import Choice, check, setting

log = logging.getLogger("engine")

FORMAT = "facereplace.model"
VERSION = 1
SUMMARY_FILE = "model.json"
HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = ["iteration", "elapsed_s", "loss_a", "loss_b", "val_loss_a", "val_loss_b"]
PREVIEW_FILE = "preview.png"
PREVIEWS = "previews"
MODEL_FOLDERS = (CHECKPOINTS, PREVIEWS)  # what train writes into
PREVIEW_COLUMNS = "A, A->A, A->B, B, B->B, B->A"
ENHANCER = "enhancer"  # the model folder's subfolder for its enhancer
SIZES = (64, 128, 192, 256, 320, 384, 448, 512)
ARCHITECTURES = {
    "df": Choice("DF", "One decoder per person: keeps A's likeness crisp"),
    "liae": Choice("LIAE", "Shared intermediates and one decoder: carries B's expression and light across"),
}


@dataclass
class ModelConfig:
    """Every setting that shapes the model, and the training defaults it is tuned for. A preset is one of
    these; a checkpoint stores one, so a model always rebuilds as it was trained. Its fields with help are
    train's options that override the preset (engine.base.options); the ranges hold far beyond any preset,
    short of a model no machine holds, and check_config holds a checkpoint's config to them too."""

    preset: str = "tiny"
    # see ARCHITECTURES; checkpoints from before it existed are "df"
    architecture: str = setting("df", "df: one decoder per person; liae: shared and B-only intermediates, one "
                                      "decoder (df)", choices=ARCHITECTURES)
    size: int = setting(64, f"model resolution: {', '.join(map(str, SIZES))} (default: the preset's)", choices=SIZES, metavar="N",
                        label="Resolution", unit="px")
    encoder_width: int = setting(16, "channels of the first of the encoder's 4 downscales (each next one doubles "
                                     "them)", low=1, high=1024, metavar="N")
    latent: int = setting(128, "width of the dense bottleneck", low=1, high=16384, metavar="N")
    decoder_width: int = setting(64, "channels where the decoders start, at size/8 (halves 3 times)", low=8,
                                 high=8192, metavar="N")
    residual_blocks: int = setting(0, "residual blocks after each decoder upscale", low=0, high=64, metavar="N")
    batch: int = setting(8, "faces per person per iteration (per GPU)", low=1, high=4096, metavar="N")
    learning_rate: float = setting(1e-3, "Adam learning rate", low=0, high=1, above=True, metavar="X")
    # The facesets the model was trained on: convert checks a shot's alignments against these.
    face_size: int = field(default=0, metadata={"low": 0, "high": 4096})
    coverage: float = field(default=0.0, metadata={"low": 0, "high": 1})


PRESETS = {
    # Tests and the quickest look: learns a recognisable face in a few hundred CPU iterations.
    "tiny": ModelConfig(),
    # Previews and CPU training: small enough to run at a few iterations a second on a laptop.
    "fast": ModelConfig(preset="fast", size=64, encoder_width=32, latent=256, decoder_width=256,
                        residual_blocks=0, batch=16, learning_rate=2e-4),
    # GPU training for finished shots: 128 px by default (--size 192 or 256 for close-ups).
    "quality": ModelConfig(preset="quality", size=128, encoder_width=64, latent=512, decoder_width=512,
                           residual_blocks=1, batch=16, learning_rate=5e-5),
}


# train --preset, as the add-on's Preset menu shows it.
PRESET_CHOICES = {
    "tiny": Choice("Tiny", "Quickest look: 64 px, learns a recognizable face in minutes on a CPU"),
    "fast": Choice("Fast", "Previews and CPU training: 64 px"),
    "quality": Choice("Quality", "Finished shots on a GPU: 128 px, or 192/256 for close-ups"),
}
# A new model's preset when none is given (CLI, API and add-on alike): by the kind of device it trains on.
DEFAULT_PRESETS = {"cuda": "quality", "cpu": "fast"}


def default_preset(device_type: str) -> str:
    """The preset a new model gets on a torch device of `device_type` when none is asked for."""
    return DEFAULT_PRESETS.get(device_type, DEFAULT_PRESETS["cpu"])


def make_config(preset: str, size: int | None = None, **overrides) -> ModelConfig:
    """A preset's config with `size` and any other field (None means keep the preset's) changed."""
    if preset not in PRESETS:
        raise EngineError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return check_config(replace(PRESETS[preset], **{k: v for k, v in dict(size=size, **overrides).items() if v is not None}))


def check_config(config: ModelConfig) -> ModelConfig:
    """Refuse a config no model can be built from (the command line's, or a checkpoint's, whoever wrote it),
    before any tensor is."""
    check(config, prefix="")
    if config.decoder_width % 8:
        raise EngineError(f"decoder width must be a multiple of 8 (it halves three times), got {config.decoder_width}")
    return config


# ---------------------------------------------------------------- layers


def he_conv(channels_in: int, channels_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A convolution with He initialisation for the leaky ReLU that follows it, as Keras-era face models
    used: torch's default starts each layer with a third of the variance, and a deep hourglass then
    spends its first thousand iterations drawing a blur."""
    conv = nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=kernel // 2)
    nn.init.kaiming_uniform_(conv.weight, a=0.1, nonlinearity="leaky_relu")
    nn.init.zeros_(conv.bias)
    return conv


def _downscale(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(he_conv(channels_in, channels_out, 5, stride=2), nn.LeakyReLU(0.1))


def upscale_block(channels_in: int, channels_out: int) -> nn.Sequential:
    conv = he_conv(channels_in, channels_out * 4, 3)
    # ICNR (Aitken et al. 2017): the four sub-pixel kernels of each output channel start equal.
    with torch.no_grad():
        conv.weight.copy_(conv.weight[:channels_out].repeat_interleave(4, dim=0))
    return nn.Sequential(conv, nn.LeakyReLU(0.1), nn.PixelShuffle(2))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = he_conv(channels, channels, 3)
        self.conv2 = he_conv(channels, channels, 3)

    def forward(self, x):
        return F.leaky_relu(x + self.conv2(F.leaky_relu(self.conv1(x), 0.2)), 0.2)


def _encoder_widths(config: ModelConfig) -> list[int]:
    return [3] + [config.encoder_width * 2**i for i in range(4)]


def _bottleneck(config: ModelConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """(dense, upscale): features at size/16 -> latent -> back -> features at size/8."""
    width = _encoder_widths(config)[-1]
    flat = width * (config.size // 16) ** 2
    dense = nn.Sequential(nn.Linear(flat, config.latent), nn.Linear(config.latent, flat))
    for layer in dense:
        nn.init.xavier_uniform_(layer.weight)  # Keras's default for dense layers, for the same reason
        nn.init.zeros_(layer.bias)
    return dense, upscale_block(width, config.decoder_width)


class Encoder(nn.Module):
    """Face -> features at size/8: four stride-2 5x5 convolutions, then (with `bottleneck`) a dense
    bottleneck and one upscale; without it, the features at size/16 for LIAE's intermediates."""

    def __init__(self, config: ModelConfig, bottleneck: bool = True):
        super().__init__()
        widths = _encoder_widths(config)
        self.downscales = nn.Sequential(*[_downscale(a, b) for a, b in zip(widths, widths[1:], strict=False)])
        self.bottleneck = bottleneck
        if bottleneck:
            self.dense, self.upscale = _bottleneck(config)

    def forward(self, faces):
        x = self.downscales(faces)
        return self.upscale(self.dense(x.flatten(1)).view(x.shape)) if self.bottleneck else x


class Intermediate(nn.Module):
    """LIAE's inter_AB or inter_B: the encoder's features at size/16 -> a code at size/8."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense, self.upscale = _bottleneck(config)

    def forward(self, x):
        return self.upscale(self.dense(x.flatten(1)).view(x.shape))


class Decoder(nn.Module):
    """Features -> (RGB in [0, 1], mask logits): three upscales, halving the channels each time."""

    def __init__(self, config: ModelConfig, channels_in: int | None = None):
        super().__init__()
        widths = [channels_in or config.decoder_width] + [config.decoder_width // 2**i for i in range(1, 4)]
        stages = []
        for a, b in zip(widths, widths[1:], strict=False):
            stages += [upscale_block(a, b)] + [ResidualBlock(b) for _ in range(config.residual_blocks)]
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(widths[-1], 4, 5, padding=2)

    def forward(self, features):
        out = self.head(self.stages(features))
        return torch.sigmoid(out[:, :3]), out[:, 3:]


class FaceModel(nn.Module):
    PEOPLE = ("a", "b")

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.architecture == "liae":
            self.encoder = Encoder(config, bottleneck=False)
            self.inters = nn.ModuleDict({"ab": Intermediate(config), "b": Intermediate(config)})
            self.decoder = Decoder(config, channels_in=2 * config.decoder_width)
        else:
            self.encoder = Encoder(config)
            self.decoders = nn.ModuleDict({"a": Decoder(config), "b": Decoder(config)})

    def forward(self, faces_a, faces_b):
        """The training pass: each person's faces drawn as itself, as ((rgb_a, mask_logits_a),
        (rgb_b, mask_logits_b)). One call, so DDP sees every parameter used."""
        features = self.encoder(torch.cat([faces_a, faces_b]))
        features_a, features_b = features.split([len(faces_a), len(faces_b)])
        if self.config.architecture == "liae":
            drawn = self.decoder(torch.cat([self._code(features_a, "a"), self._code(features_b, "b")]))
            return tuple(zip(*(part.split([len(faces_a), len(faces_b)]) for part in drawn), strict=True))
        return self.decoders["a"](features_a), self.decoders["b"](features_b)

    def _code(self, features, person: str):
        """LIAE: the decoder's input for `person`, inter_AB's code beside inter_B's (B) or itself (A)."""
        shared = self.inters["ab"](features)
        own = self.inters["b"](features) if person == "b" else shared
        return torch.cat([own, shared], 1)

    def draw(self, faces, person: str):
        """`faces` drawn as `person`: (rgb in [0, 1], mask logits)."""
        if self.config.architecture == "liae":
            return self.decoder(self._code(self.encoder(faces), person))
        return self.decoders[person](self.encoder(faces))

    @torch.inference_mode()
    def swap(self, faces: torch.Tensor, person: str):
        """Draw `faces` (float32 NCHW RGB in [0, 1] at config.size, aligned as extract aligns) as
        `person` ("a" or "b"): (rgb NCHW, mask N1HW), both float32 in [0, 1]."""
        if person not in self.PEOPLE:
            raise EngineError(f"person must be 'a' or 'b', got {person!r}")
        size = self.config.size
        if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2:] != (size, size):
            raise EngineError(f"the model takes N x 3 x {size} x {size} faces, got {tuple(faces.shape)}")
        with torch.autocast(faces.device.type, dtype=torch.bfloat16, enabled=faces.is_cuda):
            rgb, mask_logits = self.draw(faces, person)
        return rgb.float(), torch.sigmoid(mask_logits.float())


# ---------------------------------------------------------------- the model folder


def best_checkpoint(model_dir: str | Path) -> tuple[Path, float] | None:
    """The checkpoint with the lowest loss in history.csv at its iteration (the validation loss, else the
    training loss where nothing was held out) and that loss; None when history has no row for any."""
    rows = {row["iteration"]: row for row in read_history(Path(model_dir) / HISTORY_FILE)}
    scored = []
    for path in checkpoint_paths(model_dir):
        row = rows.get(int(CHECKPOINT_NAME.fullmatch(path.name)[1]))
        kind = "val_loss" if row and row["val_loss_a"] is not None else "loss"
        if row and row[f"{kind}_a"] is not None and row[f"{kind}_b"] is not None:
            scored.append(((row[f"{kind}_a"] + row[f"{kind}_b"]) / 2, path))
    if not scored:
        return None
    score, path = min(scored)
    return path, score


def read_checkpoint(path: Path, device="cpu") -> dict:
    """One checkpoint's state; any damage (truncation, bad zip, wrong keys) raises."""
    return parse_checkpoint(Path(path).read_bytes(), device)


def parse_checkpoint(data: bytes, device="cpu") -> dict:
    """The state in a checkpoint file's bytes `data`; any damage raises."""
    state = load_state(data, device, FORMAT, VERSION, "model")
    _check_weights(state)
    return state


def _check_weights(state: dict) -> None:
    """The weights (and the optimiser's moments) must have the shapes the stored config builds, checked
    against a model on the meta device, which allocates nothing, and be finite numbers."""
    with torch.device("meta"):
        expected = FaceModel(config_from_state(state))
    check_weights(expected, state.get("model"))
    parameters = [tuple(p.shape) for p in expected.parameters()]
    for index, moments in state.get("optimizer", {}).get("state", {}).items():
        if not (isinstance(index, int) and 0 <= index < len(parameters) and isinstance(moments, dict)
                and all(tuple(moments[k].shape) == parameters[index] for k in ("exp_avg", "exp_avg_sq"))):
            raise ValueError("its optimiser state does not fit the model")


def config_from_state(state: dict) -> ModelConfig:
    """A checkpoint's config, range-checked."""
    known = {f.name for f in fields(ModelConfig)}
    return check_config(ModelConfig(**{k: v for k, v in state["config"].items() if k in known}))


def latest_checkpoint(model_dir: str | Path, device="cpu", warn=None) -> tuple[dict, Path]:
    """The newest checkpoint that loads: (state, path). A damaged one is skipped with a warning
    (`warn(message)`, a log warning by default) and the one before it is used."""
    state, path, _ = _latest_checkpoint(model_dir, device, warn)
    return state, path


def _latest_checkpoint(model_dir: str | Path, device, warn) -> tuple[dict, Path, str]:
    """latest_checkpoint's (state, path) and the digest of the very bytes the state was read from."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EngineError(f"model folder not found: {model_dir}")
    if not checkpoint_paths(model_dir):
        raise EngineError(f"no model checkpoint in {model_dir} (train one first)")
    return newest_loadable(model_dir, lambda data: parse_checkpoint(data, device), warn or log.warning)


def load_model(model_dir: str | Path, device="cpu", warn=None) -> tuple[FaceModel, ModelConfig]:
    """The model of the newest good checkpoint in `model_dir`, on `device`, in eval mode, and its config."""
    state, path, digest = _latest_checkpoint(model_dir, device, warn)
    config = config_from_state(state)
    model = FaceModel(config)
    model.load_state_dict(state["model"])
    model.checkpoint = path
    model.hash = digest  # of the bytes loaded: a train saving meanwhile cannot make it another model's
    model.iteration = state["iteration"]
    return model.to(device).eval(), config


def model_hash(model_dir: str | Path) -> str:
    """Short sha256 of the checkpoint `load_model` uses, which marks outputs with the model that made them."""
    return _latest_checkpoint(model_dir, "cpu", None)[2]


# ---------------------------------------------------------------- the rest of the model folder


def enhancer_dir(model_dir: str | Path) -> Path:
    """Where the model folder's enhancer lives: its checkpoints, history, previews and stop file."""
    return Path(model_dir) / ENHANCER


def write_preview(model_dir: Path, grid: np.ndarray, iteration: int, columns: str = PREVIEW_COLUMNS) -> Path:
    """previews/preview_%08d.png (the timelapse) and preview.png (the latest), from the uint8 RGB `grid`
    whose columns are `columns`."""
    png = media.encode_png(grid, {"Columns": columns, "Iteration": str(iteration), "Software": "FaceReplace"})
    media.write_bytes(model_dir / PREVIEWS / f"preview_{iteration:08d}.png", png)
    media.write_bytes(model_dir / PREVIEW_FILE, png)
    return model_dir / PREVIEW_FILE


def append_history(model_dir: Path, iteration: int, elapsed: float, losses: dict,
                   columns: list[str] = HISTORY_COLUMNS) -> None:
    """One history.csv row of `columns` (the enhancer has its own). Appended, not rewritten: a row cut
    short by a kill is dropped by the next resume."""
    path = model_dir / HISTORY_FILE
    new = not path.exists()
    with media.write_errors(path), media.open_appending(path) as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        values = [losses[c] for c in columns[2:]]
        writer.writerow([iteration, f"{elapsed:.2f}"] + ["" if v is None else f"{v:.6f}" for v in values])


def read_history(path: str | Path, columns: list[str] = HISTORY_COLUMNS) -> list[dict]:
    """history.csv as dicts of numbers (None where a value is blank); a torn last row is skipped."""
    rows = []
    with contextlib.suppress(FileNotFoundError), open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: (float(v) if v else None) for k, v in row.items() if k in columns}
                            | {"iteration": int(row["iteration"])})
            except (TypeError, ValueError):
                continue
    return rows


def trim_history(model_dir: Path, iteration: int, columns: list[str] = HISTORY_COLUMNS) -> None:
    """Drop rows past the checkpoint being resumed (written after its save by a run that was then killed),
    and any row a kill cut short."""
    path = model_dir / HISTORY_FILE
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines[1:]
            if _row_iteration(line, columns) is not None and _row_iteration(line, columns) <= iteration]
    media.write_bytes(path, "\n".join([",".join(columns)] + kept + [""]).encode())


def _row_iteration(line: str, columns: list[str]) -> int | None:
    cells = line.split(",")
    return int(cells[0]) if len(cells) == len(columns) and cells[0].isdigit() else None
