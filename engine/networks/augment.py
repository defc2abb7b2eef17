"""Training data: faces read from the facesets, and the augmentation that makes a few hundred of them
teach a model to draw any pose and light.

Work is split where it runs best. The CPU decodes the faceset's PNGs, resizes them to the model's size
and draws the eye and mouth regions from the landmarks (once, into memory, when the faces fit; else in
the loader workers for every batch), and draws every random number of a batch. The device then does the
resampling and colour work on the whole batch at once:
- a small random rotation, zoom, shift and a horizontal flip, applied to input and target alike;
- faceswap's random warp: the input alone is resampled through a smooth random grid, the target is not,
  so the model must learn a face, not a copy of its input;
- a Lab lightness and a/b shift, applied to input and target alike.

Batch i's faces and random numbers come from a generator seeded by (seed, i, rank), so a run gives the
same batches however many workers load them and however often it stops and resumes.

Owned by no stage: train and enhance take their face batches from here, and mask train (engine.stages.occlusion)
the augmentation alone (Augmentation, sample_params, shift_lab) for its faces and label mattes.
"""

import itertools
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from ..base.color import lab_to_rgb, rgb_to_lab
from ..base.events import EngineError
from ..base.options import setting
from ..faces import masks
from ..folders.faceset import FaceSample, read_face_image

# The random warp's control points: a 5 x 5 grid, as faceswap uses, smoothly interpolated to every pixel.
WARP_GRID = 5
# Channels of a loaded face: RGB, the face mask, the eye region, the mouth region.
CHANNELS = 6
LOADER_PREFETCH = 4  # batches each loader process makes ahead


@dataclass
class Augmentation:
    rotation: float = setting(10.0, "random rotation, degrees either way", low=0, high=180, unit="degrees",
                              metavar="X")
    zoom: float = setting(0.05, "random zoom, a share of the size either way", low=0, high=1, metavar="X")
    shift: float = setting(0.05, "random shift, a share of the size either way", low=0, high=1, metavar="X")
    flip: float = setting(0.5, "chance of a mirror image", low=0, high=1, metavar="X")
    warp: float = setting(0.02, "random warp of the input: displacement (standard deviation) of a 5x5 grid, a "
                                "share of the size", low=0, high=1, metavar="X")
    lightness: float = setting(0.3, "Lab colour augmentation: L moves up to this share of the way to white or "
                                    "black", low=0, high=1, metavar="X")
    color_ab: float = setting(0.08, "Lab colour augmentation: a and b move up to this share of the way to their "
                                    "extremes", low=0, high=1, metavar="X")


# ---------------------------------------------------------------- on the CPU


def load_face(sample: FaceSample, face_size: int, size: int, mask: str = "extended") -> np.ndarray:
    """One faceset face at the model's size: uint8 size x size x 6 (RGB, mask, eyes, mouth)."""
    rgb = read_face_image(sample.image, face_size)
    face_mask = read_face_image(sample.mask_extended if mask == "extended" else sample.mask_hull, face_size, grey=True)
    if sample.mask_learned is not None and sample.mask_learned.is_file():  # an occluder is no face to learn
        face_mask = np.minimum(face_mask, read_face_image(sample.mask_learned, face_size, grey=True))
    regions = [masks.eyes_mask(sample.landmarks, face_size), masks.mouth_mask(sample.landmarks, face_size)]
    stack = np.dstack([rgb, face_mask] +
                      [np.round(r * 255).astype(np.uint8) for r in regions])
    if face_size != size:
        interpolation = cv2.INTER_AREA if face_size > size else cv2.INTER_CUBIC
        # in threes: OpenCV resizes at most 4 channels at a time at non-integer scales
        stack = np.dstack([cv2.resize(stack[..., i : i + 3], (size, size), interpolation=interpolation)
                           for i in (0, 3)])
    return stack


