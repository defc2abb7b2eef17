"""Cost of the adversarial phase (--gan-weight): seconds per training step, engine.stages.train's own train_step,
with and without the patch discriminator, on the same model and the same batches. The two are timed in
alternating rounds, so a machine whose load drifts weighs on both alike; the FLOPs of one step each
(counted by torch, forward and backward) give the cost on a machine that no other work disturbs.

    FACEREPLACE_THREADS=1 .venv/bin/python bench/adversarial.py                  # fast preset, 64 px, batch 16
    .venv/bin/python bench/adversarial.py --preset quality --size 128 --device cuda
"""

import argparse
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train import flops_per_image, make_facesets, timed  # noqa: E402
from engine.base.device import pick_device  # noqa: E402
from engine.folders.faceset import Faceset  # noqa: E402
from engine.networks.adversarial import make_adversary  # noqa: E402
from engine.networks.augment import Augmentation, FaceBatches  # noqa: E402
from engine.networks.losses import LossWeights  # noqa: E402
from engine.networks.model import PRESETS, SIZES, FaceModel, make_config  # noqa: E402
from engine.stages.train import pair_loss, train_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fast", choices=list(PRESETS))
    parser.add_argument("--size", type=int, default=64, choices=list(SIZES))
    parser.add_argument("--batch", type=int, help="faces per person per step (default: the preset's)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating timed rounds of each")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per round")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--facesets", type=Path, help="make (or reuse) the sample facesets in this folder")
    args = parser.parse_args()
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    config = make_config(args.preset, args.size, batch=args.batch)
    print(f"device: {name}; {args.preset} preset, {config.size} px, batch {config.batch} per person")

    with tempfile.TemporaryDirectory() as tmp:
        facesets = {k: Faceset(p) for k, p in make_facesets(args.facesets or Path(tmp)).items()}
        face_size = next(iter(facesets.values())).face_size
        batches = FaceBatches({k: f.samples() for k, f in facesets.items()}, face_size, config.size, config.batch,
                              Augmentation())
        batches.preload(2 << 30)
        fixed = [batches[i] for i in range(4)]
        torch.manual_seed(0)
        model = FaceModel(config).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))
        adversary = make_adversary(0.1, config.learning_rate, 0, device)
        loss = partial(pair_loss, weights=LossWeights())
        counter = iter(range(10**9))

        def step(with_adversary: bool) -> None:
            train_step(model, optimizer, fixed[next(counter) % len(fixed)], device, loss,
                       adversary=adversary if with_adversary else None)

        flops = {k: flops_per_image(partial(step, k), 2 * config.batch) for k in (False, True)}
        seconds = {False: [], True: []}
        for _ in range(args.rounds):
            for with_adversary in (False, True):
                seconds[with_adversary].append(timed(partial(step, with_adversary), args.seconds, device)[0])
    plain, adversarial = (statistics.median(seconds[k]) for k in (False, True))
    print(f"without the discriminator: {plain:.3f} s per step (rounds: {', '.join(f'{s:.3f}' for s in seconds[False])})")
    print(f"with it:                   {adversarial:.3f} s per step (rounds: {', '.join(f'{s:.3f}' for s in seconds[True])})")
    print(f"cost: +{100 * (adversarial / plain - 1):.0f}% per iteration (medians of {args.rounds} rounds)")
    print(f"GFLOP per image: {flops[False] / 1e9:.2f} without, {flops[True] / 1e9:.2f} with "
          f"(+{100 * (flops[True] / flops[False] - 1):.0f}%)")


if __name__ == "__main__":
    main()
