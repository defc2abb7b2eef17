"""Evaluate: measure a converted shot, frame by frame and in summary, the way face-swap papers do.

Each frame's face layer (LAYERS/face/face_%06d.png|exr, with the alpha its manifest names) is composited
over the shot's frame as convert composites its finished frames (engine.base.composite: premultiplied, in linear
light), so what is scored is what convert writes, and the result is compared with the original:

- identity: cosine similarity of the swapped face's 128-D embedding (dlib, at its re-detected
  landmarks) to A's (the medoid of A's embeddings) and to the original face's; ID retrieval is the share of frames
  whose swapped face is nearer (by cosine) to A than to the face it replaced; the same-person rate is
  the share within dlib's same-person distance (0.6) of A, which a blob that is nearer A than B by
  chance does not pass; gallery retrieval (with a gallery of other people's facesets) is the share of
  frames whose nearest identity among A, B and the gallery is A;
- detail: the fine detail (mean absolute high-pass: the grey image minus its 1.5 px Gaussian blur) of
  the inner face (brows to lips, where the layer is opaque) in the composite, over the original's in
  the same pixels: 1 for a swap as sharp as the plate, about 0.3 for a 64 px model on a 480 px shot;
  feature detail, the same over the eyes and the mouth only, where convert's --detail adds nothing of
  the plate's, so it tells a model that draws sharp eyes from plate texture laid around soft ones;
- expression and pose kept: mean distance between the 68 landmarks re-detected on the swapped face and
  on the original, over the inter-ocular distance (outer eye corners, as 300-W normalises), and the
  difference of their yaw and pitch; expression carried: the mouth's and the eyes' opening (inner lip
  and lid gaps over the inter-ocular distance) of the swapped face against the original's, as their
  correlation over the shot, their mean absolute difference and the gain (how far the swap opens for
  each unit the original does); expression covered: the share of frames
  whose mouth and eyes (as extract detected them) open no further than faceset A's faces do
  (engine.faces.expression), where a model of A can draw them at all, and the same-person rate over
  those frames alone;
- temporal stability: flicker, the mean frame-to-frame change (8-bit levels) of the aligned face
  region, beside the original's own change (their ratio is about 1 for a stable swap); landmark jitter,
  the frame-to-frame change of the swapped face's landmarks relative to the original's, over the
  inter-ocular distance, which motion of the head cancels out of;
- seam: the colour step (CIE76 delta E) across the mask's edge, from just inside the layer's opaque
  part to just outside it, averaged over sectors around the face, beside the same step in the original,
  and the excess: how far the swap's step is from the original's (0 when the face meets its
  surround as the original did; about 2 is just noticeable).

Writes OUTPUT/evaluation.json (settings, summary and per-frame values) and OUTPUT/evaluation.png (the
metrics over time); OUTPUT defaults to LAYERS/evaluate.
"""

import math
from pathlib import Path

import cv2
import numpy as np

from ..base import colorspace, media
from ..base.composite import layer_over_plate, straight
from ..base.events import EngineError, Events
from ..base.frames import frame_runs
from ..faces import align, identity, masks
from ..faces.detect import DETECTORS, make_detector, on_torch
from ..faces.expression import (
    LEFT_EYE_CORNER,
    RIGHT_EYE_CORNER,
    compare_expression_coverage,
    openings,
    uncovered,
)
from ..faces.pose import head_pose
from ..folders.faceset import ALIGNMENTS_FILE, Alignments, check_alignments, check_same_shot
from ..folders.output import layer_path, read_manifest

FORMAT = "facereplace.evaluation"
VERSION = 1
ANALYSIS_SIZE = 128  # aligned size at which flicker is measured, whatever the faceset's face size
OPAQUE, CLEAR = 0.95, 0.05  # alpha levels that bound the mask's edge for the seam measure
SECTORS = 16  # the seam is measured per sector around the face, so one colour does not hide another
MIN_SECTOR_PIXELS = 4
CROP_MARGIN = 0.4  # re-detection searches the face box grown by this share of its size on every side
MIN_OVERLAP = 0.3  # a re-detected face must overlap the stored box this much (IoU) to be the same face
DETAIL_SIGMA = 1.5  # the high-pass that detail measures: the image minus its Gaussian blur of this sigma (px)
INNER_FACE = np.arange(17, 68)  # brows, nose, eyes and lips: the face inside the jaw line, away from the mask edge
MIN_SPREAD = 1e-3  # an opening that varies less than this (share of eye distance) over the shot does not move


