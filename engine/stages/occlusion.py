"""Occlusion mattes learned from a few labelled frames: a small U-Net (in the spirit of DeepFaceLab's
XSeg) that tells the visible face from what covers it (a hand, a microphone, hair) in aligned faces.

    python -m engine mask train --faceset FACESET --labels LABELS [--model DIR] [--iterations N] [--resume]
    python -m engine mask apply --faceset FACESET [--model DIR]

A label is an image the size of the shot's frames, named with the shot's frame number (mask_000012.png,
0012.png): white where the face shows, black where an occluder or the background is. Each is warped into
every face of its frame with the faceset's stored matrix, so the network learns in aligned space, from
the same crops extract made. Training draws every batch from (seed, iteration), warps, flips, rotates
and recolours it, stops at --iterations, on Ctrl+C or a `stop` file in the model folder, always saving
first, and `--resume` continues exactly. Apply writes FACESET/masks/learned/ (the faces' own names, 8-bit,
white = visible face) for every face, skipping those the same checkpoint already wrote; train then uses
them as its mask target and convert takes `--mask learned`.
"""

import argparse
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ..base import media
from ..base.checkpoints import (
    CHECKPOINTS,
    StopRequests,
    check_weights,
    checkpoint_paths,
    clear_stop,
    load_state,
    newest_loadable,
    stop_requests,
    write_checkpoint,
)
from ..base.device import DEVICES
from ..base.events import EngineError, Events
from ..base.frames import IMAGE_EXTENSIONS, frame_number
from ..base.options import add_fields, changes_from_args, check, number_in, setting
from ..folders.faceset import LEARNED_MASKS, MASK_MODEL, Faceset, read_face_image
from ..networks.augment import Augmentation, sample_params, shift_lab

FORMAT = "facereplace.occlusion"
VERSION = 1
MODEL_MARK = "mask_model"  # the PNG text key naming the checkpoint that drew a learned mask
# Stronger than the face model's: a segmenter taught by eight frames must see the occluder everywhere.
# Apply's matte is the network's probability with its contrast raised about 0.5 by this factor: below
# 0.375 nothing of the face, above 0.625 all of it, linear between. A sigmoid's 0.1 over a hand would
# still paint a tenth of the new face over it; a hard threshold would alias the edge.
MATTE_CONTRAST = 4.0
FACE_WEIGHT = 4.0  # how much more a pixel inside the face's extended mask counts in the loss
STRONG = Augmentation(rotation=20.0, zoom=0.15, shift=0.1, flip=0.5, warp=0.03, lightness=0.4, color_ab=0.2)


