"""The adversarial phase (DeepFaceLab's "GAN power"): once the reconstruction has converged, a small patch
discriminator learns to tell the real faces from the model's redrawn ones, inside the face mask, and the
model learns to fool it too. The pixel losses settle for the mean of what a patch could look like (a blur);
the discriminator asks for a patch that looks real, which sharpens skin and fine detail.

It is least-squares GAN (Mao et al. 2017): bounded, smooth gradients, stable from a converged model.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .losses import discriminator_loss, generator_loss

WIDTH = 32  # channels of the first of the discriminator's strided convolutions (each next one doubles them)
DOWNSCALES = 3  # each logit judges a patch of about 40 px (of a 64 px face: the eyes, the mouth, a cheek)


class PatchDiscriminator(nn.Module):
    """Faces (N x 3 x H x W, in [0, 1]) -> one logit per patch of H/8 x W/8 patches: high for real-looking.
    No normalisation layers and no randomness in the forward pass, so a resumed run is exact."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        layers, channels = [], 3
        for i in range(DOWNSCALES):
            layers += [nn.Conv2d(channels, width << i, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels = width << i
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.layers(faces)


@dataclass
class Adversary:
    """The discriminator of a run, its optimiser and its weight in the face loss. `trained` is the module
    its own step runs: the discriminator, or its DistributedDataParallel wrapper under torchrun."""

    discriminator: PatchDiscriminator
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    weight: float

    def generator_loss(self, rgb: torch.Tensor, target: list) -> torch.Tensor:
        """The weighted term that asks the model's faces `rgb` to look real to the discriminator, inside the
        mask of augment's `target` (face, mask, eyes, mouth). The discriminator's weights are frozen for it:
        only the face model learns from this term."""
        mask = target[1]
        self.discriminator.requires_grad_(False)
        try:
            logits = self.discriminator(rgb.float() * mask)
        finally:
            self.discriminator.requires_grad_(True)
        return self.weight * generator_loss(logits, mask)

    def step(self, rgbs: list[torch.Tensor], targets: list[list]) -> torch.Tensor:
        """One update of the discriminator on the real faces of `targets` against the model's `rgbs` (each
        person's, detached), inside their masks, in one forward pass. Returns its loss, detached."""
        masks = torch.cat([t[1] for t in targets])
        real = torch.cat([t[0] for t in targets]) * masks
        fake = torch.cat([rgb.detach().float() for rgb in rgbs]) * masks
        real_logits, fake_logits = self.trained(torch.cat([real, fake])).chunk(2)
        loss = discriminator_loss(real_logits, fake_logits, masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict:
        return {"model": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}


def make_adversary(weight: float, learning_rate: float, seed: int, device, world: int = 1,
                   state: dict | None = None) -> Adversary:
    """An Adversary of `weight` on `device`: a discriminator initialised from `seed` without touching the
    global random state (so the face model's batches and augmentation go on as they would without it),
    or given `state` (Adversary.state_dict's) to resume. Under torchrun (`world` > 1) it is trained in
    DistributedDataParallel like the face model, so every process holds the same discriminator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        discriminator = PatchDiscriminator()
    discriminator = discriminator.to(device)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=learning_rate, betas=(0.5, 0.999))
    if state is not None:
        discriminator.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate  # a resume may change it, as it does the face model's
    trained = discriminator
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(
            discriminator, device_ids=[device.index] if device.type == "cuda" else None)
    return Adversary(discriminator, trained, optimizer, weight)
