"""The enhancer: a second network per pair that turns the face model's output, at the model's size, into
A's face at 2 or 4 times that size. `engine enhance` (engine.stages.enhance) trains it; convert runs it after the
face model. It lives in the model folder's enhancer/ subfolder (engine.networks.model lays it out).

It learns from A alone: its input is the face model's own reconstruction of A's faces, its target the
same faces at its size from A's faceset, so it learns the softness it has to undo and can draw nothing
but A's features. It starts as a bicubic upscale (its last layer starts at zero) and learns what to add.
"""

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..base.checkpoints import check_weights, checkpoint_paths, load_state, newest_loadable
from ..base.events import EngineError
from .model import (
    ResidualBlock,
    enhancer_dir,
    he_conv,
    upscale_block,
)

FORMAT = "facereplace.enhancer"
VERSION = 1
FACTORS = (2, 4)  # output size / input size
PREVIEW_COLUMNS = "A->A (model, enlarged), A->A enhanced, A"
HISTORY_COLUMNS = ["iteration", "elapsed_s", "loss"]


@dataclass(frozen=True)
class EnhancerConfig:
    """Everything that shapes an enhancer; a checkpoint stores one, so it rebuilds as it was trained."""

    input_size: int  # the face model's size
    size: int  # its output's size: input_size times one of FACTORS
    width: int = 64  # channels at the input's size; each upscale halves them (down to 8)
    blocks: int = 4  # residual blocks at the input's size
    batch: int = 8
    learning_rate: float = 2e-4
    gan_weight: float = 0.0  # the adversarial term's weight beside the pixel losses (0: none)


def check_config(config: EnhancerConfig) -> EnhancerConfig:
    """Refuse a config no enhancer can be built from (the command line's, or a checkpoint's)."""
    for name, low, high in (("input_size", 16, 1024), ("size", 32, 4096), ("width", 8, 1024), ("blocks", 0, 64),
                            ("batch", 1, 4096)):
        value = getattr(config, name)
        if type(value) is not int or not low <= value <= high:
            raise EngineError(f"enhancer {name.replace('_', ' ')} must be a whole number from {low} to {high}, "
                              f"got {value!r}")
    if config.size not in [config.input_size * f for f in FACTORS]:
        raise EngineError(f"the enhancer's size must be {' or '.join(str(config.input_size * f) for f in FACTORS)} "
                          f"(2 or 4 times the model's {config.input_size} px), got {config.size}")
    rate = config.learning_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise EngineError(f"enhancer learning rate must be above 0 and at most 1, got {rate!r}")
    gan = config.gan_weight
    if isinstance(gan, bool) or not isinstance(gan, (int, float)) or not 0 <= gan <= 100:
        raise EngineError(f"enhancer GAN weight must be from 0 to 100, got {gan!r}")
    return config


class Enhancer(nn.Module):
    """Face (N x 3 x input_size²) -> face (N x 3 x size²): residual blocks at the input's size, then one
    sub-pixel upscale (with a residual block) per doubling, added to the bicubic enlargement of the input."""

    def __init__(self, config: EnhancerConfig):
        super().__init__()
        self.config = config
        width = config.width
        self.head = nn.Sequential(he_conv(3, width, 3), nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*[ResidualBlock(width) for _ in range(config.blocks)])
        stages = []
        for _ in range(int(math.log2(config.size // config.input_size))):
            stages += [upscale_block(width, max(width // 2, 8)), ResidualBlock(max(width // 2, 8))]
            width = max(width // 2, 8)
        self.upscales = nn.Sequential(*stages)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # it starts as the bicubic enlargement, not as noise over it
        nn.init.zeros_(self.tail.bias)

    def forward(self, faces):
        base = F.interpolate(faces, size=(self.config.size, self.config.size), mode="bicubic", align_corners=False)
        return base + self.tail(self.upscales(self.body(self.head(faces))))

    @torch.inference_mode()
    def enhance(self, faces: torch.Tensor) -> torch.Tensor:
        """The face model's drawn faces (float32 NCHW RGB in [0, 1] at input_size) at the enhancer's size."""
        with torch.autocast(faces.device.type, dtype=torch.bfloat16, enabled=faces.is_cuda):
            out = self(faces)
        return out.float().clamp(0, 1)


def model_input(faces: torch.Tensor, model_size: int) -> torch.Tensor:
    """Faces at the enhancer's size shrunk to the face model's, each pixel the mean of those it covers."""
    return F.interpolate(faces, size=(model_size, model_size), mode="area")


def config_from_state(state: dict) -> EnhancerConfig:
    known = {f.name for f in fields(EnhancerConfig)}
    return check_config(EnhancerConfig(**{k: v for k, v in state["config"].items() if k in known}))


def parse_checkpoint(data: bytes, device="cpu") -> dict:
    """The state in an enhancer checkpoint file's bytes `data`; any damage raises."""
    state = load_state(data, device, FORMAT, VERSION, "enhancer")
    with torch.device("meta"):
        expected = Enhancer(config_from_state(state))
    check_weights(expected, state.get("model"))
    return state


def latest_state(folder: Path, device, warn) -> tuple[dict, Path, str]:
    """The newest loadable checkpoint in the enhancer folder `folder`: its state, path and digest."""
    return newest_loadable(folder, lambda data: parse_checkpoint(data, device), warn, "enhancer checkpoint")


def load_enhancer(model_dir: str | Path, device, warn) -> Enhancer | None:
    """The model folder's trained enhancer, in eval mode on `device`, or None when it has none."""
    folder = enhancer_dir(model_dir)
    if not checkpoint_paths(folder):
        return None
    state, path, digest = latest_state(folder, device, warn)
    enhancer = Enhancer(config_from_state(state))
    enhancer.load_state_dict(state["model"])
    enhancer.hash = digest  # marks the outputs it made, beside the face model's hash
    enhancer.checkpoint = path
    enhancer.face_model_hash = state.get("face_model", {}).get("hash")  # the checkpoint it learnt from
    return enhancer.to(device).eval()

