"""Which torch device a stage runs on, and the CUDA settings that make it fast."""

from .events import EngineError


def pick_device(name: str = "auto"):
    """torch.device for "auto" (CUDA when present), "cuda" (an error without it) or "cpu"."""
    import torch

    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EngineError("--device cuda was asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda")