@dataclass
class MaskSettings:
    """How the segmenter is shaped and trained; stored in every checkpoint, so --resume and apply need no
    options. Its ranges hold a checkpoint too (a stranger's file): a width of 512 would take gigabytes
    before a weight is compared, a string size or NaN rate would crash. Fields with help are `mask train`'s
    options."""

    size: int = setting(64, "network resolution, a multiple of 16 (its matte is resized to the faceset's faces)",
                        low=32, high=512, metavar="PX", unit="px")
    width: int = field(default=8, metadata={"low": 4, "high": 64})  # channels of the first of 3 levels, each doubling
    batch: int = setting(8, "faces per iteration", low=1, high=1024, metavar="N")
    learning_rate: float = setting(2e-3, "Adam learning rate", low=0, high=1, above=True, metavar="X")
    seed: int = setting(0, "random seed", low=0, high=2**32 - 1, metavar="N")
    log_every: int = field(default=10, metadata={"low": 1, "high": 10**7})  # iterations per progress event
    save_every: int = field(default=200, metadata={"low": 1, "high": 10**7})  # per checkpoint (and always on stop)
    keep: int = field(default=2, metadata={"low": 1, "high": 1000})  # checkpoints kept
    augmentation: Augmentation = field(default_factory=lambda: STRONG)

    @classmethod
    def from_dict(cls, data: dict) -> "MaskSettings":
        """The settings a checkpoint stores, range-checked before any network is built from them."""
        return cls(**{**data, "augmentation": Augmentation(**data["augmentation"])}).check()

    def check(self) -> "MaskSettings":
        """Refuse values no run can use, whoever wrote them."""
        check(self, prefix="mask setting ")
        check(self.augmentation, prefix="mask augmentation ")
        if self.size % 16 or self.width % 4:
            raise EngineError(f"mask size {self.size} is not a multiple of 16, or width {self.width} of 4")
        return self


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    # The verb's own options, accepted after the action too (argparse gives each subparser its own).
    common.add_argument("--events", action="store_true", default=argparse.SUPPRESS, help="JSON lines on stdout")
    common.add_argument("--device", choices=DEVICES, default=argparse.SUPPRESS, help="where torch runs")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("--faceset", required=True, metavar="DIR", help="the faceset whose faces the mattes are for")
    common.add_argument("--model", metavar="DIR", help=f"the mask model folder (default FACESET/{MASK_MODEL})")
    train_parser = actions.add_parser("train", parents=[common], help="train the segmenter on labelled frames",
                                      description="train the segmenter on labelled frames")
    train_parser.add_argument("--labels", required=True, metavar="DIR",
                              help="frame-sized label images named by frame number: white = face, black = occluder or background")
    train_parser.add_argument("--iterations", type=number_in(1, 10**7, kind=int), default=600, metavar="N",
                              help="stop at this iteration, counted over resumes (600)")
    train_parser.add_argument("--resume", action="store_true", help="continue the model in --model where it stopped")
    add_fields(train_parser, MaskSettings, changes=True)
    actions.add_parser("apply", parents=[common], help="write masks/learned/ for every face of the faceset",
                       description="write masks/learned/ for every face of the faceset")


def run(args, events: Events) -> None:
    model = args.model or Path(args.faceset) / MASK_MODEL
    if args.action == "train":
        train(args.faceset, args.labels, model, iterations=args.iterations, resume=args.resume, device=args.device,
              events=events, **changes_from_args(MaskSettings, args))
    else:
        apply(args.faceset, model, device=args.device, events=events)


# ---------------------------------------------------------------- the network


