"""How a face layer goes over its plate: Porter and Duff's over, of colour premultiplied by alpha, in
linear light (colorspace.working: the plate's own space when it is scene-linear, else linear Rec.709),
as compositing applications do it.

Convert writes its finished frames with it and evaluate scores the composite it makes of convert's
layers, so what evaluate scores is what convert writes. Owned by neither stage.
"""

import numpy as np

from . import colorspace


def over(under, layer, alpha):
    """The premultiplied `layer` of coverage `alpha` over `under`, all in linear light: numpy arrays or
    torch tensors alike, `alpha` broadcasting over the colour channels."""
    return under * (1 - alpha) + layer


def straight(premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiplied colour back to straight colour (zero where `alpha` is)."""
    return np.where(alpha > 0, premultiplied / np.maximum(alpha, 1e-12), 0.0).astype(np.float32)


def layer_over_plate(plate: np.ndarray, layer: np.ndarray, colour: colorspace.ShotColour) -> tuple[np.ndarray, np.ndarray]:
    """(composite, alpha): a face layer file's pixels `layer` (RGBA, straight colour in colour.output, as
    convert writes it) over the `plate` frame's (in colour.plate), in colour.working as convert's
    finished frames are made, float32 H x W x 3; alpha float32 H x W."""
    alpha = np.clip(colorspace.as_float(layer[..., 3:]), 0.0, 1.0)
    color = colorspace.convert(colorspace.as_float(layer[..., :3]), colour.output, colour.working)
    under = colorspace.convert(colorspace.as_float(plate[..., :3]), colour.plate, colour.working)
    return over(under, color * alpha, alpha), alpha[..., 0]
