"""Each verb's `done` event (the summary a run ends with) as a typed record, read in one place by the
keys the engine's summaries carry, so no operator reads an event by string keys; and why a training run
stopped, in the words the engine's schema gives each reason."""

from dataclasses import dataclass, fields

from .. import contract


def read(cls, summary: dict):
    """The record `cls` from a `done` event: each field from its key, its default where the key is
    absent or null (a stranger's engine, a run that saved no loss yet)."""
    values = {}
    for f in fields(cls):
        value = summary.get(f.name)
        if value is not None:
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
