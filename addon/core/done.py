"""Each verb's `done` event (the summary a run ends with) as a typed record, read in one place by the
keys the engine's summaries carry, so no operator reads an event by string keys; and why a training run
stopped, in the words the engine's schema gives each reason."""

from dataclasses import MISSING, dataclass, field, fields

from .. import contract


def read(cls, summary: dict):
    """The record `cls` from a `done` event: each field from its key, its default where the key is
    absent or null (a stranger's engine, a run that saved no loss yet). A value of another type than the
    field's is a TypeError naming it: the step then fails with the reason, never writes it to the scene."""
    values = {}
    for f in fields(cls):
        value = summary.get(f.name)
        if value is None:
            continue
        kind = type(f.default if f.default is not MISSING else f.default_factory())
        if kind is float and type(value) is int or kind is tuple and isinstance(value, list):
            value = kind(value)
        if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
            raise TypeError(f"{f.name} is {value!r}, not {kind.__name__}")
        values[f.name] = value
    return cls(**values)


def stop_words(reason: str | None) -> str:
    """" (reached its iterations)" for a run that stopped for `reason`; "" when none is given."""
    if not reason:
        return ""
    return f" ({contract.SCHEMA.get('stop_reasons', {}).get(reason, reason)})"


@dataclass(frozen=True)
class ExtractDone:
    frames: int = 0
    frames_with_faces: int = 0
    frames_without_faces: tuple[int, ...] = ()  # the shot's frame numbers


@dataclass(frozen=True)
class TrainDone:
    iterations: int = 0
    loss_a: float = 0.0
    loss_b: float = 0.0
    stopped: str = ""
    preview: str = ""  # the preview grid's file


@dataclass(frozen=True)
class EnhanceDone:
    iterations: int = 0
    loss: float = 0.0
    stopped: str = ""


@dataclass(frozen=True)
class ConvertDone:
    frames: int = 0
    frames_with_faces: int = 0


@dataclass(frozen=True)
class MaskTrainDone:
    iterations: int = 0
    labelled_iou: float = 0.0


@dataclass(frozen=True)
class MaskApplyDone:
    faces: int = 0
    written: int = 0


@dataclass(frozen=True)
class InfoDone:
    """`engine info`: versions, the GPUs torch sees and (with --events) the engine's schema."""

    engine: str = ""
    python: str = ""
    torch: str = ""
    cuda: bool = False  # also true on ROCm builds
    cuda_version: str = ""
    hip_version: str = ""
    mps: bool = False
    gpus: tuple[str, ...] = ()
    schema: dict = field(default_factory=dict)

    def describe(self) -> str:
        """Check Engine's findings in one line: versions, and the GPUs torch sees (or that it sees none)."""
        if self.cuda:
            kind = f"ROCm {self.hip_version}" if self.hip_version else f"CUDA {self.cuda_version}"
            gpu = f"{kind}: {', '.join(self.gpus)}"
        elif self.mps:
            gpu = "Apple MPS GPU"
        else:
            gpu = "no GPU: CPU only"
        return f"Engine {self.engine}, Python {self.python}, torch {self.torch}, {gpu}"


@dataclass(frozen=True)
class WeightsDone:
    folder: str = ""  # where the detector's weights are
