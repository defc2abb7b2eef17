"""The training loss: structural similarity and L1 inside the face mask, weighted up on the eyes and the
mouth (where people look, and where a swap first gives itself away), plus a loss on the predicted mask;
and the adversarial phase's least-squares GAN losses, per patch inside the face mask (engine.networks.adversarial).

Everything is computed in float32 whatever precision the model ran in.
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..base.options import setting

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


@dataclass
class LossWeights:
    ssim: float = setting(1.0, "structural dissimilarity, (1 - SSIM) / 2, in the mask", low=0, metavar="W")
    l1: float = setting(1.0, "mean absolute error, in the mask", low=0, metavar="W")
    mask: float = setting(0.5, "binary cross-entropy of the predicted mask against the faceset's mask", low=0,
                          metavar="W")
    eyes: float = setting(3.0, "an eye pixel counts this many times a plain face pixel", low=0, metavar="W")
    mouth: float = setting(2.0, "a mouth pixel counts this many times a plain face pixel", low=0, metavar="W")
    background: float = setting(0.1, "how much a pixel outside the face mask counts (0: not at all)", low=0,
                                metavar="W")


def _gaussian_window(channels: int, device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, device=device, dtype=torch.float32) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of two NCHW images in [0, 1], averaged over channels: N x 1 x H x W."""
    channels = x.shape[1]
    window = _gaussian_window(channels, x.device)
    pad = SSIM_WINDOW // 2

    def blur(image):
        return F.conv2d(F.pad(image, [pad] * 4, mode="reflect"), window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return ssim.mean(1, keepdim=True)


def pixel_weights(mask, eyes, mouth, weights: LossWeights) -> torch.Tensor:
    """How much each pixel counts: `background` outside the face, 1 inside, more on the eyes and mouth."""
    priority = 1 + (weights.eyes - 1) * eyes + (weights.mouth - 1) * mouth
    return weights.background + (priority - weights.background) * mask


def image_loss(rgb, target, mask, eyes, mouth, weights: LossWeights):
    """The weighted SSIM and L1 of a batch of drawn faces against their targets, a scalar (the enhancer's loss)."""
    rgb = rgb.float()
    w = pixel_weights(mask, eyes, mouth, weights)
    total_weight = w.sum().clamp_min(1e-6)
    dssim = (w * (1 - ssim_map(rgb, target)) / 2).sum() / total_weight
    l1 = (w * (rgb - target).abs().mean(1, keepdim=True)).sum() / total_weight
    return weights.ssim * dssim + weights.l1 * l1


def face_loss(rgb, mask_logits, target, mask, eyes, mouth, weights: LossWeights):
    """The weighted loss of one person's batch, a scalar: image_loss and the predicted mask's."""
    mask_bce = F.binary_cross_entropy_with_logits(mask_logits.float(), mask)
    return image_loss(rgb, target, mask, eyes, mouth, weights) + weights.mask * mask_bce


def patch_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of a discriminator's per-patch `values` (N x 1 x h x w), each weighted by the share of its patch
    that the face `mask` (N x 1 x H x W) covers: patches of background count for nothing."""
    weights = F.adaptive_avg_pool2d(mask.float(), values.shape[-2:])
    return (weights * values).sum() / weights.sum().clamp_min(1e-6)


def generator_loss(fake_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN: the model's faces should score 1 (real) inside the mask."""
    return patch_mean((fake_logits.float() - 1) ** 2, mask)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN: the discriminator should score real faces 1 and the model's 0, inside the mask."""
    return patch_mean((real_logits.float() - 1) ** 2, mask) + patch_mean(fake_logits.float() ** 2, mask)
