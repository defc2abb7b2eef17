"""Colour spaces by name, resolved through an OpenColorIO config, and the conversions between them.

The model was trained on, and works in, display-referred sRGB: DISPLAY below. A plate arrives in its own
colour space (`--colorspace`, a name in the OCIO config); its pixels go to DISPLAY for detection and for
the model, and what the model draws comes back in the plate's space. Faces go over the plate in linear
light: the plate's own space when that is scene-linear (ACEScg), else LINEAR.

The config is $OCIO when set, else `--ocio-config FILE`, else the ACES studio config OpenColorIO has
built in. Without `--colorspace` a plate keeps the meaning it always had: 8/16-bit files are sRGB, float
files (EXR) linear Rec.709. DISPLAY and LINEAR are names of the built-in config, and conversions to and
from another config's spaces go through the configs' ACES interchange role.

Conversions between DISPLAY and LINEAR use the sRGB curves below, one definition for numpy arrays and
torch tensors (so a GPU run keeps its pixels on the device); every other pair runs OpenColorIO's CPU
processor, lossless.
A conversion of a space to itself returns the pixels untouched: never a round trip.
"""

import functools
import os
import sys
from dataclasses import dataclass

import numpy as np

from .events import EngineError

BUILTIN_CONFIG = "ocio://studio-config-latest"
DISPLAY = "sRGB Encoded Rec.709 (sRGB)"  # the model's space, in the built-in config
LINEAR = "Linear Rec.709 (sRGB)"  # where a display-referred plate is composited, in the built-in config


def add_arguments(parser, output: bool = False) -> None:
    """The colour options of a stage that reads a plate (and, with `output`, writes layers)."""
    parser.add_argument("--colorspace", metavar="NAME",
                        help="the plate's colour space, a name in the OCIO config (default: sRGB for 8/16-bit "
                             "files, linear Rec.709 for float EXR)")
    if output:
        parser.add_argument("--output-colorspace", metavar="NAME",
                            help="the colour space of the layers, frames and patches (default: the plate's)")
    parser.add_argument("--ocio-config", metavar="FILE",
                        help=f"the OpenColorIO config naming the spaces ($OCIO wins; default {BUILTIN_CONFIG})")


@functools.lru_cache(maxsize=8)
def _load(path: str):
    import PyOpenColorIO as ocio

    if not path.startswith("ocio://") and not os.path.isfile(path):
        raise EngineError(f"OCIO config not found: {path}")
    try:
        return ocio.Config.CreateFromFile(path)
    except Exception as e:  # OCIO raises its own Exception for a damaged or unknown config
        raise EngineError(f"cannot read OCIO config {path}: {str(e).splitlines()[0] if str(e) else e}") from None


def config_path(option: str | None = None) -> str:
    """The config a run uses: $OCIO, else the --ocio-config option, else the built-in studio config."""
    return os.environ.get("OCIO") or option or BUILTIN_CONFIG


@dataclass(frozen=True)
class Space:
    """A colour space: its name in the OCIO config at `config`."""

    name: str
    config: str = BUILTIN_CONFIG

    @property
    def scene_linear(self) -> bool:
        """Linear light, unbounded (ACEScg, linear Rec.709): faces go over such a plate in its own values."""
        return _is_scene_linear(self.name, self.config)


@functools.lru_cache(maxsize=64)
def _is_scene_linear(name: str, config: str) -> bool:
    import PyOpenColorIO as ocio

    return bool(_load(config).isColorSpaceLinear(name, ocio.REFERENCE_SPACE_SCENE))


def resolve(name: str, config: str | None = None) -> Space:
    """The space `name` in the run's config; an unknown name is an EngineError listing the config's spaces."""
    path = config_path(config)
    found = _load(path).getColorSpace(name)
    if found is None:
        names = ", ".join(cs.getName() for cs in _load(path).getColorSpaces())
        raise EngineError(f"colour space {name!r} is not in the OCIO config {path}; it has: {names}")
    return Space(found.getName(), path)


def plate_space(name: str | None, config: str | None, float_plate: bool) -> Space:
    """The plate's space: `name` in the run's config, or without one what the files always meant."""
    if name:
        return resolve(name, config)
    if config:
        _load(config_path(config))  # a named config must exist, used or not
    return Space(LINEAR if float_plate else DISPLAY)


@dataclass(frozen=True)
class ShotColour:
    """A run's spaces: the plate's, the one its files are written in, and where faces are composited."""

    plate: Space
    output: Space

    @property
    def working(self) -> Space:
        return working(self.plate)

    def record(self) -> dict:
        return {"plate": self.plate.name, "output": self.output.name, "config": self.output.config}