def add_arguments(parser) -> None:
    parser.add_argument("shot", help="B's shot: a video file or an image folder, as given to convert")
    parser.add_argument("--alignments", required=True, metavar="FILE", help="the shot's alignments.json (or its faceset folder)")
    parser.add_argument("--layers", required=True, metavar="DIR", help="convert's output folder (manifest.json, face/...)")
    parser.add_argument("--source", required=True, metavar="FACESET_A",
                        help="faceset A (the face put in): the identity the swap should carry")
    parser.add_argument("--output", "-o", metavar="DIR", help="where to write evaluation.json/png (default LAYERS/evaluate)")
    parser.add_argument("--frames", metavar="FIRST-LAST", help="evaluate only frames FIRST-LAST (inclusive, the shot's numbers)")
    parser.add_argument("--detector", default="dlib", choices=DETECTORS,
                        help="landmark re-detection backend (dlib runs offline)")
    parser.add_argument("--force", action="store_true",
                        help="use alignments whose shot signature does not match the shot")
    parser.add_argument("--gallery", nargs="+", default=[], metavar="FACESET",
                        help="facesets of other people: gallery retrieval is the share of frames whose swapped "
                             "face is nearest A among A, B and these")
    colorspace.add_arguments(parser)


def run(args, events: Events) -> None:
    evaluate(args.shot, args.alignments, args.layers, args.source, output=args.output, frames=args.frames,
             detector=args.detector, device=args.device, gallery=args.gallery, events=events, force=args.force,
             plate_colorspace=args.colorspace, ocio_config=args.ocio_config)


# ---------------------------------------------------------------- inputs and their checks


def _check_layers_match(manifest: dict, source: media.FrameSource, layers: Path, events: Events) -> None:
    """The layers must come from this shot: same frame size, same frame numbers, and the same source."""
    size = tuple(manifest.get("source_size") or ())
    if size and size != tuple(source.size):
        raise EngineError(f"layers in {layers} were made from a {size[0]}x{size[1]} shot but {source.path} "
                          f"is {source.size[0]}x{source.size[1]}: they belong to another shot")
    numbers = manifest.get("frame_numbers")
    if numbers is not None and list(numbers) != list(source.numbers):
        raise EngineError(f"layers in {layers} were made from a shot of frames {numbers[0]}-{numbers[-1]} "
                          f"({len(numbers)}) but {source.path} has frames {source.numbers[0]}-{source.numbers[-1]} "
                          f"({len(source.numbers)}): they belong to another shot")
    _check_made_from(manifest.get("source", ""), source, f"layers in {layers}", events)


def _check_made_from(recorded: str, source: media.FrameSource, what: str, events: Events) -> None:
    """Same size and frame count do not make the same shot, so the recorded source must be this one. A
    shot moved to another folder keeps its name: that is only a warning."""
    made_from, here = Path(recorded), source.path.resolve()
    if made_from != here:
        if made_from.name != here.name:
            raise EngineError(f"{what} were made from {made_from}, not from {here}")
        events.warning(f"{what} were made from {made_from}; evaluating them against {here}")


def faceset_faces(faceset: str | Path) -> list:
    """A faceset's faces (folder or alignments.json) that curate has not moved aside."""
    folder = Path(faceset)
    alignments = Alignments.load(folder / ALIGNMENTS_FILE if folder.is_dir() else folder)
    base = folder if folder.is_dir() else folder.parent
    return [f for n, f in alignments.faces() if media.inside(base, f.image, f"{faceset} frame {n} image").is_file()]


