"""Colour matching of a swapped face to the face it replaces, measured inside the face mask.

Every matcher takes the swapped face, the original face (both float sRGB in [0, 1], N x 3 x H x W
torch tensors on any device, aligned to each other) and a weight mask (N x 1 x H x W in [0, 1]), and
returns the recoloured face. Statistics are taken in CIE Lab, where lightness and the two colour axes
are close to independent, so shifting one does not tint the others. Only "seamless" leaves torch: it
is OpenCV's Poisson clone, run on the CPU.
"""

import cv2
import numpy as np
import torch

from .colorspace import linear_to_srgb, srgb_to_linear
from .options import Choice

# sRGB primaries to CIE XYZ, D65 white (IEC 61966-2-1), and the D65 white point.
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375), (0.2126729, 0.7151522, 0.0721750), (0.0193339, 0.1191920, 0.9503041))
_WHITE = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0
# Reinhard's std ratio is clamped: a near-flat region of one face would otherwise blow the other up.
_STD_RATIO = (1 / 3, 3.0)
# The colour axes' spread is a face's own (lips, brows, the hair at its edge), not the light's: B's, wrinkled,
# ruddy and made up, spreads up to 3 times a model's smooth drawing of A, and taking it tints A's hair and
# brows in false colours, a rainbow band along the forehead.
_CHROMA_RATIO = (2 / 3, 1.5)
_QUANTILES = 256  # points of the histogram-matching curve
_MIN_WEIGHT = 16.0  # pixels' worth of mask needed before a face's statistics mean anything


def _matrix(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (N x 3 x H x W) to CIE Lab (L in [0, 100])."""
    xyz = torch.einsum("ij,njhw->nihw", _matrix(_RGB_TO_XYZ, rgb), srgb_to_linear(rgb))
    xyz = xyz / _matrix(_WHITE, rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    return torch.stack((116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])), 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab to sRGB, clipped to [0, 1]."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack((fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200), 1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * _matrix(_WHITE, lab).view(1, 3, 1, 1)
    rgb = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_matrix(_RGB_TO_XYZ, lab)), xyz)
    return linear_to_srgb(rgb).clamp(0.0, 1.0)


def _weighted_stats(lab: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-face, per-channel mean and standard deviation under `weight`."""
    total = weight.sum((2, 3), keepdim=True).clamp(min=1e-6)
    mean = (lab * weight).sum((2, 3), keepdim=True) / total
    var = (((lab - mean) ** 2) * weight).sum((2, 3), keepdim=True) / total
    return mean, var.sqrt()


def _enough_mask(weight: torch.Tensor) -> torch.Tensor:
    """N x 1 x 1 x 1 flags: faces whose mask is big enough to measure (others are left as they are)."""
    return weight.sum((2, 3), keepdim=True) >= _MIN_WEIGHT


def match_none(face, target, weight):
    return face


def match_avg(face, target, weight):
    """Average colour: shift the face's mean Lab to the original's."""
    lab = rgb_to_lab(face)
    face_mean, _ = _weighted_stats(lab, weight)
    target_mean, _ = _weighted_stats(rgb_to_lab(target), weight)
    return torch.where(_enough_mask(weight), lab_to_rgb(lab - face_mean + target_mean), face)


def match_rct(face, target, weight):
    """Reinhard et al. (2001) colour transfer: match each Lab channel's mean and standard deviation, the
    colour axes' spread within _CHROMA_RATIO of the face's own."""
    lab = rgb_to_lab(face)
    face_mean, face_std = _weighted_stats(lab, weight)
    target_mean, target_std = _weighted_stats(rgb_to_lab(target), weight)
    ratio = (target_std / face_std.clamp(min=1e-6)).clamp(*_STD_RATIO)
    ratio = torch.cat((ratio[:, :1], ratio[:, 1:].clamp(*_CHROMA_RATIO)), 1)
    return torch.where(_enough_mask(weight), lab_to_rgb((lab - face_mean) * ratio + target_mean), face)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp for a 1-D increasing `xp`: piecewise linear, held flat beyond the ends."""
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    t = ((x - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0.0, 1.0)
    return f0 + t * (f1 - f0)


def match_hist(face, target, weight):
    """Histogram matching per Lab channel: the face's quantiles inside the mask are mapped onto the
    original's, by one smooth monotone curve per channel applied to the whole face."""
    lab, target_lab = rgb_to_lab(face), rgb_to_lab(target)
    levels = torch.linspace(0, 1, _QUANTILES, device=face.device, dtype=face.dtype)
    out = []
    for i in range(len(face)):
        inside = weight[i, 0] > 0.5
        if inside.sum() < _MIN_WEIGHT:
            out.append(face[i])
            continue
        channels = []
        for c in range(3):
            source_q = torch.quantile(lab[i, c][inside], levels)
            target_q = torch.quantile(target_lab[i, c][inside], levels)
            # cummax keeps the curve's inputs strictly usable by searchsorted when quantiles tie.
            source_q = source_q.cummax(0).values + levels * 1e-6
            channels.append(_interp(lab[i, c].flatten(), source_q, target_q).view_as(lab[i, c]))
        out.append(lab_to_rgb(torch.stack(channels)[None])[0])
    return torch.stack(out)


def match_seamless(face, target, weight):
    """Poisson blending (Perez et al. 2003, cv2.seamlessClone): keep the face's gradients inside the
    mask and take the original's colour at the mask's edge; outside the mask the original shows, so a
    feathered edge fades into it. OpenCV works in 8 bits, so only its change to the face (a smooth
    membrane) is kept and added to the full-precision face."""
    out = []
    for i in range(len(face)):
        src = face[i].permute(1, 2, 0).float().cpu().numpy()
        dst = target[i].permute(1, 2, 0).float().cpu().numpy()
        mask = (weight[i, 0].float().cpu().numpy() > 0.5).astype(np.uint8) * 255
        mask[[0, -1], :] = 0  # OpenCV clears the outer ring anyway; clearing it first keeps the box exact
        mask[:, [0, -1]] = 0
        if mask.sum() < _MIN_WEIGHT * 255:
            out.append(face[i])
            continue
        x, y, w, h = cv2.boundingRect(mask)
        src8 = np.round(src * 255).astype(np.uint8)
        # OpenCV places the mask's bounding box centred on `p` with integer halving: this `p` puts it
        # back exactly where it was, so the clone is not shifted by a pixel.
        cloned = cv2.seamlessClone(
            src8, np.round(dst * 255).astype(np.uint8), mask, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE
        )
        change = (cloned.astype(np.float32) - src8) / 255.0
        result = np.where(mask[..., None] > 0, np.clip(src + change, 0.0, 1.0), dst)
        out.append(torch.from_numpy(result).permute(2, 0, 1).to(face))
    return torch.stack(out)


MATCHERS = {
    "none": match_none,
    "avg": match_avg,
    "rct": match_rct,
    "hist": match_hist,
    "seamless": match_seamless,
}


# convert --color: every matcher above, as the add-on's Color Match menu shows it.
COLOR_MODES = {
    "none": Choice("None", "Keep the model's colors"),
    "avg": Choice("Average", "Match the mean color inside the mask"),
    "rct": Choice("Reinhard", "Match mean and spread in Lab"),
    "hist": Choice("Histogram", "Match the histogram inside the mask"),
    "seamless": Choice("Seamless Clone", "Poisson blend into the frame"),
}


def match_color(mode: str, face: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Recolour `face` toward `target` inside `weight` with the matcher named `mode` (see MATCHERS)."""
    return MATCHERS[mode](face, target, weight)