# The sRGB transfer curves (IEC 61966-2-1): encoded values up to DECODE_KNEE (linear ones up to
# ENCODE_KNEE) lie on a straight segment of slope SLOPE, the rest on the power curve.
DECODE_KNEE = 0.04045
ENCODE_KNEE = 0.0031308
SLOPE = 12.92
OFFSET = 0.055
SCALE = 1.055  # 1 + OFFSET
GAMMA = 2.4


def _in_library(x):
    """`x` as the curves take it, with its library's `where`: a torch tensor as it is, on its own device;
    anything else as a float32 numpy array."""
    torch = sys.modules.get("torch")  # a tensor's library is loaded; numpy callers never load torch
    if torch is not None and isinstance(x, torch.Tensor):
        return x, torch.where
    return np.asarray(x, np.float32), np.where


def srgb_to_linear(x):
    """The sRGB decoding curve, of a numpy array (float32 back) or a torch tensor."""
    x, where = _in_library(x)
    # The power's base is clipped to its own segment: the other's would be NaN (and so would its gradient).
    return where(x <= DECODE_KNEE, x / SLOPE, ((x.clip(DECODE_KNEE) + OFFSET) / SCALE) ** GAMMA)


def linear_to_srgb(x):
    """The sRGB encoding curve, of a numpy array (float32 back) or a torch tensor; below 0 clips to 0."""
    x, where = _in_library(x)
    x = x.clip(0.0)
    return where(x <= ENCODE_KNEE, x * SLOPE, SCALE * x.clip(ENCODE_KNEE) ** (1 / GAMMA) - OFFSET)


MODEL = Space(DISPLAY)
BUILTIN_LINEAR = Space(LINEAR)
_CURVES = {(MODEL, BUILTIN_LINEAR): srgb_to_linear, (BUILTIN_LINEAR, MODEL): linear_to_srgb}


def working(plate: Space) -> Space:
    """Where faces go over `plate`: the plate's own space when it is scene-linear, else linear Rec.709."""
    return plate if plate == BUILTIN_LINEAR or (plate != MODEL and plate.scene_linear) else BUILTIN_LINEAR


@functools.lru_cache(maxsize=64)
def _processor(source: Space, target: Space):
    import PyOpenColorIO as ocio

    src, dst = _load(source.config), _load(target.config)
    try:
        if source.config == target.config:
            processor = src.getProcessor(source.name, target.name)
        else:
            processor = ocio.Config.GetProcessorFromConfigs(src, source.name, dst, target.name)
    except Exception as e:
        raise EngineError(f"OpenColorIO cannot convert {source.name} to {target.name}: {e}") from None
    return processor.getOptimizedCPUProcessor(ocio.OPTIMIZATION_LOSSLESS)


def convert(pixels: np.ndarray, source: Space, target: Space) -> np.ndarray:
    """`pixels` (H x W x 3+, float) from `source` to `target` as float32; channels past 3 (alpha) untouched.
    The same space returns the very array, so untouched pixels never pass through a conversion."""
    if source == target:
        return pixels
    pixels = np.asarray(pixels, np.float32)
    curve = _CURVES.get((source, target))
    if curve:
        rgb = curve(pixels[..., :3])
    else:
        rgb = np.ascontiguousarray(pixels[..., :3], dtype=np.float32).copy()
        _processor(source, target).applyRGB(rgb.reshape(-1, 3))
    return rgb if pixels.shape[-1] == 3 else np.concatenate([rgb, pixels[..., 3:]], axis=-1)


def convert_tensor(t, source: Space, target: Space):
    """A torch tensor's colours (channels on dim -3) from `source` to `target`, on its own device where
    the sRGB curves do it, through OpenColorIO on the CPU otherwise."""
    if source == target:
        return t
    curve = _CURVES.get((source, target))
    if curve:
        return curve(t)
    import torch

    moved = t.movedim(-3, -1).float().cpu().numpy()
    back = convert(moved, source, target)
    return torch.from_numpy(np.ascontiguousarray(back)).to(t).movedim(-1, -3)


def as_float(image: np.ndarray) -> np.ndarray:
    """A frame's stored values as float: 8/16-bit integers scaled to 0-1, float as it is."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return np.asarray(image, np.float32)


def display8(image: np.ndarray, plate: Space) -> np.ndarray:
    """The frame as 8-bit display sRGB, what detectors and the model see."""
    if image.dtype == np.uint8 and plate == MODEL:
        return image
    shown = convert(as_float(image[..., :3]), plate, MODEL)
    return np.round(np.clip(shown, 0.0, 1.0) * 255.0).astype(np.uint8)
