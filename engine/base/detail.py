"""Fine detail at convert: what a low-resolution model cannot draw, put back in frame pixels.

- `restore_detail`: frequency separation, as compositors do it by hand. The plate's own high-pass (the
  frame minus its Gaussian blur, a band of about DETAIL_SIGMA frame pixels: pores, stubble, film grain)
  is added onto the swapped face. It is kept off the eyes and the mouth, whose fine structure (lashes,
  iris edges, lip lines) belongs to the person being replaced and would bring them back, and off strong
  edges anywhere (a nose's outline, a frame of glasses): where the plate's high-pass is far above skin
  texture's level (DETAIL_EDGE) it fades out, so texture comes back and shapes do not.
- `sharpen`: an unsharp mask of the swapped face itself, at the scale its pixels were enlarged by.
- `match_edges`: the other end of the spectrum. Near the matte's edge the face takes the plate's low
  frequencies (colour and shading), so the swap meets its surround as the original face did; a global
  colour match cannot, where light falls differently across the face.

Both work on N x C x H x W float tensors in the shot's own space, so they run wherever convert runs.
"""

import math

import torch
from torch.nn import functional as F

# The plate's detail band, in frame pixels: fine texture only, below the scale of a face's features.
DETAIL_SIGMA = 1.5
# High-pass amplitude (mean over RGB, 0-1 sRGB) around which plate detail stops being texture and starts
# being an edge: on talking-head plates skin texture's median is about 0.003 and its 90th percentile 0.015;
# a frame of glasses or a nose's outline reach 0.05 and more. Detail fades as exp(-(amplitude / this)^2).
DETAIL_EDGE = 0.03
# extend_colour: below this much blurred solid face, a pixel takes the face's mean colour instead.
FILL_FALLBACK = 1e-3
# extend_colour keeps the model's own colour as the mask to this power: all of it where the mask is 1, so no
# step where the solid face ends, a sixteenth where it is 0.5, and the fill beyond.
EDGE_KEEP_POWER = 4


def gaussian_blur(image: torch.Tensor, sigma: float, padding: str = "reflect", radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of N x C x H x W, its kernel cut at `radius` pixels (default 3 sigma), so
    nothing reaches further. `padding` "reflect" mirrors the image at its edges, "zeros" treats
    everything beyond them as 0 (for mattes)."""
    radius = max(1, math.ceil(3 * sigma)) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    if padding == "reflect":  # mirrored, or the edge repeated where the image is smaller than the kernel
        mode = "reflect" if min(image.shape[-2:]) > radius else "replicate"
        image = F.pad(image, (radius, radius, radius, radius), mode=mode)
        return F.conv2d(F.conv2d(image, horizontal, groups=channels), vertical, groups=channels)
    image = F.conv2d(image, horizontal, groups=channels, padding=(0, radius))
    return F.conv2d(image, vertical, groups=channels, padding=(radius, 0))


def high_pass(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """The image minus its Gaussian blur: the detail finer than about `sigma` pixels."""
    return image - gaussian_blur(image, sigma)


def restore_detail(face: torch.Tensor, plate: torch.Tensor, weight: torch.Tensor, amount: float,
                   sigma: float = DETAIL_SIGMA, edge: float = DETAIL_EDGE) -> torch.Tensor:
    """`face` with `amount` times the plate's texture (its high-pass, strong edges faded out) added where
    `weight` (N x 1 x H x W in [0, 1]) allows. `face` and `plate` cover the same frame pixels."""
    detail = high_pass(plate, sigma)
    texture = detail * torch.exp(-((detail.abs().mean(1, keepdim=True) / edge) ** 2))
    return face + amount * weight * texture


def sharpen(face: torch.Tensor, amount: float, sigma: float) -> torch.Tensor:
    """Unsharp mask: `face` plus `amount` times its own detail finer than `sigma` pixels."""
    return face + amount * high_pass(face, sigma)


def extend_colour(face: torch.Tensor, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """`face` (N x 3 x H x W) where `mask` (N x 1 x H x W) is 1; wherever it is less, the colour of the solid
    face nearby (its blur over the pixels where the mask is 1; the face's mean colour far from any), as
    compositors extend a layer's edge. What a model draws where its mask fades (hair above the forehead,
    background it was taught little or nothing of) then never shows through the matte's soft edge, in
    hues (after the face's colour match) of neither face nor plate."""
    solid = (mask >= 1).to(face)
    mean = (face * solid).sum((2, 3), keepdim=True) / solid.sum((2, 3), keepdim=True).clamp(min=1)
    fill = (gaussian_blur(face * solid, sigma, "zeros") + FILL_FALLBACK * mean) / (
        gaussian_blur(solid, sigma, "zeros") + FILL_FALLBACK)
    keep = mask ** EDGE_KEEP_POWER
    return face * keep + fill * (1 - keep)


def match_edges(face: torch.Tensor, plate: torch.Tensor, alpha: torch.Tensor, amount: float, sigma: float) -> torch.Tensor:
    """`face` plus `amount` of the plate's difference from it at the scale of `sigma` pixels, in full at
    the matte's edge (`alpha`, N x 1 x H x W) and fading to nothing about 2 sigma inside. The difference is
    averaged over the face only: outside the matte the crop shows no face to compare."""
    inside = (alpha > 0.5).to(face)
    coverage = gaussian_blur(inside, sigma)
    difference = gaussian_blur((plate - face) * inside, sigma) / coverage.clamp(min=1e-3)
    near_edge = (2 * (1 - coverage)).clamp(0, 1)  # 1 on the edge, where half the blur is face
    return face + amount * near_edge * difference
