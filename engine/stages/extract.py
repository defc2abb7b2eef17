"""Extract: frames -> faceset. Detect faces, pick the person, smooth landmarks, align, mask and embed.

Two passes over the shot, each resumable:
1. detect: every face of every selected frame, with landmarks and an identity embedding, appended to
   detections.jsonl one frame a line (a line cut short by a kill is dropped on resume);
2. write: choose the person in each frame, smooth their landmarks over time, and write the aligned
   faces, the masks and alignments.json. Files already there are complete (atomic writes), so a
   resumed run skips them.
"""

import time
from pathlib import Path

import numpy as np

from ..base import colorspace, media
from ..base.events import EngineError, Events
from ..base.options import number_in
from ..faces import align, identity, masks
from ..faces.detect import BACKENDS, DETECTORS, Detection, make_detector, on_torch
from ..faces.smooth import SmoothSettings, runs, smooth_landmarks
from ..folders.faceset import (
    ALIGNMENTS_FILE,
    EXTRACT_FILE,
    FACESET_FOLDERS,
    Alignments,
    DetectionsLog,
    Face,
    Frame,
    check_extract_settings,
)


def add_arguments(parser) -> None:
    parser.add_argument("input", help="a video file or a folder holding an image sequence")
    parser.add_argument("--output", "-o", required=True, help="the faceset folder to write")
    parser.add_argument("--detector", default="auto", choices=DETECTORS,
                        help="auto: fan where its weights load, else dlib (offline)")
    for name, spec in _detector_options().items():
        parser.add_argument(f"--{name.replace('_', '-')}", **spec)
    parser.add_argument("--batch", type=int,
                        help="frames per detector call (default on CUDA: "
                        + ", ".join(f"{name} {backend.cuda_batch}" for name, backend in BACKENDS.items()) + "; 1 on the CPU)")
    parser.add_argument("--size", type=int, default=256, help="aligned face size in pixels")
    parser.add_argument("--coverage", type=float, default=align.DEFAULT_COVERAGE,
                        help="share of the crop's width that the face's landmarks fill")
    parser.add_argument("--frames", metavar="FIRST-LAST", help="frame range FIRST-LAST (inclusive), in the shot's frame numbers")
    parser.add_argument("--every", type=int, default=1, help="take every Nth frame")
    parser.add_argument("--reference", nargs="+", default=[], metavar="IMG",
                        help="photos of the person to keep when the shot holds several people")
    parser.add_argument("--reference-face", metavar="FRAME:INDEX",
                        help="keep the person who is face INDEX (0 = largest) in FRAME of this shot")
    parser.add_argument("--identity-threshold", type=float, default=identity.SAME_PERSON,
                        help="largest embedding distance counted as the same person")
    colorspace.add_arguments(parser)
    parser.add_argument("--no-smooth", action="store_true", help="keep raw landmarks (no temporal smoothing)")
    parser.add_argument("--smooth-cutoff", type=number_in(0, 1000, above=True), default=SmoothSettings.min_cutoff,
                        help="One-Euro min cutoff in Hz: lower is smoother for a still face")
    parser.add_argument("--smooth-beta", type=number_in(0, 1000), default=SmoothSettings.beta,
                        help="One-Euro beta: higher follows fast motion more closely")


def run(args, events: Events) -> None:
    extract(
        args.input, args.output, detector=args.detector, size=args.size, coverage=args.coverage,
        frames=args.frames, every=args.every, references=args.reference, reference_face=args.reference_face,
        identity_threshold=args.identity_threshold, smoothing=not args.no_smooth,
        smooth=SmoothSettings(min_cutoff=args.smooth_cutoff, beta=args.smooth_beta),
        device=args.device, events=events, batch=args.batch, plate_colorspace=args.colorspace,
        ocio_config=args.ocio_config, **{name: getattr(args, name) for name in _detector_options()},
    )


def _detector_options() -> dict:
    """Every detector backend's own options (detect.BACKENDS), by name."""
    return {name: spec for backend in BACKENDS.values() for name, spec in backend.options.items()}