def faceset_identity(faces: list, what: str) -> np.ndarray:
    """The identity of a faceset's `faces` (faceset_faces: those not moved aside by curate): the medoid of
    their 128-D embeddings, as curate takes it. dlib's same-person distance is calibrated between two
    faces; a mean embedding is no one's face and sits nearer the middle of face space, where a featureless
    blob lands too. `what` names the faceset in the error."""
    embeddings = [np.asarray(f.embedding, np.float32) for f in faces if len(f.embedding) == 128]
    if not embeddings:
        raise EngineError(f"{what} holds no faces with identity embeddings")
    return identity.medoid(np.stack(embeddings))


def shot_identity(alignments: Alignments) -> np.ndarray | None:
    """B's identity: the medoid of the embeddings extract stored for the shot's faces (None if it stored none)."""
    embeddings = [np.asarray(f.embedding, np.float32) for _, f in alignments.faces() if len(f.embedding) == 128]
    embeddings = [e for e in embeddings if e.any()]
    return identity.medoid(np.stack(embeddings)) if embeddings else None


# ---------------------------------------------------------------- per-frame measures


def layer_space(manifest: dict) -> colorspace.Space | None:
    """The layers' colour space, from their manifest; None for a manifest from before colour management
    (no ocio_config), whose layers are sRGB when integer and linear Rec.709 when float."""
    if "ocio_config" not in manifest:
        return None
    name, config = manifest.get("colorspace"), manifest.get("ocio_config")
    if not isinstance(name, str) or not isinstance(config, str):
        raise EngineError("the layers' manifest names no colour space (colorspace, ocio_config)")
    return colorspace.resolve(name, config)


def composite(frame: np.ndarray, layer: np.ndarray, plate: colorspace.Space,
              layer_space: colorspace.Space | None) -> tuple[np.ndarray, np.ndarray]:
    """(composite as sRGB uint8, alpha float32): the straight-alpha `layer` (in `layer_space`) over
    `frame` (in `plate`) as convert makes its finished frames (engine.base.composite), shown in sRGB."""
    if layer_space is None:
        layer_space = colorspace.BUILTIN_LINEAR if layer.dtype.kind == "f" else colorspace.MODEL
    colour = colorspace.ShotColour(plate, layer_space)
    mixed, alpha = layer_over_plate(frame, layer, colour)
    display = colorspace.convert(mixed, colour.working, colorspace.MODEL)
    return np.round(np.clip(display, 0.0, 1.0) * 255.0).astype(np.uint8), alpha


def _box_iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _redetect(detector, image: np.ndarray, box) -> np.ndarray | None:
    """68 landmarks (frame pixels) of the face at `box`, found again in a crop around it, or None."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    grow = CROP_MARGIN * max(x1 - x0, y1 - y0)
    cx0, cy0 = int(max(0, x0 - grow)), int(max(0, y0 - grow))
    cx1, cy1 = int(min(w, x1 + grow)), int(min(h, y1 + grow))
    found = detector.detect(np.ascontiguousarray(image[cy0:cy1, cx0:cx1]))
    shifted = [(d, np.asarray(d.bbox) + [cx0, cy0, cx0, cy0]) for d in found]
    best = max(shifted, key=lambda item: _box_iou(item[1], box), default=None)
    if best is None or _box_iou(best[1], box) < MIN_OVERLAP:
        return None
    return np.asarray(best[0].landmarks, np.float64) + [cx0, cy0]


def detail(grey: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute high-pass (the image minus its DETAIL_SIGMA Gaussian blur) of `grey` inside `region`."""
    high = grey - cv2.GaussianBlur(grey, (0, 0), DETAIL_SIGMA)
    return float(np.abs(high[region]).mean())