def sample_params(rng: np.random.Generator, n: int, augmentation: Augmentation) -> dict[str, np.ndarray]:
    """The random numbers of `n` faces: an affine `theta` (n x 2 x 3, in affine_grid's convention),
    warp offsets (n x 2 x 5 x 5, in grid units) and Lab shifts (n x 3)."""
    a = augmentation
    angle = np.radians(rng.uniform(-a.rotation, a.rotation, n))
    scale = 1.0 + rng.uniform(-a.zoom, a.zoom, n)
    shift = rng.uniform(-a.shift, a.shift, (n, 2)) * 2.0  # grid coordinates span 2
    mirror = np.where(rng.random(n) < a.flip, -1.0, 1.0)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack([np.stack([cos * mirror, -sin, shift[:, 0]], 1),
                      np.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)
    warp = rng.normal(0.0, a.warp * 2.0, (n, 2, WARP_GRID, WARP_GRID))
    lab = rng.uniform(-1.0, 1.0, (n, 3)) * np.array([a.lightness, a.color_ab, a.color_ab])
    return {"theta": theta.astype(np.float32), "warp": warp.astype(np.float32), "lab": lab.astype(np.float32)}


def unaugmented_params(n: int) -> dict[str, np.ndarray]:
    """No augmentation: for validation and previews."""
    return sample_params(np.random.default_rng(0), n, Augmentation(0, 0, 0, 0, 0, 0, 0))


class FaceBatches(torch.utils.data.Dataset):
    """Item i is iteration i's batch for both people (A and B): {"a": batch, "b": batch}, each a dict of the
    loaded faces (uint8 tensor n x size x size x 6) and their augmentation parameters."""

    def __init__(self, samples: dict[str, list[FaceSample]], face_size: int, size: int, batch: int,
                 augmentation: Augmentation, mask: str = "extended", seed: int = 0, rank: int = 0,
                 weights: dict[str, np.ndarray] | None = None):
        self.samples, self.face_size, self.size, self.batch = samples, face_size, size, batch
        self.augmentation, self.mask, self.seed, self.rank = augmentation, mask, seed, rank
        self.weights = weights or {}  # person -> each face's chance of a pick; absent: every face alike
        self.cache = None  # person -> every face already loaded, once `preload` has run

    def __getitem__(self, iteration: int) -> dict:
        rng = np.random.default_rng([self.seed, iteration, self.rank])
        out = {}
        for person, samples in self.samples.items():
            picks = rng.choice(len(samples), self.batch, replace=len(samples) < self.batch, p=self.weights.get(person))
            faces = self.cache[person][picks] if self.cache else self.load([samples[i] for i in picks])
            out[person] = {"faces": torch.from_numpy(faces)} | _tensors(
                sample_params(rng, self.batch, self.augmentation))
        return out

    def load(self, samples: list[FaceSample]) -> np.ndarray:
        return np.stack([load_face(s, self.face_size, self.size, self.mask) for s in samples])

    def preload(self, budget: int) -> bool:
        """Decode every face once into memory when they fit in `budget` bytes, so a batch is a copy rather
        than PNG decoding: it is what keeps a GPU fed. Threads share the work (OpenCV releases the GIL)."""
        count = sum(map(len, self.samples.values()))
        if count * self.size * self.size * CHANNELS > budget:
            return False
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            self.cache = {k: np.stack(list(pool.map(lambda s: load_face(s, self.face_size, self.size, self.mask),
                                                    samples)))
                          for k, samples in self.samples.items()}
        return True

    def fixed(self, samples: list[FaceSample]) -> dict:
        """A batch of `samples` as they are, with no augmentation."""
        return {"faces": torch.from_numpy(self.load(samples))} | _tensors(unaugmented_params(len(samples)))


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def memory_budget() -> int:
    """Bytes the faces may take in memory: a quarter of the machine's RAM (2 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (AttributeError, ValueError, OSError):
        return 2 << 30


def batch_loader(batches: FaceBatches, start: int, iterations: int | None, workers: int | None, device,
                 world: int = 1) -> torch.utils.data.DataLoader:
    """The batches of the iterations after `start` (up to `iterations`), made by `workers` processes
    (default: none on the CPU, up to 8 on CUDA)."""
    if workers is None:
        workers = min(8, (os.cpu_count() or 2) // max(world, 1) - 1) if device.type == "cuda" else 0
    workers = max(workers, 0)
    _check_batch_memory(batches, workers * LOADER_PREFETCH + 1)
    return torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
        sampler=range(start + 1, iterations + 1) if iterations is not None else itertools.count(start + 1),
        worker_init_fn=worker_init, prefetch_factor=LOADER_PREFETCH if workers > 0 else None,
    )


def _check_batch_memory(batches: FaceBatches, in_flight: int) -> None:
    """Refuse a batch whose loaded faces, times the batches the loader keeps in flight, would not fit in half
    the machine's memory: the loader's processes would be killed for it (on a GPU with room to spare, host
    memory runs out first) rather than say anything."""
    item = len(batches.samples) * batches.batch * batches.size * batches.size * CHANNELS
    if item * in_flight > 2 * memory_budget():
        raise EngineError(f"a batch of {batches.batch} faces at {batches.size} px takes {item / 2**30:.1f} GiB of "
                          f"memory, {in_flight} of them in flight: more than half this machine's memory; "
                          "lower --batch or --size")


def worker_init(_worker_id: int) -> None:
    cv2.setNumThreads(1)  # each worker is one process; OpenCV's own threads would only contend
    # Ctrl+C (and Windows' CTRL_BREAK) reaches the whole process group: the trainer saves and stops, and
    # its workers must live until it has (it ends them itself).
    for stop in (signal.SIGINT, getattr(signal, "SIGBREAK", None)):
        if stop is not None:
            signal.signal(stop, signal.SIG_IGN)


# ---------------------------------------------------------------- on the device, batched


def augment(batch: dict, device, train: bool = True):
    """(inputs, targets, masks, eyes, mouths), float32 NCHW on `device`. The inputs are warped when
    `train`; everything else is only moved, flipped and recoloured."""
    faces = batch["faces"].to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
    theta = batch["theta"].to(device, non_blocking=True)
    n, _, size, _ = faces.shape
    grid = F.affine_grid(theta, [n, CHANNELS, size, size], align_corners=False)
    target = F.grid_sample(faces, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if train:
        offsets = F.interpolate(batch["warp"].to(device, non_blocking=True), size=(size, size), mode="bicubic",
                                align_corners=True)
        inputs = F.grid_sample(faces[:, :3], grid + offsets.permute(0, 2, 3, 1), mode="bilinear",
                               padding_mode="reflection", align_corners=False)
    else:
        inputs = target[:, :3]
    lab = batch["lab"].to(device, non_blocking=True)
    rgb = shift_lab(torch.cat([inputs, target[:, :3]]), torch.cat([lab, lab]))
    inputs, target_rgb = rgb.split(n)
    return inputs, target_rgb, target[:, 3:4], target[:, 4:5], target[:, 5:6]


# ---------------------------------------------------------------- Lab colour

# Lab's range, for faceswap-style shifts toward a channel's top or bottom.
_LAB_LOW = torch.tensor([0.0, -128.0, -128.0])
_LAB_HIGH = torch.tensor([100.0, 127.0, 127.0])


def shift_lab(rgb: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
    """Move each image's L, a and b by `amounts` (n x 3): a positive amount moves a channel that share of
    the way to its top, a negative one that share of the way to its bottom (faceswap's Lab jitter)."""
    lab = rgb_to_lab(rgb)
    amounts = amounts.view(-1, 3, 1, 1)
    low, high = _LAB_LOW.to(lab).view(1, 3, 1, 1), _LAB_HIGH.to(lab).view(1, 3, 1, 1)
    lab = lab + torch.where(amounts >= 0, (high - lab) * amounts, (lab - low) * amounts)
    return lab_to_rgb(lab).clamp(0, 1)