@media.holds_folder_locks
def extract(
    input: str | Path,
    output: str | Path,
    detector: str = "auto",
    size: int = 256,
    coverage: float = align.DEFAULT_COVERAGE,
    frames: str | None = None,
    every: int = 1,
    references: list[str] = (),
    reference_face: str | None = None,
    identity_threshold: float = identity.SAME_PERSON,
    smoothing: bool = True,
    smooth: SmoothSettings | None = None,
    device: str = "auto",
    events: Events | None = None,
    batch: int | None = None,
    plate_colorspace: str | None = None,
    ocio_config: str | None = None,
    **detector_options,
) -> dict:
    """Write a faceset for `input` into `output`; returns the summary that the "done" event carries.
    `detector_options` are those the detector's backend declares (detect.BACKENDS: fan_weights, cnn, ...)."""
    events = events or Events("extract")
    smooth = smooth or SmoothSettings()
    if not 32 <= size <= 2048:
        raise EngineError(f"--size {size} is out of range (32 to 2048)")
    if not 0.1 < coverage <= 1.0:
        raise EngineError(f"--coverage {coverage} is out of range (0.1 to 1)")
    if batch is not None and not 1 <= batch <= 256:
        raise EngineError(f"--batch {batch} is out of range (1 to 256)")
    source = media.FrameSource(input)
    plate = colorspace.plate_space(plate_colorspace, ocio_config, source.linear)
    numbers = source.select(frames, every)
    folder = media.check_writable(output, FACESET_FOLDERS)
    settings = {
        "source": str(source.path.resolve()),
        "frames": [numbers[0], numbers[-1]],
        "every": every,
        "size": size,
        "coverage": coverage,
        "detector": detector,
        "references": [str(Path(r).resolve()) for r in references],
        "reference_face": reference_face,
        "identity_threshold": identity_threshold,
        "smoothing": smoothing,
        "smooth": vars(smooth),
        "colorspace": plate.name,  # the plate's; the detector and faces/ see its frames as sRGB
        "ocio_config": plate.config,
    }
    check_extract_settings(folder, settings)
    media.lock_folder(folder)
    media.sweep_temp_files(folder)
    media.write_json(folder / EXTRACT_FILE, settings)
    events.start(input=str(source.path), frames=len(numbers), output=str(folder))

    from ..base.device import pick_device

    torch_device = pick_device(device) if on_torch(detector) else "cpu"
    detector_impl = make_detector(detector, str(torch_device), **detector_options)
    reference = _reference_embedding(detector_impl, references)

    if batch is None:  # frames per detector call
        batch = BACKENDS[detector_impl.name].cuda_batch if str(torch_device) == "cuda" else 1
    detections = _detect_all(source, numbers, DetectionsLog(folder), detector_impl, events, batch, plate)
    if reference is None and reference_face:
        reference = _reference_from_shot(detections, reference_face)
    chosen = _choose_person(detections, numbers, reference, identity_threshold)
    if not any(chosen.values()):
        raise EngineError(
            f"no face found in {source.path} ({len(numbers)} frames searched)"
            if not any(detections.values())
            else f"none of the faces in {source.path} is the reference person (threshold {identity_threshold})"
        )

    alignments = Alignments(
        source=str(source.path.resolve()),
        source_kind=source.kind,
        source_size=list(source.size),
        source_frames=list(source.numbers),
        fps=source.fps,
        linear=source.linear,
        face_size=size,
        coverage=coverage,
        detector=detector_impl.name,
        settings=settings,
        signature=media.shot_signature(source),
    )
    _write_faces(source, numbers, every, detections, chosen, alignments, folder, smoothing, smooth, events,
                 plate)
    alignments.complete = True
    alignments.save(folder / ALIGNMENTS_FILE)
    write_contact_sheet(folder, alignments)

    with_faces = sum(1 for f in alignments.frames if f.faces)
    summary = {
        "frames": len(numbers),
        "frames_with_faces": with_faces,
        "frames_without_faces": [f.number for f in alignments.frames if not f.faces],
        "faces": sum(len(f.faces) for f in alignments.frames),
        "detector": detector_impl.name,
        "output": str(folder),
    }
    events.done(**summary)
    return summary