def _inner_face(landmarks: np.ndarray, alpha: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """(crop, inner face, eyes and mouth), the two regions as masks in the crop where the layer is opaque,
    or None where the inner face has no opaque pixel.

    The crop leaves room for the blur, so pixels at the region's edge see their real neighbours."""
    h, w = alpha.shape
    pad = int(4 * DETAIL_SIGMA) + 1
    x0, y0 = np.floor(landmarks[INNER_FACE].min(0)).astype(int) - pad
    x1, y1 = np.ceil(landmarks[INNER_FACE].max(0)).astype(int) + pad + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = (slice(y0, y1), slice(x0, x1))
    region = np.zeros((y1 - y0, x1 - x0), np.uint8)
    hull = cv2.convexHull(np.round((landmarks[INNER_FACE] - [x0, y0]) * 16).astype(np.int32))
    cv2.fillConvexPoly(region, hull, 1, shift=4)
    opaque = alpha[crop] >= OPAQUE
    region = (region > 0) & opaque
    if not region.any():
        return None
    points, side = landmarks - [x0, y0], max(y1 - y0, x1 - x0)  # the masks are drawn on a square canvas
    features = np.maximum(masks.eyes_mask(points, side), masks.mouth_mask(points, side))[: y1 - y0, : x1 - x0]
    return crop, region, (features > 0.5) & opaque


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _lab(image8: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image8.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def seam_steps(composite: np.ndarray, original: np.ndarray, alpha: np.ndarray, band: int) -> dict:
    """The colour step (CIE76 delta E) across the mask's edge: in the composite ("seam"), in the original
    at the same place ("seam_original"), and how far the first is from the second ("seam_excess", the
    length of the difference of the two Lab steps: 0 when the swap meets its surround as the original
    face did). Empty if the layer has no edge to measure.

    Inside: opaque pixels within `band` of the edge; outside: clear pixels within `band` of it. Each
    sector around the mask's centre compares its own inside and outside, so the step is local."""
    opaque, clear = alpha >= OPAQUE, alpha <= CLEAR
    if opaque.sum() < SECTORS * MIN_SECTOR_PIXELS or clear.sum() == 0:
        return {}
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    inner = opaque & (cv2.dilate((~opaque).astype(np.uint8), kernel) > 0)
    outer = clear & (cv2.dilate((~clear).astype(np.uint8), kernel) > 0)
    ys, xs = np.nonzero(alpha > 0.5)
    cy, cx = ys.mean(), xs.mean()
    grid_y, grid_x = np.indices(alpha.shape)
    sector = ((np.arctan2(grid_y - cy, grid_x - cx) + math.pi) / (2 * math.pi) * SECTORS).astype(int) % SECTORS
    lab_swap, lab_orig = _lab(composite), _lab(original)
    swap_steps, orig_steps = [], []
    for s in range(SECTORS):
        inside, outside = inner & (sector == s), outer & (sector == s)
        if inside.sum() < MIN_SECTOR_PIXELS or outside.sum() < MIN_SECTOR_PIXELS:
            continue
        around = lab_orig[outside].mean(0)  # outside the mask the composite is the original
        swap_steps.append(lab_swap[inside].mean(0) - around)
        orig_steps.append(lab_orig[inside].mean(0) - around)
    if not swap_steps:
        return {}
    swap_steps, orig_steps = np.array(swap_steps), np.array(orig_steps)
    return {
        "seam": float(np.linalg.norm(swap_steps, axis=1).mean()),
        "seam_original": float(np.linalg.norm(orig_steps, axis=1).mean()),
        "seam_excess": float(np.linalg.norm(swap_steps - orig_steps, axis=1).mean()),
    }


class FrameMeasures:
    """Measures one frame, keeping what the next frame's temporal measures need."""

    def __init__(self, alignments: Alignments, identity_a: np.ndarray, detector,
                 spaces: tuple[colorspace.Space, colorspace.Space | None],
                 gallery: dict[str, np.ndarray] | None = None, expression_range: dict | None = None):
        """`gallery`: identity name -> embedding, A's ("A") among them, for gallery retrieval.
        `expression_range`: A's faces' openings (expression.source_range), to mark the frames they span."""
        self.alignments, self.identity_a, self.detector, self.spaces = alignments, identity_a, detector, spaces
        self.gallery, self.expression_range = gallery, expression_range
        self.inside = masks.hull_mask(align.template_points(ANALYSIS_SIZE, alignments.coverage), ANALYSIS_SIZE) > 0.5
        self.previous: dict | None = None

    def measure(self, number: int, frame: np.ndarray, layer: np.ndarray, adjacent: bool) -> dict:
        face = self.alignments.frame(number).faces[0]  # extract keeps one face a frame: the tracked person
        swapped, alpha = composite(frame, layer, *self.spaces)
        original = colorspace.display8(frame, self.spaces[0])
        stored = np.asarray(face.landmarks, np.float64)
        ocular = float(np.linalg.norm(stored[RIGHT_EYE_CORNER] - stored[LEFT_EYE_CORNER])) or 1.0
        record = {"frame": number, "swapped": bool(alpha.max() > CLEAR)}
        if self.expression_range is not None:
            record["expression_covered"] = not uncovered(openings(face.landmarks_raw), self.expression_range)

        box = np.asarray(face.bbox, np.float64)
        points_swap = _redetect(self.detector, swapped, box)
        points_orig = _redetect(self.detector, original, box)
        record["redetected"] = points_swap is not None
        if points_orig is None:
            points_orig = stored  # extract found it; keep the frame rather than lose it

        e_swap = identity.embed_faces(swapped, [points_swap if points_swap is not None else stored])[0]
        # extract embedded the original already, from this frame; the network is most of the time here
        e_orig = np.asarray(face.embedding, np.float32)
        if e_orig.shape != (128,):
            e_orig = identity.embed_faces(original, [points_orig])[0]
        record["identity_a"] = _cosine(e_swap, self.identity_a)
        record["identity_b"] = _cosine(e_swap, e_orig)
        record["distance_a"] = float(identity.distances(e_swap, self.identity_a))
        record["nearer_a"] = record["identity_a"] > record["identity_b"]
        record["same_person"] = record["distance_a"] < identity.SAME_PERSON
        if self.gallery:
            names = list(self.gallery)
            record["nearest"] = names[int(np.argmin(identity.distances(np.stack(list(self.gallery.values())), e_swap)))]

        inner = _inner_face(stored, alpha)
        if inner is not None:
            crop, region, features = inner
            grey_swap = cv2.cvtColor(swapped[crop], cv2.COLOR_RGB2GRAY).astype(np.float32)
            grey_orig = cv2.cvtColor(original[crop], cv2.COLOR_RGB2GRAY).astype(np.float32)
            record["detail"], record["detail_original"] = detail(grey_swap, region), detail(grey_orig, region)
            if features.any():
                record["feature_detail"] = detail(grey_swap, features)
                record["feature_detail_original"] = detail(grey_orig, features)

        size = tuple(self.alignments.source_size)
        if points_swap is not None:
            record["landmark_error"] = float(np.linalg.norm(points_swap - points_orig, axis=1).mean() / ocular)
            pose_swap, pose_orig = head_pose(points_swap, size), head_pose(points_orig, size)
            record["yaw_error"] = abs(pose_swap[0] - pose_orig[0])
            record["pitch_error"] = abs(pose_swap[1] - pose_orig[1])
            record["mouth_open"], record["eye_open"] = openings(points_swap)
            record["mouth_open_original"], record["eye_open_original"] = openings(points_orig)

        matrix = align.scale_matrix(face.matrix, self.alignments.face_size, ANALYSIS_SIZE)
        aligned_swap = align.warp_face(swapped, matrix, ANALYSIS_SIZE).astype(np.float32)[self.inside]
        aligned_orig = align.warp_face(original, matrix, ANALYSIS_SIZE).astype(np.float32)[self.inside]
        offset = points_swap - points_orig if points_swap is not None else None
        previous = self.previous if adjacent else None
        if previous is not None:
            record["flicker"] = float(np.abs(aligned_swap - previous["swap"]).mean())
            record["flicker_original"] = float(np.abs(aligned_orig - previous["orig"]).mean())
            if offset is not None and previous["offset"] is not None:
                record["jitter"] = float(np.linalg.norm(offset - previous["offset"], axis=1).mean() / ocular)
        self.previous = {"swap": aligned_swap, "orig": aligned_orig, "offset": offset}

        band = max(2, round(0.08 * ocular))
        x0, y0, x1, y1 = _region(alpha, band)
        if x1 > x0:
            record.update(seam_steps(swapped[y0:y1, x0:x1], original[y0:y1, x0:x1], alpha[y0:y1, x0:x1], band))
        return record


def _region(alpha: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """The box around the layer's visible pixels, grown by `margin` (empty if the layer is blank)."""
    ys, xs = np.nonzero(alpha > CLEAR)
    if not len(xs):
        return 0, 0, 0, 0
    h, w = alpha.shape
    return (max(0, xs.min() - 2 * margin), max(0, ys.min() - 2 * margin),
            min(w, xs.max() + 2 * margin + 1), min(h, ys.max() + 2 * margin + 1))


# ---------------------------------------------------------------- summary and plot


def _mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return round(float(np.mean(values)), 4) if values else None


def _share(records: list[dict], test) -> float | None:
    return round(sum(map(test, records)) / len(records), 4) if records else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 4) if numerator is not None and denominator else None


def carried(records: list[dict], key: str) -> tuple[float | None, float | None, float | None]:
    """(correlation, mean absolute difference, gain) of the swap's `key` and the original's over the frames
    holding both; the gain is the slope of the swap's on the original's (least squares): 1 where the swap
    opens as far as the original, 0.5 where half as far. Correlation and gain are None where the original
    does not move (nothing to carry), and 0 where it moves and the swap does not."""
    pairs = np.array([(r[key], r[f"{key}_original"]) for r in records if r.get(key) is not None], np.float64)
    if not len(pairs):
        return None, None, None
    difference = round(float(np.abs(pairs[:, 0] - pairs[:, 1]).mean()), 4)
    if len(pairs) < 3 or pairs[:, 1].std() < MIN_SPREAD:
        return None, difference, None
    if pairs[:, 0].std() < MIN_SPREAD:
        return 0.0, difference, 0.0
    gain = np.polyfit(pairs[:, 1], pairs[:, 0], 1)[0]
    return round(float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]), 4), difference, round(float(gain), 4)


