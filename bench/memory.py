"""Training memory per preset, size and architecture, counted exactly without running anything: the model is
built on torch's "meta" device (shapes, no storage), and one training step's forward pass and loss
record every tensor that autograd saves for the backward pass.

    .venv/bin/python bench/memory.py                    # every preset, size and architecture
    .venv/bin/python bench/memory.py --presets quality --sizes 256 512

Columns: parameters; the fixed state (fp32 weights, gradients and Adam's two moments: 16 bytes a
parameter); and the activations saved per face per person (a batch of N costs 2 N times this, A and
B) in fp32 (the CPU) and bf16 (CUDA autocast, about half: its convolutions save bf16 inputs).
GPU memory for a batch is about fixed + 2 N x activations, plus the allocator's and cuDNN's workspace
(allow 10-20%).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.networks.losses import LossWeights, face_loss  # noqa: E402
from engine.networks.model import ARCHITECTURES, PRESETS, SIZES, FaceModel, make_config  # noqa: E402

GIB = 1 << 30


def saved_bytes(model: FaceModel, size: int, faces: int) -> int:
    """Bytes autograd saves in one training step of `faces` per person (fp32)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    x = torch.zeros(faces, 3, size, size, device="meta")
    mask = torch.zeros(faces, 1, size, size, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for (rgb, logits) in model(x, x):
            face_loss(rgb, logits, x, mask, mask, mask, LossWeights())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    args = parser.parse_args()
    print("| preset | size | architecture | parameters | weights+grads+Adam | activations per face (fp32) | "
          "GPU at its batch (bf16) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for preset in args.presets:
        for size in args.sizes:
            for architecture in args.architectures:
                config = make_config(preset, size=size, architecture=architecture)
                with torch.device("meta"):
                    model = FaceModel(config)
                parameters = sum(p.numel() for p in model.parameters())
                fixed = 16 * parameters
                per_face = saved_bytes(model, size, 2) / 4  # two faces of each person: per face per person
                batch_gpu = fixed + 2 * config.batch * per_face / 2
                print(f"| {preset} | {size} | {architecture} | {parameters / 1e6:.1f} M | {fixed / GIB:.2f} GiB | "
                      f"{per_face / (1 << 20):.1f} MiB | {batch_gpu / GIB:.1f} GiB at batch {config.batch} |")


if __name__ == "__main__":
    main()