# ---------------------------------------------------------------- pass 1: detect


def _detection_to_json(d: Detection, embedding: np.ndarray) -> dict:
    return {
        "bbox": np.round(d.bbox, 2).tolist(),
        "score": round(d.score, 4),
        "landmarks": np.round(d.landmarks, 3).tolist(),
        "landmark_confidence": d.landmark_confidence,
        "embedding": np.round(embedding, 6).tolist(),
    }


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _detect_all(source, numbers, detections_log: DetectionsLog, detector, events: Events, batch: int,
                plate: colorspace.Space) -> dict[int, list[dict]]:
    done = detections_log.read()
    todo = [n for n in numbers if n not in done]
    if done:
        events.resume(len(numbers) - len(todo))
    started = time.monotonic()
    already, processed = len(numbers) - len(todo), 0
    non_finite: dict[int, int] = {}  # frame number -> NaN or infinite samples, taken as 0
    with detections_log, media.Prefetch(source, todo) as decoded:
        for frames in _batches(decoded, batch):
            images = []
            for number, image in frames:
                image, bad = media.finite_pixels(image)
                if bad:
                    non_finite[number] = bad
                images.append(colorspace.display8(image, plate))
            for (number, _), rgb, found in zip(frames, images, detector.detect_batch(images), strict=True):
                embeddings = identity.embed_faces(rgb, [d.landmarks for d in found])
                done[number] = [_detection_to_json(d, e) for d, e in zip(found, embeddings, strict=True)]
                detections_log.append(number, done[number])
            detections_log.flush()
            processed += len(frames)
            fps = processed / max(time.monotonic() - started, 1e-9)
            events.progress(already + processed, len(numbers), frame=frames[-1][0], fps=round(fps, 2))
    if non_finite:
        events.warning(media.non_finite_warning(non_finite, "in its frames"), frames=sorted(non_finite))
    return {n: done[n] for n in numbers}


# ---------------------------------------------------------------- choosing the person


def _reference_embedding(detector, references: list[str]) -> np.ndarray | None:
    if not references:
        return None
    embeddings = []
    for ref in references:
        if not Path(ref).is_file():
            raise EngineError(f"reference image not found: {ref}")
        rgb = media.to_srgb8(media.read_image(ref)[..., :3])
        found = detector.detect(rgb)
        if not found:
            raise EngineError(f"no face found in reference image {ref}")
        largest = max(found, key=lambda d: d.area)
        embeddings.append(identity.embed_faces(rgb, [largest.landmarks])[0])
    return np.mean(embeddings, axis=0)


def _reference_from_shot(detections: dict[int, list[dict]], spec: str) -> np.ndarray:
    try:
        frame, index = (int(v) for v in spec.split(":"))
    except ValueError:
        raise EngineError(f"--reference-face {spec!r} is not FRAME:INDEX") from None
    faces = sorted(detections.get(frame, []), key=_area, reverse=True)
    if frame not in detections:
        raise EngineError(f"--reference-face: frame {frame} is not among the extracted frames")
    if not 0 <= index < len(faces):
        raise EngineError(f"--reference-face: frame {frame} has {len(faces)} faces, no face {index}")
    return np.asarray(faces[index]["embedding"], np.float32)


def _area(face: dict) -> float:
    x0, y0, x1, y1 = face["bbox"]
    return (x1 - x0) * (y1 - y0)


def _choose_person(detections, numbers, reference, threshold) -> dict[int, dict | None]:
    """One face per frame: the reference person, or else the person who is most often the largest face.

    Taking the identity from the whole shot (the medoid of each frame's largest face) rather than from
    the first frame means a passer-by in frame 1 cannot become the subject, and matching every frame
    to that identity means the choice never switches between people.
    """
    if reference is None:
        largest = [max(f, key=_area)["embedding"] for f in detections.values() if f]
        if not largest:
            return {n: None for n in numbers}
        reference = identity.medoid(np.asarray(largest, np.float32))
    chosen = {}
    for n in numbers:
        faces = detections[n]
        if not faces:
            chosen[n] = None
            continue
        d = identity.distances(np.asarray([f["embedding"] for f in faces]), reference)
        best = int(np.argmin(d))
        chosen[n] = faces[best] if d[best] < threshold else None
    return chosen


