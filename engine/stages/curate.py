"""Curate: score every face of a faceset, flag the ones that hurt training, and move them aside on request.

Scores, per face:
- identity distance: Euclidean distance of its 128-D embedding to the faceset's main identity, the
  medoid of the embeddings (dlib's scale: under 0.6 is the same person);
- sharpness: variance of the Laplacian over the variance of the grey levels, inside the hull mask, on the
  aligned face resampled to 96 px, so neither the face size nor the exposure moves it;
- confidence: the landmark confidence where the backend gives one (fan), else the detector's score;
- yaw, pitch, roll from the landmarks (engine.faces.pose).

Flags, in this order (a face flagged for one reason is not a duplicate's keeper):
- "other person": identity distance above --identity-threshold (false detections land here too: what is
  not a face embeds far from every face);
- "low confidence": confidence below --confidence-threshold times the faceset's median;
- "blurred": sharpness below --blur-threshold times the faceset's median;
- "duplicate": nearly the same aligned face as one kept earlier (RMS grey-level difference of the 32 px
  aligned faces inside the face, below --duplicate-threshold); the first in frame order is kept.

Writes FACESET/curate/report.json, flagged.png (a contact sheet of the flagged faces, each with its reason)
and pose.png (yaw x pitch coverage, beside faceset B's with --target). With --target, the report also
says which of B's frames open the mouth wider or shut the eyes further than any kept face of A
(engine.faces.expression). Nothing is ever deleted: --apply
moves flagged faces' files into FACESET/aside/ (same relative paths) after recording them in
FACESET/aside/moved.json, and --restore moves them back. Faceset.samples() skips faces whose image is
missing, so training never sees a face that is aside.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ..base import media
from ..base.events import EngineError, Events
from ..faces import align, identity, masks
from ..faces.expression import compare_expression_coverage
from ..faces.pose import head_pose
from ..folders.faceset import (
    ALIGNMENTS_FILE,
    ASIDE_DIR,
    Alignments,
    Face,
    Faceset,
    aside_images,
    face_file,
    move_aside,
    read_aside,
    restore_aside,
)

REPORT_FORMAT = "facereplace.curate"
VERSION = 1
REPORT_DIR = "curate"

DEFAULT_BLUR = 0.35  # share of the faceset's median sharpness
DEFAULT_CONFIDENCE = 0.25  # share of the faceset's median confidence
DEFAULT_DUPLICATE = 2.0  # RMS grey levels (0-255) between 32 px aligned faces

SHARPNESS_SIZE = 96  # sharpness is measured at one size, so facesets of any face size compare
THUMB_SIZE = 32  # duplicates are found on small thumbnails, which ignore noise and compression

# Pose histogram cells, degrees; poses beyond the range fall in the edge cells.
YAW_EDGES = np.arange(-90, 91, 10)
PITCH_EDGES = np.arange(-60, 61, 10)
# Pose regions checked against B: (words, axis, sign, limit). Yaw is compared as |yaw|, since
# training flips faces, so a face turned left also teaches the face turned right.
POSE_REGIONS = [
    ("|yaw| > {}°", "yaw", 0, (15, 30, 45)),
    ("pitch > {}° (looking up)", "pitch", 1, (15, 30)),
    ("pitch < -{}° (looking down)", "pitch", -1, (15, 30)),
]
POSE_NEAR = 10.0  # a target pose counts as covered if a source face is within this many degrees
MIN_SHARE = 0.05  # target poses rarer than this are not worth a warning
SHEET_LIMIT = 240  # tiles on the flagged contact sheet


def add_arguments(parser) -> None:
    parser.add_argument("faceset", help="the faceset folder to curate")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true", help="move the flagged faces aside (FACESET/aside/)")
    action.add_argument("--restore", action="store_true", help="move every face that is aside back, and stop")
    parser.add_argument("--target", metavar="FACESET_B",
                        help="faceset B (the shot's face): compare this faceset's poses and expressions with it")
    parser.add_argument("--identity-threshold", type=float, metavar="X", default=identity.SAME_PERSON,
                        help="largest embedding distance to the main identity that counts as the same person "
                             "(default %(default)s)")
    parser.add_argument("--blur-threshold", type=float, metavar="X", default=DEFAULT_BLUR,
                        help="flag faces less sharp than this share of the faceset's median sharpness "
                             "(default %(default)s)")
    parser.add_argument("--duplicate-threshold", type=float, metavar="X", default=DEFAULT_DUPLICATE,
                        help="flag a face whose RMS grey-level difference to a kept face is below this "
                             "(default %(default)s; 0 = off)")
    parser.add_argument("--confidence-threshold", type=float, metavar="X", default=DEFAULT_CONFIDENCE,
                        help="flag faces with less than this share of the faceset's median confidence "
                             "(default %(default)s)")


def run(args, events: Events) -> None:
    if args.restore:
        restore(args.faceset, events=events)
        return
    curate(
        args.faceset, apply=args.apply, target=args.target, identity_threshold=args.identity_threshold,
        blur_threshold=args.blur_threshold, duplicate_threshold=args.duplicate_threshold,
        confidence_threshold=args.confidence_threshold, events=events,
    )


@media.holds_folder_locks
def curate(
    faceset: str | Path,
    apply: bool = False,
    target: str | Path | None = None,
    identity_threshold: float = identity.SAME_PERSON,
    blur_threshold: float = DEFAULT_BLUR,
    duplicate_threshold: float = DEFAULT_DUPLICATE,
    confidence_threshold: float = DEFAULT_CONFIDENCE,
    events: Events | None = None,
) -> dict:
    """Score and flag every face of `faceset`, write the report, and with `apply` move flagged faces aside.

    Returns the report (also in FACESET/curate/report.json); the "done" event carries its summary."""
    events = events or Events("curate")
    for name, value in (("identity", identity_threshold), ("blur", blur_threshold),
                        ("duplicate", duplicate_threshold), ("confidence", confidence_threshold)):
        if value < 0:
            raise EngineError(f"--{name}-threshold must be 0 or more, got {value}")
    opened = Faceset(faceset)
    folder, alignments = opened.folder, opened.alignments
    faces = list(alignments.faces())
    if not faces:
        raise EngineError(f"faceset {folder} holds no faces")
    target_alignments = _load_target(target) if target is not None else None
    media.check_writable(folder / REPORT_DIR)
    media.lock_folder(folder)
    events.start(faceset=str(folder), faces=len(faces))

    scores = _score_faces(folder, alignments, faces, events)
    _flag(scores, identity_threshold, confidence_threshold, blur_threshold, duplicate_threshold)
    aside = aside_images(folder)
    # The faces training will see once the flagged ones are aside: what pose coverage is about.
    kept = [s for s in scores if not s["flags"] and not s["missing"] and s["image"] not in aside]

    report = {
        "format": REPORT_FORMAT,
        "version": VERSION,
        "faceset": str(folder),
        "settings": {
            "identity_threshold": identity_threshold,
            "blur_threshold": blur_threshold,
            "duplicate_threshold": duplicate_threshold,
            "confidence_threshold": confidence_threshold,
            "confidence_source": "landmarks" if any(f.landmark_confidence is not None for _, f in faces)
            else "detector",
        },
        "summary": {**_summary(scores), "kept": len(kept)},
        "pose": _pose_histogram(_poses(kept)),
    }
    if target_alignments is not None:
        target_faces = list(target_alignments.faces())
        report["coverage"] = compare_pose_coverage(_poses(kept), [_face_pose(f, target_alignments) for _, f in target_faces])
        kept_frames = {s["frame"] for s in kept}
        report["expression_coverage"] = compare_expression_coverage(
            [f.landmarks_raw for n, f in faces if n in kept_frames], [f.landmarks_raw for _, f in target_faces],
            [n for n, _ in target_faces])
        for message in report["coverage"]["messages"] + report["expression_coverage"]["messages"]:
            events.warning(message)
    if apply:
        report["summary"]["moved"] = move_aside(folder, [s for s in scores if s["flags"]], alignments)
        aside = aside_images(folder)
    for s in scores:
        s["aside"] = s["image"] in aside
    report["summary"]["aside"] = len(aside)
    report["faces"] = scores

    out = folder / REPORT_DIR
    report["outputs"] = {
        "report": str(out / "report.json"),
        "contact_sheet": _write_flagged_sheet(folder, scores, out / "flagged.png"),
        "pose": str(_write_pose_png(report, out / "pose.png")),
    }
    media.write_json(out / "report.json", report)
    events.done(**report["summary"], **report["outputs"],
                **({"messages": report["coverage"]["messages"] + report["expression_coverage"]["messages"]}
                   if "coverage" in report else {}))
    return report


# ---------------------------------------------------------------- scores


def _load_target(target) -> Alignments:
    alignments = Alignments.load(target)
    if not any(True for _ in alignments.faces()):
        raise EngineError(f"faceset B {target} holds no faces to compare poses with")
    return alignments


def _face_pose(face: Face, alignments: Alignments) -> tuple[float, float, float]:
    return head_pose(np.asarray(face.landmarks), tuple(alignments.source_size))


def sharpness(face: np.ndarray, mask: np.ndarray) -> float:
    """Laplacian variance over grey-level variance inside `mask`, at SHARPNESS_SIZE px.

    Dividing by the grey-level variance makes the score independent of exposure and contrast, and the
    fixed size makes it independent of the faceset's face size: at 96 px the same face extracted at 128,
    256 or 512 px scores within about 10%, while a 2 px blur of a 256 px face drops it below a quarter.
    The mask is eroded a little so the face's outline against the background does not count as detail."""
    grey = cv2.cvtColor(face[..., :3], cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    mask = mask.astype(np.float32)
    if grey.shape[0] != SHARPNESS_SIZE:
        shrink = grey.shape[0] > SHARPNESS_SIZE
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        grey = cv2.resize(grey, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=interpolation)
        mask = cv2.resize(mask, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
    inside = cv2.erode((mask > mask.max() / 2).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    if inside.sum() < 16:
        return float("nan")
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)
    return float(laplacian[inside].var() / max(float(grey[inside].var()), 1e-6))


def _thumbnail(face: np.ndarray, inside: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(face[..., :3], cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float64)[inside]


def _score_faces(folder: Path, alignments: Alignments, faces: list, events: Events) -> list[dict]:
    embeddings = [np.asarray(f.embedding, np.float32) for _, f in faces]
    valid = [e for e in embeddings if e.shape == (128,)]
    centre = None
    if valid:
        centre = identity.medoid(np.stack(valid))
    # Duplicates compare the face inside the template's hull: the same pixels for every aligned face.
    inside = masks.hull_mask(align.template_points(THUMB_SIZE, alignments.coverage), THUMB_SIZE) > 0.5

    def score(item):
        (number, face), embedding = item
        where = f"{folder / ALIGNMENTS_FILE} frame {number}"
        image_path = face_file(folder, face.image, f"{where} image")
        mask_path = face_file(folder, face.mask_hull, f"{where} mask_hull")
        record = {
            "frame": number,
            "image": face.image,
            "identity_distance": float(identity.distances(embedding, centre))
            if centre is not None and embedding.shape == (128,) else None,
            "sharpness": None,
            "confidence": face.landmark_confidence if face.landmark_confidence is not None else face.score,
        }
        record.update(zip(("yaw", "pitch", "roll"), _face_pose(face, alignments), strict=True))
        record.update(flags=[], duplicate_of=None, missing=image_path is None)
        thumb = None
        if image_path is not None:
            image = media.to_srgb8(media.read_image(image_path))
            mask = media.read_image(mask_path) if mask_path is not None else np.full(image.shape[:2], 255, np.uint8)
            if image.shape[:2] != (alignments.face_size,) * 2 or mask.shape[:2] != image.shape[:2]:
                raise EngineError(f"face {image_path} or its mask is not {alignments.face_size} px, the size of "
                                  f"the faceset's faces")
            record["sharpness"] = sharpness(image, mask)
            thumb = _thumbnail(image, inside)
        return record, thumb

    scores, thumbs = [], []
    # Decoding and OpenCV release the GIL, so a few threads keep both cores busy.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for i, (record, thumb) in enumerate(pool.map(score, zip(faces, embeddings, strict=True)), 1):
            scores.append(record)
            thumbs.append(thumb)
            if i % 25 == 0 or i == len(faces):
                events.progress(i, len(faces), frame=record["frame"])
    missing = [s["image"] for s in scores if s["missing"]]
    if missing:
        events.warning(f"{len(missing)} face images are missing from the faceset and from aside/ "
                       f"(first: {missing[0]}); they are reported but not scored")
    for record, thumb in zip(scores, thumbs, strict=True):
        record["_thumb"] = thumb
    return scores


def _round(value, digits=4):
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def _flag(scores, identity_threshold, confidence_threshold, blur_threshold, duplicate_threshold) -> None:
    for s in scores:
        if s["identity_distance"] is not None and s["identity_distance"] > identity_threshold:
            s["flags"].append("other person")
    same_person = [s for s in scores if not s["flags"]]
    confidence = np.median([s["confidence"] for s in same_person]) if same_person else 0.0
    sharp = [s["sharpness"] for s in same_person if s["sharpness"] is not None and np.isfinite(s["sharpness"])]
    median_sharpness = float(np.median(sharp)) if sharp else float("nan")
    for s in scores:
        if confidence > 0 and s["confidence"] < confidence_threshold * confidence:
            s["flags"].append("low confidence")
        if s["sharpness"] is not None and s["sharpness"] < blur_threshold * median_sharpness:
            s["flags"].append("blurred")
    _flag_duplicates(scores, duplicate_threshold)
    for s in scores:
        s["sharpness_share"] = _round(s["sharpness"] / median_sharpness) if s["sharpness"] is not None else None
        for key in ("identity_distance", "sharpness", "confidence", "yaw", "pitch", "roll"):
            s[key] = _round(s[key], 2 if key in ("yaw", "pitch", "roll") else 4)


def _flag_duplicates(scores, threshold) -> None:
    """Greedy in frame order: a face nearer than `threshold` to a face already kept is a duplicate of it.

    Comparing with every kept face, not only the previous one, also catches a pose the person returns
    to later in the shot; a slow drift still keeps a face every `threshold` of change."""
    candidates = [s for s in scores if not s["flags"] and s["_thumb"] is not None]
    if threshold <= 0 or not candidates:
        for s in scores:
            s.pop("_thumb")
        return
    pixels = len(candidates[0]["_thumb"])
    kept = np.empty((len(candidates), pixels))
    kept_norms = np.empty(len(candidates))
    kept_frames: list[int] = []
    limit = threshold**2 * pixels  # on sums of squares, so the search is one matrix-vector product
    for s in candidates:
        thumb = s["_thumb"]
        norm = float(thumb @ thumb)
        k = len(kept_frames)
        if k:
            squared = kept_norms[:k] + norm - 2.0 * (kept[:k] @ thumb)
            nearest = int(np.argmin(squared))
            if squared[nearest] < limit:
                s["flags"].append("duplicate")
                s["duplicate_of"] = kept_frames[nearest]
                s["duplicate_distance"] = _round(np.sqrt(max(squared[nearest], 0.0) / pixels), 3)
                continue
        kept[k], kept_norms[k] = thumb, norm
        kept_frames.append(s["frame"])
    for s in scores:
        s.pop("_thumb")


def _summary(scores: list[dict]) -> dict:
    def count(reason):
        return sum(reason in s["flags"] for s in scores)

    sharp = [s["sharpness"] for s in scores if s["sharpness"] is not None]
    return {
        "faces": len(scores),
        "flagged": sum(bool(s["flags"]) for s in scores),
        "other_person": count("other person"),
        "low_confidence": count("low confidence"),
        "blurred": count("blurred"),
        "duplicates": count("duplicate"),
        "missing": sum(s["missing"] for s in scores),
        "median_sharpness": _round(np.median(sharp)) if sharp else None,
        "median_confidence": _round(np.median([s["confidence"] for s in scores])),
    }


# ---------------------------------------------------------------- pose coverage


def _poses(scores: list[dict]) -> np.ndarray:
    poses = np.array([(s["yaw"], s["pitch"]) for s in scores], np.float64).reshape(-1, 2)
    return poses[np.isfinite(poses).all(1)]


def _histogram(poses: np.ndarray) -> np.ndarray:
    """Counts per (pitch, yaw) cell; poses beyond the edges go in the edge cells."""
    yaw = np.clip(poses[:, 0], YAW_EDGES[0], YAW_EDGES[-1] - 1e-6)
    pitch = np.clip(poses[:, 1], PITCH_EDGES[0], PITCH_EDGES[-1] - 1e-6)
    counts, _, _ = np.histogram2d(pitch, yaw, bins=(PITCH_EDGES, YAW_EDGES))
    return counts.astype(int)


def _pose_histogram(poses: np.ndarray) -> dict:
    return {
        "yaw_edges": YAW_EDGES.tolist(),
        "pitch_edges": PITCH_EDGES.tolist(),
        "counts": _histogram(poses).tolist(),  # rows: pitch cells, columns: yaw cells
        "yaw_range": [_round(np.percentile(poses[:, 0], p), 1) for p in (5, 95)] if len(poses) else None,
        "pitch_range": [_round(np.percentile(poses[:, 1], p), 1) for p in (5, 95)] if len(poses) else None,
    }


def compare_pose_coverage(poses_a: np.ndarray, poses_b: list[tuple[float, float, float]]) -> dict:
    """How well A's faces' poses (n x 2 yaw, pitch) cover B's, in numbers and plain words (the report keys
    keep their names: source = A, target = B).

    A's count mirrored too (yaw negated), because training flips faces."""
    poses_b = np.array([p[:2] for p in poses_b], np.float64).reshape(-1, 2)
    poses_b = poses_b[np.isfinite(poses_b).all(1)]
    mirrored = np.concatenate([poses_a, poses_a * [-1.0, 1.0]]) if len(poses_a) else poses_a.reshape(0, 2)
    covered = np.zeros(len(poses_b), bool)
    for start in range(0, len(poses_b), 1024):  # chunks keep the pairwise table small
        chunk = poses_b[start : start + 1024]
        near = np.abs(chunk[:, None, :] - mirrored[None, :, :]).max(-1) <= POSE_NEAR
        covered[start : start + 1024] = near.any(1)
    uncovered = 1.0 - covered.mean() if len(poses_b) else 0.0

    messages, regions = [], []
    for words, axis, sign, limits in POSE_REGIONS:
        column = 0 if axis == "yaw" else 1
        for limit in limits:
            def inside(poses, column=column, sign=sign, limit=limit):
                values = np.abs(poses[:, column]) if sign == 0 else sign * poses[:, column]
                return values > limit

            name = words.format(limit)
            share_b = float(inside(poses_b).mean()) if len(poses_b) else 0.0
            count_a = int(inside(poses_a).sum()) if len(poses_a) else 0
            share_a = count_a / len(poses_a) if len(poses_a) else 0.0
            regions.append({"region": name, "target_share": round(share_b, 4), "source_faces": count_a,
                            "source_share": round(share_a, 4)})
            lacking = count_a == 0 or (share_a < share_b / 4 and count_a < 25)
            if share_b >= MIN_SHARE and lacking:
                has = "none" if count_a == 0 else f"only {count_a} ({share_a:.0%})"
                messages.append(f"B has {name} in {share_b:.0%} of frames; A has {has}")
                break  # the mildest region A lacks says it; the stricter ones would repeat it
    if uncovered >= MIN_SHARE:
        messages.append(f"{uncovered:.0%} of B's frames have no A face within {POSE_NEAR:.0f}° of their yaw "
                        f"and pitch (mirrored faces count)")
    return {
        "target_faces": len(poses_b),
        "source_faces": len(poses_a),
        "covered_share": round(1.0 - uncovered, 4),
        "regions": regions,
        "messages": messages,
        "target_histogram": _pose_histogram(poses_b),
    }


# ---------------------------------------------------------------- pictures


def _write_flagged_sheet(folder: Path, scores: list[dict], path: Path) -> str | None:
    flagged = [s for s in scores if s["flags"]]
    if not flagged:
        path.unlink(missing_ok=True)  # our own picture from an earlier run, not a face
        return None
    tiles, labels = [], []
    for s in flagged[:SHEET_LIMIT]:
        image_path = face_file(folder, s["image"], f"frame {s['frame']} image")
        if image_path is None:
            continue
        tile = cv2.resize(media.to_srgb8(media.read_image(image_path))[..., :3], (128, 128),
                          interpolation=cv2.INTER_AREA)
        tile[-16:] //= 3  # a dark band under the caption, so it reads on a light face
        reason = s["flags"][0] + (f" {s['duplicate_of']}" if s["flags"][0] == "duplicate" else "")
        tiles.append(tile)
        labels.append(f"{s['frame']} {reason}" + ("+" if len(s["flags"]) > 1 else ""))
    if not tiles:
        return None
    media.write_image(path, media.contact_sheet(tiles, columns=8, labels=labels))
    return str(path)


def _draw_histogram(counts: np.ndarray, title: str, gaps: np.ndarray | None = None) -> np.ndarray:
    """One yaw x pitch panel: brighter cells hold more faces; cells in `gaps` are outlined in red."""
    cell, left, top, bottom = 24, 44, 30, 34
    rows, columns = counts.shape
    panel = np.full((top + rows * cell + bottom, left + columns * cell + 10, 3), 255, np.uint8)
    peak = max(int(counts.max()), 1)
    for r in range(rows):
        for c in range(columns):
            y = top + (rows - 1 - r) * cell  # pitch up at the top
            x = left + c * cell
            n = counts[r, c]
            shade = 235 - int(200 * np.sqrt(n / peak)) if n else 248
            colour = (shade, shade, 255) if n else (shade, shade, shade)
            cv2.rectangle(panel, (x, y), (x + cell - 1, y + cell - 1), colour, -1)
            if gaps is not None and gaps[r, c]:
                cv2.rectangle(panel, (x, y), (x + cell - 1, y + cell - 1), (220, 0, 0), 2)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(panel, title, (left, 20), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for c, yaw in enumerate(YAW_EDGES):
        if yaw % 30 == 0:
            cv2.putText(panel, str(yaw), (left + c * cell - 8, top + rows * cell + 14), font, 0.35, (0, 0, 0), 1,
                        cv2.LINE_AA)
    for r, pitch in enumerate(PITCH_EDGES):
        if pitch % 30 == 0:
            cv2.putText(panel, str(pitch), (4, top + (rows - r) * cell + 4), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, "yaw (deg) ->  pitch up ^", (left, top + rows * cell + 30), font, 0.38, (0, 0, 0), 1,
                cv2.LINE_AA)
    return panel


def _write_pose_png(report: dict, path: Path) -> Path:
    counts = np.asarray(report["pose"]["counts"])
    panels = [_draw_histogram(counts, f"A: {int(counts.sum())} kept faces")]
    if "coverage" in report:
        target = np.asarray(report["coverage"]["target_histogram"]["counts"])
        mirrored = counts + counts[:, ::-1]
        panels.append(_draw_histogram(target, f"B: {int(target.sum())} faces, red = A lacks",
                                      gaps=(target > 0) & (mirrored == 0)))
    media.write_image(path, np.concatenate(panels, axis=1))
    return path


@media.holds_folder_locks
def restore(folder: str | Path, events: Events | None = None) -> dict:
    """Move every face recorded in FACESET/aside/moved.json back to its place, exactly as it was.

    A file already back in place (a restore cut short) is left as it is; a file found both in place and
    aside is left in both places and reported, since overwriting either could lose a face."""
    events = events or Events("curate")
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineError(f"faceset folder not found: {folder}")
    media.lock_folder(folder)
    entries = read_aside(folder)
    events.start(faceset=str(folder), restoring=len(entries))
    restored, remaining, conflicts = restore_aside(
        folder, entries, lambda i, entry: events.progress(i, len(entries), frame=entry["frame"]))
    for relative in conflicts:
        events.warning(f"{relative} is both in place and in {ASIDE_DIR}/; left both, keep the one you want")
    summary = {"restored": restored, "still_aside": len(remaining), "faceset": str(folder)}
    events.done(**summary)
    return summary