def summarise(records: list[dict]) -> dict:
    swapped = [r for r in records if r["swapped"]]
    flicker, flicker_original = _mean(swapped, "flicker"), _mean(swapped, "flicker_original")
    detail_swap, detail_original = _mean(swapped, "detail"), _mean(swapped, "detail_original")
    feature_swap, feature_original = _mean(swapped, "feature_detail"), _mean(swapped, "feature_detail_original")
    mouth_correlation, mouth_difference, mouth_gain = carried(swapped, "mouth_open")
    eye_correlation, eye_difference, eye_gain = carried(swapped, "eye_open")
    ranked = [r for r in swapped if "nearest" in r]
    return {
        "frames_evaluated": len(records),
        "frames_swapped": len(swapped),
        "redetected": _share(swapped, lambda r: r["redetected"]),
        "identity_a": _mean(swapped, "identity_a"),
        "identity_b": _mean(swapped, "identity_b"),
        "distance_a": _mean(swapped, "distance_a"),
        "id_retrieval": _share(swapped, lambda r: r["nearer_a"]),
        "same_person": _share(swapped, lambda r: r["same_person"]),
        "expression_covered": _share(swapped, lambda r: r.get("expression_covered", True)),
        "same_person_covered": _share([r for r in swapped if r.get("expression_covered", True)],
                                      lambda r: r["same_person"]),
        "gallery_retrieval": _share(ranked, lambda r: r["nearest"] == "A"),
        "detail": detail_swap,
        "detail_original": detail_original,
        "detail_ratio": _ratio(detail_swap, detail_original),
        "feature_detail": feature_swap,
        "feature_detail_original": feature_original,
        "feature_detail_ratio": _ratio(feature_swap, feature_original),
        "mouth_correlation": mouth_correlation,
        "mouth_difference": mouth_difference,
        "mouth_gain": mouth_gain,
        "eye_correlation": eye_correlation,
        "eye_difference": eye_difference,
        "eye_gain": eye_gain,
        "landmark_error": _mean(swapped, "landmark_error"),
        "yaw_error": _mean(swapped, "yaw_error"),
        "pitch_error": _mean(swapped, "pitch_error"),
        "flicker": flicker,
        "flicker_original": flicker_original,
        "flicker_ratio": _ratio(flicker, flicker_original),
        "jitter": _mean(swapped, "jitter"),
        "seam": _mean(swapped, "seam"),
        "seam_original": _mean(swapped, "seam_original"),
        "seam_excess": _mean(swapped, "seam_excess"),
    }