# ---------------------------------------------------------------- pass 2: write the faceset


def _write_faces(source, numbers, every, detections, chosen, alignments, folder, smoothing, smooth, events,
                 plate: colorspace.Space):
    raw = {n: np.asarray(f["landmarks"], np.float64) for n, f in chosen.items() if f is not None}
    smoothed = dict(raw)
    if smoothing:
        for run in runs(sorted(raw), every):
            track = smooth_landmarks(np.stack([raw[n] for n in run]), (source.fps or 25.0) / every, smooth)
            smoothed.update(zip(run, track, strict=True))

    size = alignments.face_size
    todo = []
    for n in numbers:
        frame = Frame(number=n, detections=len(detections[n]),
                      file=source.files[n].name if source.files else None)
        face = chosen[n]
        if face is not None:
            matrix = align.alignment_matrix(smoothed[n], size, alignments.coverage)
            name = f"{n:06d}_0.png"
            record = Face(
                bbox=face["bbox"],
                score=face["score"],
                landmarks=np.round(smoothed[n], 3).tolist(),
                landmarks_raw=face["landmarks"],
                matrix=matrix.tolist(),
                embedding=face["embedding"],
                image=f"faces/{name}",
                mask_hull=f"masks/hull/{name}",
                mask_extended=f"masks/extended/{name}",
                landmark_confidence=face.get("landmark_confidence"),
            )
            frame.faces.append(record)
            if not all((folder / p).is_file() for p in (record.image, record.mask_hull, record.mask_extended)):
                todo.append(n)
        alignments.frames.append(frame)

    by_number = {f.number: f for f in alignments.frames}
    with media.Prefetch(source, todo) as decoded:
        for i, (n, image) in enumerate(decoded, 1):
            face = by_number[n].faces[0]
            matrix = np.asarray(face.matrix)
            shown = colorspace.display8(media.finite_pixels(image)[0], plate)
            media.write_image(folder / face.image, align.warp_face(shown, matrix, size))
            points = align.transform_points(np.asarray(face.landmarks), matrix)
            for kind, path in (("hull", face.mask_hull), ("extended", face.mask_extended)):
                mask = masks.MASKS[kind](points, size)
                media.write_image(folder / path, np.round(mask * 255).astype(np.uint8))
            events.progress(i, len(todo), frame=n, phase="write")


def write_contact_sheet(folder: Path, alignments: Alignments, count: int = 12) -> Path:
    """contact_sheet.png: up to `count` faces spread over the shot, each beside its extended mask drawn
    over it (hull in red, extended in green), so a person sees at a glance what the faceset holds."""
    faces = [face for _, face in alignments.faces()]
    picks = [faces[i] for i in np.linspace(0, len(faces) - 1, min(count, len(faces))).round().astype(int)]
    tiles, labels = [], []
    for face in picks:
        image = media.read_image(folder / face.image)
        overlay = image.astype(np.float32)
        hull = media.read_image(folder / face.mask_hull).astype(np.float32)[..., None] / 255
        extended = media.read_image(folder / face.mask_extended).astype(np.float32)[..., None] / 255
        overlay = overlay * (1 - 0.35 * extended) + np.array([0, 255, 0]) * 0.35 * (extended - hull)
        overlay = overlay + (np.array([255, 0, 0]) - overlay) * 0.35 * hull
        tiles += [image, np.clip(overlay, 0, 255).astype(np.uint8)]
        labels += [Path(face.image).stem.split("_")[0].lstrip("0") or "0", "masks"]
    path = folder / "contact_sheet.png"
    media.write_image(path, media.contact_sheet(tiles, columns=6, labels=labels))
    return path
