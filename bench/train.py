"""Training speed: images per second for each preset and resolution, on the CPU and on CUDA when present,
and our 64-px model against an exact re-implementation of the book's reference model on the same data.

    .venv/bin/python bench/train.py                   # every preset and size, a few seconds each
    .venv/bin/python bench/train.py --seconds 2 --presets tiny fast --sizes 64
    .venv/bin/python bench/train.py --sizes 128 256 --compile --json train.json   # as bench/gpu_check.sh

An image is one face through a full training step (augmentation, forward, loss, backward, Adam), so a
step of batch 8 per person is 16 images. The data are the sample shots' faces, extracted at 256 px,
loaded and augmented exactly as training does. "decode" is the loader reading faces from their PNGs
(one process), "cached" the same from the in-memory copy that training makes when the faces fit. On CUDA it also prints the model's FLOPs per image
(forward and backward, counted by torch) and the share of the GPU's bf16 peak that reached. "warm-up s"
is the first steps before timing, which with --compile holds the compile time.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo import samples  # noqa: E402
from engine.base import media  # noqa: E402
from engine.base.device import pick_device  # noqa: E402
from engine.folders.faceset import Faceset  # noqa: E402
from engine.networks.augment import Augmentation, FaceBatches  # noqa: E402
from engine.networks.losses import LossWeights, face_loss  # noqa: E402
from engine.networks.model import PRESETS, SIZES, FaceModel, make_config  # noqa: E402
from engine.stages.extract import extract  # noqa: E402
from engine.stages.train import train_step  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets, by a piece of the device name.
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "4090": 165e12, "3090": 71e12}


class BookReference(nn.Module):
    """The book's 64-px model: 4 stride-2 5x5 convs (128..1024), dense 1024, dense 4x4x1024, a pixel-shuffle
    upscale to 512 in the encoder; decoders of three pixel-shuffle upscales (256, 128, 64) and a 5x5 conv
    to RGB with a sigmoid. Trained with plain Adam (lr 5e-5, betas 0.5, 0.999) on MSE."""

    def __init__(self):
        super().__init__()

        def down(a, b):
            return nn.Sequential(nn.Conv2d(a, b, 5, stride=2, padding=2), nn.LeakyReLU(0.1))

        def up(a, b):
            return nn.Sequential(nn.Conv2d(a, b * 4, 3, padding=1), nn.LeakyReLU(0.1), nn.PixelShuffle(2))

        self.encoder = nn.Sequential(down(3, 128), down(128, 256), down(256, 512), down(512, 1024), nn.Flatten(),
                                     nn.Linear(4 * 4 * 1024, 1024), nn.Linear(1024, 4 * 4 * 1024),
                                     nn.Unflatten(1, (1024, 4, 4)), up(1024, 512))
        self.decoders = nn.ModuleList(
            nn.Sequential(up(512, 256), up(256, 128), up(128, 64), nn.Conv2d(64, 3, 5, padding=2), nn.Sigmoid())
            for _ in range(2))

    def forward(self, faces_a, faces_b):
        features = self.encoder(torch.cat([faces_a, faces_b]))
        features_a, features_b = features.split([len(faces_a), len(faces_b)])
        return self.decoders[0](features_a), self.decoders[1](features_b)


def make_facesets(folder: Path) -> dict[str, Path]:
    """The sample facesets A and B (256 px, dlib) in `folder`; ones already complete there are kept."""
    out = {}
    for k, photo, scale in (("a", "astronaut", 1.0), ("b", "grace_hopper", 0.7)):
        out[k] = folder / f"faceset_{k}"
        if not (out[k] / "alignments.json").is_file():
            frames, _ = samples.make_clip(photo, 24, (640, 480), scale=scale)
            extract(samples.write_sequence(folder / f"shot_{k}", frames), out[k], detector="dlib", size=256)
    return out


def timed(step, seconds: float, device) -> tuple[float, float]:
    """(seconds per step, warm-up seconds): two warm-up steps (one on the CPU, where it is only the first
    allocation), then as many as fit in `seconds`, at least two."""
    started = time.perf_counter()
    for _ in range(2 if device.type == "cuda" else 1):
        step()
    sync(device)
    warm_up = time.perf_counter() - started
    count, started = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - started < seconds:
        step()
        count += 1
        if count % 5 == 0:
            sync(device)
    sync(device)
    return (time.perf_counter() - started) / count, warm_up


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_step(model, optimizer, batch_source, device, loss_fn, compile_model=None):
    """engine.stages.train's own step (train_step) on the next batch of `batch_source`."""
    forward = model if compile_model is None else compile_model  # a compiled module has no truth value

    def step():
        train_step(forward, optimizer, batch_source(), device, loss_fn)

    return step


