"""What the panels show, as plain text and values: the Blender modules only lay these out."""

from pathlib import Path

LABELLED_SHOWN = 8  # how many labelled frames the Masks panel names


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def training_into(running_into: Path | None, model: Path | None) -> str:
    """The name of the model folder a running train writes when it is not the scene's `model` (New Model,
    a farm task): the panel then shows none of the scene's figures; "" while it is the scene's or none runs."""
    if running_into is None or (model is not None and model == running_into):
        return ""
    return running_into.name


def train_figures(live: dict, shown: dict) -> list[str]:
    """The Train panel's figures: the running train's `live` ones over the model's `shown` ones
    (iteration, loss_a, loss_b)."""
    loss_a, loss_b = live.get("loss_a", shown["loss_a"]), live.get("loss_b", shown["loss_b"])
    lines = [f"Iterations: {live.get('iteration', shown['iteration'])}", f"Loss A {loss_a or 0:.4f}   B {loss_b or 0:.4f}"]
    if live.get("val_loss_a") is not None:
        lines.append(f"Validation A {live['val_loss_a']:.4f}   B {live.get('val_loss_b') or 0:.4f}")
    if live:
        lines.append(f"{live.get('it_per_s') or 0:.2f} it/s, ETA {format_seconds(live.get('eta_s') or 0)}")
    return lines


def mask_figures(live: dict, iteration: int, labelled_iou: float, applied: int) -> list[str]:
    """The Masks panel's figures: the running mask train's `live` ones, else the mask model's."""
    lines = [f"Iterations: {live.get('iteration', iteration)}"]
    if isinstance(live.get("loss"), float):
        lines.append(f"Loss {live['loss']:.4f}")
    elif iteration:
        lines.append(f"IoU on the labels {labelled_iou:.3f}")
    if live:
        lines.append(f"{live.get('done', 0)}/{live.get('total', '?')}, ETA {format_seconds(live.get('eta_s') or 0)}")
    if applied:
        lines.append(f"Learned masks: {applied} faces")
    return lines


def labelled_line(labelled: list[str]) -> str:
    """"Labeled: 3 frames (12, 15, shot frame 4)": the label Masks of the shot, named up to LABELLED_SHOWN."""
    if not labelled:
        return "Labeled: 0 frames"
    more = "..." if len(labelled) > LABELLED_SHOWN else ""
    return f"Labeled: {len(labelled)} frames ({', '.join(labelled[:LABELLED_SHOWN])}{more})"


def extract_header(side: str, extracted: bool, frames_with_faces: int, frames: int) -> str:
    return f"{side}: " + (f"faces in {frames_with_faces} of {frames} frames" if extracted else "not extracted")