def _plot(records: list[dict], summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    frames = np.array([r["frame"] for r in records])

    def series(key):
        return np.array([np.nan if r.get(key) is None else r[key] for r in records], np.float64)

    panels = [
        ("identity (cosine)", [("to A", "identity_a"), ("to original B", "identity_b")]),
        ("distance to A\n(< 0.6 same person)", [("swap", "distance_a")]),
        ("landmark error / inter-ocular", [("swap vs original", "landmark_error"), ("jitter", "jitter")]),
        ("opening / inter-ocular", [("mouth, swap", "mouth_open"), ("mouth, original", "mouth_open_original"),
                                    ("eyes, swap", "eye_open"), ("eyes, original", "eye_open_original")]),
        ("detail (high-pass, 8-bit)", [("swap", "detail"), ("original", "detail_original"),
                                       ("eyes and mouth, swap", "feature_detail"),
                                       ("eyes and mouth, original", "feature_detail_original")]),
        ("flicker (8-bit levels)", [("swap", "flicker"), ("original", "flicker_original")]),
        ("seam (delta E)", [("swap", "seam"), ("original", "seam_original"), ("excess", "seam_excess")]),
    ]
    # B's frames whose expression A's faces lack, shaded on every panel: what faces of A fix, not training
    uncovered = [r["frame"] for r in records if r.get("expression_covered") is False]
    lacking = frame_runs(uncovered)
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels)), sharex=True)
    for axis, (title, lines) in zip(axes, panels, strict=True):
        for i, (first, last) in enumerate(lacking):
            axis.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.08, linewidth=0,
                         label="expression A's faces lack" if i == 0 and axis is axes[0] else None)
        for label, key in lines:
            axis.plot(frames, series(key), marker=".", linewidth=1, label=label)
        if lines[0][1] == "distance_a":
            axis.axhline(identity.SAME_PERSON, color="grey", linestyle="--", linewidth=1)
        axis.set_ylabel(title, fontsize=8)
        axis.legend(fontsize=7, loc="upper right")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("frame")
    headline = [(name, summary[key]) for name, key in (("ID retrieval", "id_retrieval"), ("same person", "same_person"),
                                                         ("gallery retrieval", "gallery_retrieval"))]
    title = ", ".join(f"{name} {value:.0%}" for name, value in headline if value is not None)
    if summary["detail_ratio"] is not None:
        title += f", detail ratio {summary['detail_ratio']:.2f}"
    if summary["feature_detail_ratio"] is not None:
        title += f" ({summary['feature_detail_ratio']:.2f} on the eyes and mouth)"
    if summary["expression_covered"] is not None and summary["expression_covered"] < 1:
        title += f"\n{1 - summary['expression_covered']:.0%} of frames in expressions A's faces lack (shaded)"
    figure.suptitle(title or "no swapped frames", fontsize=10)
    figure.tight_layout()
    with media.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path