def flops_per_image(step, images: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--compile", action="store_true", help="time the torch.compile'd model instead")
    parser.add_argument("--no-reference", action="store_true", help="skip the book's reference model at 64 px")
    parser.add_argument("--facesets", type=Path, help="make (or reuse) the sample facesets in this folder")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every figure to this JSON file")
    args = parser.parse_args()
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = next((v for k, v in GPU_PEAKS.items() if k in name), None) if device.type == "cuda" else None
    print(f"device: {name}; torch {torch.__version__}")

    report = {"device": name, "torch": torch.__version__, "compile": args.compile, "rows": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        facesets = {k: Faceset(p) for k, p in make_facesets(args.facesets or Path(tmp)).items()}
        faces = {k: f.samples() for k, f in facesets.items()}
        weights = LossWeights()

        def ours_loss(out, target):
            return face_loss(*out, *target, weights)

        header = (f"{'preset':8} {'size':>4} {'batch':>5} {'params':>8} {'decode img/s':>12} {'cached img/s':>12} "
                  f"{'train img/s':>11} {'warm-up s':>9}")
        print(header + ("   GFLOP/img  % of peak" if device.type == "cuda" else ""))
        ours_at_64 = {}
        for preset in args.presets:
            for size in args.sizes:
                config = make_config(preset, size)
                batches = FaceBatches(faces, 256, size, config.batch, Augmentation())
                started = time.perf_counter()
                fixed = [batches[i] for i in range(4)]
                decode_rate = len(fixed) * 2 * config.batch / (time.perf_counter() - started)
                batches.preload(2 << 30)
                started = time.perf_counter()
                cached = [batches[i] for i in range(20)]
                cached_rate = len(cached) * 2 * config.batch / (time.perf_counter() - started)
                counter = iter(range(10**9))

                def next_batch(fixed=fixed, counter=counter):
                    return fixed[next(counter) % len(fixed)]

                torch.manual_seed(0)
                model = FaceModel(config).to(device)
                if device.type == "cuda":
                    model = model.to(memory_format=torch.channels_last)
                optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.5, 0.999),
                                             fused=device.type == "cuda")
                images = 2 * config.batch
                compiled = torch.compile(model) if args.compile else None
                step = training_step(model, optimizer, next_batch, device, ours_loss, compiled)
                try:
                    seconds, warm_up = timed(step, args.seconds, device)
                except torch.OutOfMemoryError:
                    print(f"{preset:8} {size:>4} {config.batch:>5}  out of GPU memory")
                    report["rows"].append({"preset": preset, "size": size, "batch": config.batch,
                                           "error": "out of GPU memory"})
                    continue
                rate = images / seconds
                params = sum(p.numel() for p in model.parameters())
                row = {"preset": preset, "size": size, "batch": config.batch, "params": params,
                       "decode_img_s": round(decode_rate, 1), "cached_img_s": round(cached_rate, 1),
                       "train_img_s": round(rate, 2), "warm_up_s": round(warm_up, 2)}
                line = (f"{preset:8} {size:>4} {config.batch:>5} {params / 1e6:7.1f}M {decode_rate:12.0f} "
                        f"{cached_rate:12.0f} {rate:11.1f} {warm_up:9.1f}")
                if device.type == "cuda":
                    flops = flops_per_image(training_step(model, optimizer, next_batch, device, ours_loss), images)
                    share = f"{100 * flops * rate / peak:9.1f}%" if peak else "   (peak unknown)"
                    line += f"   {flops / 1e9:9.2f} {share}"
                    row.update(gflop_per_img=round(flops / 1e9, 3),
                               peak_share=round(flops * rate / peak, 4) if peak else None)
                report["rows"].append(row)
                print(line, flush=True)
                if size == 64 and not args.no_reference:
                    ours_at_64[preset] = (rate, next_batch)
                del model, optimizer, step, compiled
                if device.type == "cuda":
                    torch.cuda.empty_cache()

        # The reference on the same data: each preset's own augmented 64-px batches, at its batch size.
        reference_rates = {}
        for preset, (ours, next_batch) in ours_at_64.items():
            batch = next_batch()["a"]["faces"].shape[0]
            if batch not in reference_rates:
                torch.manual_seed(0)
                reference = BookReference().to(device)
                if device.type == "cuda":
                    reference = reference.to(memory_format=torch.channels_last)
                optimizer = torch.optim.Adam(reference.parameters(), lr=5e-5, betas=(0.5, 0.999))
                step = training_step(reference, optimizer, next_batch, device,
                                     lambda out, target: F.mse_loss(out.float(), target[0]))
                reference_rates[batch] = 2 * batch / timed(step, args.seconds, device)[0]
                params = sum(p.numel() for p in reference.parameters())
                print(f"book reference, 64 px, batch {batch}: {params / 1e6:.1f}M params, "
                      f"{reference_rates[batch]:.1f} img/s")
            print(f"  {preset:8} 64 px, batch {batch}: ours / reference = {ours / reference_rates[batch]:.2f}")
            report["reference"].append({"preset": preset, "batch": batch, "ours_img_s": round(ours, 2),
                                        "reference_img_s": round(reference_rates[batch], 2)})
    if args.json:
        media.write_json(args.json, report)


if __name__ == "__main__":
    main()