def _segmenter(settings: MaskSettings):
    """A 4-level U-Net: two 3x3 convolutions per level, max-pool down, transposed convolution up, skip
    connections; one logit per pixel. Fully convolutional, so any multiple of 8 works as its size."""
    import torch
    from torch import nn

    def block(channels_in, channels_out):
        return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.GroupNorm(4, channels_out),
                             nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(channels_out, channels_out, 3, padding=1),
                             nn.GroupNorm(4, channels_out), nn.LeakyReLU(0.1, inplace=True))

    class UNet(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            widths = [width * 2**i for i in range(4)]
            self.down = nn.ModuleList(block(c_in, c_out) for c_in, c_out in zip([3, *widths[:-1]], widths, strict=True))
            self.up = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in reversed(widths[1:]))
            self.merge = nn.ModuleList(block(c, c // 2) for c in reversed(widths[1:]))
            self.out = nn.Conv2d(width, 1, 1)

        def forward(self, x):
            skips = []
            for i, level in enumerate(self.down):
                x = level(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
                x = merge(torch.cat([up(x), skip], 1))
            return self.out(x)

    return UNet(settings.width)


# ---------------------------------------------------------------- labels into aligned space


def read_labels(labels: str | Path, faceset: Faceset, warn) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The labelled faces: (faces uint8 n x S x S x 3, targets float32 n x S x S x 2, frame numbers) at the
    faceset's face size S: each label warped into each face of its frame with the stored matrix, beside
    the face's extended mask (where a mistake costs FACE_WEIGHT times more)."""
    folder = Path(labels)
    if not folder.is_dir():
        raise EngineError(f"labels folder not found: {folder}")
    alignments, size = faceset.alignments, faceset.face_size
    width, height = alignments.source_size
    # Files only: a FIFO among them would block the read for ever.
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                   and p.is_file())
    by_frame: dict = {}
    for path in files:
        by_frame.setdefault(frame_number(path.name), []).append(path)
    twice = next((paths for number, paths in by_frame.items() if number is not None and len(paths) > 1), None)
    if twice:
        raise EngineError(f"labels {twice[0].name} and {twice[1].name} in {folder} are both for frame "
                          f"{frame_number(twice[0].name)}: keep one")
    faces, mattes, numbers = [], [], []
    for path in files:
        number = frame_number(path.name)
        frame = alignments.frame(number) if number is not None else None
        if frame is None or not frame.faces:
            warn(f"label {path.name} is for frame {number}, which has no face in {faceset.folder}; it is not used")
            continue
        label = media.read_image(path)
        if label.shape[:2] != (height, width):
            raise EngineError(f"label {path} is {label.shape[1]}x{label.shape[0]}, not the shot's {width}x{height}")
        label = media.to_float(label[..., 0] if label.ndim == 3 else label)
        if not np.isfinite(label).all():
            raise EngineError(f"label {path} holds NaN or infinite values: a label is white (face) and black (not)")
        for face in frame.faces:
            image = media.inside(faceset.folder, face.image, f"{faceset.folder} frame {number} image")
            if not image.is_file():  # curate moved it aside
                continue
            faces.append(read_face_image(image, size))
            region = media.to_float(read_face_image(media.inside(faceset.folder, face.mask_extended,
                                                                 f"{faceset.folder} frame {number} mask"), size, grey=True))
            mattes.append(np.dstack([cv2.warpAffine(label, np.asarray(face.matrix, np.float64), (size, size),
                                                    flags=cv2.INTER_LINEAR, borderValue=0.0), region]))
            numbers.append(number)
    if not faces:
        raise EngineError(f"no label in {folder} is for a frame with a face in {faceset.folder} "
                          f"(name labels with the shot's frame numbers, e.g. mask_000012.png)")
    return np.stack(faces), np.stack(mattes).astype(np.float32), numbers


# ---------------------------------------------------------------- train


def _batch(images, mattes, params: dict, device):
    """The same random rotation, zoom, shift, flip and warp for faces and targets; colour on faces only."""
    import torch
    from torch.nn import functional as F

    n, _, size, _ = images.shape
    grid = F.affine_grid(torch.from_numpy(params["theta"]).to(device), [n, 4, size, size], align_corners=False)
    offsets = F.interpolate(torch.from_numpy(params["warp"]).to(device), size=(size, size), mode="bicubic",
                            align_corners=True)
    stack = F.grid_sample(torch.cat([images.float() / 255.0, mattes], 1), grid + offsets.permute(0, 2, 3, 1),
                          mode="bilinear", padding_mode="reflection", align_corners=False)
    return shift_lab(stack[:, :3], torch.from_numpy(params["lab"]).to(device)), stack[:, 3:]


def _loss(logits, targets):
    """Binary cross-entropy, FACE_WEIGHT times heavier inside the face's extended mask (where an occluder
    matters; outside, convert draws nothing anyway), plus soft Dice on the visible face."""
    import torch
    from torch.nn import functional as F

    target, region = targets[:, :1], targets[:, 1:]
    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum((1, 2, 3))
    dice = 1 - (2 * overlap + 1) / (probability.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target, weight=1 + FACE_WEIGHT * region) + dice.mean()


def _to_size(array: np.ndarray, size: int, interpolation) -> np.ndarray:
    return np.stack([cv2.resize(a, (size, size), interpolation=interpolation) for a in array])


@media.holds_folder_locks
def train(faceset: str | Path, labels: str | Path, model_dir: str | Path, iterations: int = 600, resume: bool = False,
          device: str = "auto", events: Events | None = None, **changes) -> dict:
    """Train (or continue) the segmenter in `model_dir` on the faces of `faceset` labelled in `labels`.
    `changes` set MaskSettings fields (None values are ignored). Returns the "done" summary. Stop asked
    for during start-up ends the run at once; in the loop it saves first (checkpoints.StopRequests)."""
    with stop_requests(Path(model_dir)) as requests:
        return _train_segmenter(faceset, labels, Path(model_dir), iterations, resume, device,
                                events or Events("mask"), requests, changes)


def _train_segmenter(faceset, labels, model_dir: Path, iterations: int, resume: bool, device: str, events: Events,
                     requests: StopRequests, changes: dict) -> dict:
    import torch

    from ..base.device import pick_device

    fs = Faceset(faceset)
    torch_device = pick_device(device)
    if resume:
        state, checkpoint, _ = _latest(model_dir, torch_device, events.warning)
        settings = MaskSettings.from_dict(state["settings"])
        start = int(state["iteration"])
    else:
        if checkpoint_paths(model_dir):
            raise EngineError(f"{model_dir} already holds a mask model: pass --resume to continue it, or choose a new folder")
        state, start, settings = None, 0, MaskSettings()
    settings = replace(settings, **{k: v for k, v in changes.items() if v is not None}).check()
    faces, mattes, numbers = read_labels(labels, fs, events.warning)
    media.check_writable(model_dir, [CHECKPOINTS])
    media.lock_folder(model_dir)
    media.sweep_temp_files(model_dir)

    images = torch.from_numpy(_to_size(faces, settings.size, cv2.INTER_AREA)).permute(0, 3, 1, 2).to(torch_device)
    targets = torch.from_numpy(_to_size(mattes, settings.size, cv2.INTER_AREA)).permute(0, 3, 1, 2).to(torch_device)
    torch.manual_seed(settings.seed)
    network = _segmenter(settings).to(torch_device)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    if state is not None:
        try:
            network.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            raise EngineError(f"the mask model in {model_dir} cannot be resumed: {type(e).__name__}: {e}") from None
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate
    events.start(faceset=str(fs.folder), model=str(model_dir), labelled_frames=len(set(numbers)), faces=len(numbers),
                 iteration=start, iterations=iterations, size=settings.size, device=str(torch_device))

    def save(iteration: int) -> Path:
        return write_checkpoint(model_dir, {
            "format": FORMAT, "version": VERSION, "iteration": iteration, "settings": asdict(settings),
            "labelled_frames": sorted(set(numbers)), "model": network.state_dict(), "optimizer": optimizer.state_dict(),
        }, settings.keep)

    iteration, loss_sum, window, stopped, checkpoint = start, 0.0, 0, "iterations", None
    began = window_start = time.monotonic()
    network.train()
    requests.training = True
    for iteration in range(start + 1, iterations + 1):
        rng = np.random.default_rng([settings.seed, iteration])
        picks = torch.from_numpy(rng.choice(len(numbers), settings.batch, replace=len(numbers) < settings.batch))
        x, y = _batch(images[picks.to(torch_device)], targets[picks.to(torch_device)],
                      sample_params(rng, settings.batch, settings.augmentation), torch_device)
        loss = _loss(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum, window = loss_sum + loss.item(), window + 1
        if not math.isfinite(loss_sum):
            raise EngineError(f"the mask loss stopped being a number at iteration {iteration}; "
                              f"a lower --learning-rate helps (nothing of this run was saved after the last checkpoint)")
        if reason := requests.reason or events.stop_reason():
            stopped = reason
        if iteration % settings.log_every == 0 or iteration == iterations or stopped != "iterations":
            it_per_s = window / max(time.monotonic() - window_start, 1e-9)
            events.progress(iteration, iterations, iteration=iteration, loss=loss_sum / window,
                            it_per_s=round(it_per_s, 3), eta_s=round((iterations - iteration) / it_per_s, 1))
            loss_sum, window, window_start = 0.0, 0, time.monotonic()
        if iteration % settings.save_every == 0 and iteration < iterations:
            checkpoint = save(iteration)
        if stopped != "iterations":
            break
    checkpoint = save(iteration) if iteration > start or not resume else checkpoint_paths(model_dir)[0]
    clear_stop(model_dir)
    network.eval()
    with torch.no_grad():
        iou = _iou(torch.sigmoid(network(images.float() / 255.0)) > 0.5, targets[:, :1] > 0.5)
    summary = {"iterations": iteration, "stopped": stopped, "checkpoint": str(checkpoint), "model": str(model_dir),
               "labelled_iou": round(iou, 4), "seconds": round(time.monotonic() - began, 1)}
    events.done(**summary)
    return summary


def _iou(predicted, truth) -> float:
    union = (predicted | truth).sum().item()
    return (predicted & truth).sum().item() / union if union else 1.0


def _latest(model_dir: Path, device, warn) -> tuple[dict, Path, str]:
    """The newest mask checkpoint that loads, skipping damaged ones with a warning: its state, path and
    the digest of the very bytes the state was read from."""
    import torch

    def parse(data: bytes) -> dict:
        state = load_state(data, device, FORMAT, VERSION, "mask model")
        if not (type(state.get("iteration")) is int and state["iteration"] >= 0):
            raise ValueError(f"its iteration {state.get('iteration')!r} is not a whole number")
        with torch.device("meta"):  # the shapes the settings build, allocating nothing
            expected = _segmenter(MaskSettings.from_dict(state["settings"]))
        check_weights(expected, state.get("model"))
        return state

    if not model_dir.is_dir() or not checkpoint_paths(model_dir):
        raise EngineError(f"no mask model in {model_dir} (run python -m engine mask train first)")
    return newest_loadable(model_dir, parse, warn, "mask checkpoint")


# ---------------------------------------------------------------- apply


@media.holds_folder_locks
def apply(faceset: str | Path, model_dir: str | Path, device: str = "auto", events: Events | None = None,
          batch: int = 16) -> dict:
    """Write FACESET/masks/learned/<face>.png for every face: the segmenter's matte at the faces' size.
    A mask the same checkpoint already wrote is kept, so a killed apply resumes."""
    import torch
    from torch.nn import functional as F

    from ..base.device import pick_device

    events = events or Events("mask")
    fs = Faceset(faceset)
    torch_device = pick_device(device)
    state, checkpoint, digest = _latest(Path(model_dir), torch_device, events.warning)
    settings = MaskSettings.from_dict(state["settings"])
    network = _segmenter(settings).to(torch_device)
    network.load_state_dict(state["model"])
    network.eval()
    mark = {MODEL_MARK: digest}
    media.check_writable(fs.folder, [LEARNED_MASKS])  # before the sweep below, which would follow a link
    media.lock_folder(fs.folder)
    media.sweep_temp_files(fs.folder / LEARNED_MASKS)
    samples = fs.samples()
    todo = [s for s in samples if not (s.mask_learned.is_file() and _marked(s.mask_learned, mark))]
    events.start(faceset=str(fs.folder), model=str(model_dir), faces=len(samples), todo=len(todo), device=str(torch_device))
    if len(todo) < len(samples):
        events.emit("resume", faces_done=len(samples) - len(todo))
    began = time.monotonic()
    with torch.no_grad():
        for first in range(0, len(todo), batch):
            chunk = todo[first : first + batch]
            faces = np.stack([read_face_image(s.image, fs.face_size) for s in chunk])
            x = torch.from_numpy(_to_size(faces, settings.size, cv2.INTER_AREA)).permute(0, 3, 1, 2).to(torch_device)
            logits = F.interpolate(network(x.float() / 255.0), size=(fs.face_size, fs.face_size), mode="bilinear",
                                   align_corners=False)
            mattes = torch.sigmoid(logits)[:, 0].sub(0.5).mul(MATTE_CONTRAST).add(0.5).clamp(0, 1)
            mattes = mattes.mul(255).round().byte().cpu().numpy()
            for sample, matte in zip(chunk, mattes, strict=True):
                media.write_bytes(sample.mask_learned, media.encode_png(matte, mark))
            done = first + len(chunk)
            events.progress(done, len(todo), faces=done, fps=round(done / max(time.monotonic() - began, 1e-9), 2))
    summary = {"faces": len(samples), "written": len(todo), "skipped": len(samples) - len(todo),
               "masks": str(fs.folder / LEARNED_MASKS), "checkpoint": str(checkpoint)}
    events.done(**summary)
    return summary


def _marked(path: Path, mark: dict) -> bool:
    try:
        return media.image_metadata(path).get(MODEL_MARK) == mark[MODEL_MARK]
    except Exception:  # a damaged PNG is rewritten
        return False