# ---------------------------------------------------------------- the public function


@media.holds_folder_locks
def evaluate(
    shot: str | Path,
    alignments: str | Path,
    layers: str | Path,
    source: str | Path,
    output: str | Path | None = None,
    frames: str | None = None,
    detector: str = "dlib",
    device: str = "cpu",
    gallery: list[str | Path] = (),
    events: Events | None = None,
    force: bool = False,
    plate_colorspace: str | None = None,
    ocio_config: str | None = None,
) -> dict:
    """Measure the converted shot; returns {"summary", "frames", "outputs", ...} as written to evaluation.json.

    `gallery`: facesets of other people, for gallery retrieval.
    `force` measures with alignments whose shot signature does not match `shot`."""
    events = events or Events("evaluate")
    frame_source = media.FrameSource(shot)
    plate = colorspace.plate_space(plate_colorspace, ocio_config, frame_source.linear)
    alignments_path = Path(alignments)
    shot_alignments = Alignments.load(alignments_path)
    check_alignments(shot_alignments, frame_source, alignments_path)
    check_same_shot(shot_alignments, frame_source, alignments_path, force, events.warning)
    _check_made_from(shot_alignments.source, frame_source, f"alignments {alignments_path}", events)
    layers = Path(layers)
    manifest = read_manifest(layers)
    _check_layers_match(manifest, frame_source, layers, events)
    spaces = (plate, layer_space(manifest))
    faces_a = faceset_faces(source)  # read once: for A's identity and for the expressions it spans
    identity_a = faceset_identity(faces_a, f"faceset A {source}")
    identities = None
    if gallery:
        identity_b = shot_identity(shot_alignments)
        if identity_b is None:
            raise EngineError(f"alignments {alignments_path} hold no identity embeddings: gallery retrieval needs B's")
        identities = {"A": identity_a, "B": identity_b}
        identities.update({str(Path(g).resolve()): faceset_identity(faceset_faces(g), f"gallery faceset {g}")
                           for g in gallery})

    numbers = [n for n in frame_source.select(frames) if (f := shot_alignments.frame(n)) is not None and f.faces]
    missing = [n for n in numbers if not layer_path(layers, manifest, n).is_file()]
    if missing and len(missing) == len(numbers):
        raise EngineError(f"{layers} holds no face layers for the shot's frames with faces "
                          f"(looked for {layer_path(layers, manifest, numbers[0]) if numbers else 'any'})")
    if missing:
        events.warning(f"{len(missing)} frames with a face have no layer in {layers}; they are left out",
                       frames=missing)
    numbers = [n for n in numbers if n not in missing]
    if not numbers:
        raise EngineError(f"no frame of {frame_source.path} in the selection has a face to evaluate")
    folder = media.check_writable(Path(output) if output else layers / "evaluate")
    media.lock_folder(folder)

    from ..base.device import pick_device

    torch_device = str(pick_device(device)) if on_torch(detector) else "cpu"
    shot_faces = [(n, shot_alignments.frame(n).faces[0]) for n in numbers]
    coverage = compare_expression_coverage([f.landmarks_raw for f in faces_a],
                                           [f.landmarks_raw for _, f in shot_faces], [n for n, _ in shot_faces])
    for message in coverage["messages"]:
        events.warning(message)
    measures = FrameMeasures(shot_alignments, identity_a, make_detector(detector, torch_device),
                             spaces, identities, coverage["source_range"])
    events.start(shot=str(frame_source.path), frames=len(numbers), layers=str(layers), output=str(folder))
    position = {n: i for i, n in enumerate(frame_source.numbers)}
    step = int(shot_alignments.settings.get("every", 1))  # frames an extract with --every N stepped over
    records, last = [], None
    for i, (number, image) in enumerate(frame_source.frames(numbers), 1):
        layer = media.read_image(layer_path(layers, manifest, number))
        if layer.ndim != 3 or layer.shape[2] != 4 or layer.shape[:2] != image.shape[:2]:
            raise EngineError(f"layer {layer_path(layers, manifest, number)} is not an RGBA image the size of "
                              f"the shot's frames ({frame_source.size[0]}x{frame_source.size[1]})")
        if manifest.get("alpha") == "premultiplied":  # convert's EXR layers: colour times alpha
            layer = np.dstack([straight(layer[..., :3], layer[..., 3:]), layer[..., 3:]])
        adjacent = last is not None and position[number] - position[last] <= step
        record = measures.measure(number, image, layer, adjacent)
        records.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()})
        last = number
        events.progress(i, len(numbers), frame=number, identity_a=records[-1]["identity_a"])

    summary = summarise(records)
    report = {
        "format": FORMAT,
        "version": VERSION,
        "shot": str(frame_source.path.resolve()),
        "alignments": str(alignments_path.resolve()),
        "layers": str(layers.resolve()),
        "source": str(Path(source).resolve()),
        "gallery": [str(Path(g).resolve()) for g in gallery],
        "detector": measures.detector.name,
        "summary": summary,
        "frames": records,
        "outputs": {"report": str(folder / "evaluation.json"), "plot": str(folder / "evaluation.png")},
    }
    _plot(records, summary, folder / "evaluation.png")
    media.write_json(folder / "evaluation.json", report)
    events.done(**summary, **report["outputs"])
    return report
