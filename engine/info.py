"""`python -m engine info`: what the add-on's "Check engine" button shows, and (with --events) the
contract its menus are built from (engine.schema)."""

import platform

from . import __version__


def add_arguments(parser) -> None:
    pass


def run(args, events) -> None:
    import cv2
    import numpy
    import torch

    cuda = torch.cuda.is_available()
    summary = {
        "engine": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
        "cuda": cuda,  # also true on ROCm builds, whose GPUs torch reaches through torch.cuda
        "cuda_version": torch.version.cuda,
        "hip_version": getattr(torch.version, "hip", None),
        "mps": torch.backends.mps.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu_threads": torch.get_num_threads(),
    }
    if not args.events:
        for key, value in summary.items():
            print(f"{key}: {value}")
        events.done(**summary)
    else:
        from .schema import schema

        events.done(**summary, schema=schema())
