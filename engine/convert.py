"""Convert: shot + alignments + model -> face layers, mattes, finished frames and patches for compositing.

    OUTPUT/
      manifest.json                  source, model and hash, settings, frame range, file patterns
      face/face_%06d.png|exr         RGBA face layer, fully transparent where no face is: premultiplied
                                     alpha in EXR (--alpha straight to change it), straight in PNG
      matte/matte_%06d.png|exr       the layer's alpha as one channel
      frames/frame_%06d.png|exr      the shot with the face composited in (--write-frames)
      patch/patch_%06d.png|exr       the swapped face in aligned space, its mask and matrices.json
      patch/patch_mask_%06d.png|exr  (--write-patches)

%06d is the source frame number. PNGs are 16-bit, EXRs 32-bit float, both in the output colour space
(engine.colorspace: the plate's; without --colorspace, sRGB PNGs and scene-linear EXRs). Every
file carries a synthetic-media marking (PNG iTXt / EXR header) with the tool, version, model hash and
settings, and nothing that depends on which frames a run was asked for, so farm chunks (--frames A-B)
write disjoint files that together are byte-identical to one full run; a rerun skips frames whose files
are already there with the same marking (every file is written atomically).

Per face: crop the frame with the stored matrix scaled to the model's size, run the decoder, match the
colour to the original face inside the mask (in aligned space), and warp face and mask back by the
exact inverse matrix (torch grid_sample, on the GPU when there is one); the mask is then eroded or
dilated and feathered in frame pixels. The layer goes over the plate in linear light, as compositing
applications do, so finished frames equal what they make of the layer. A reader thread decodes, the
model runs in batches, and a pool of writer threads encodes, so the device does not wait on PNG/EXR
encoding.

Each face sits in a fixed slot of a fixed-size batch (its ordinal in the shot modulo the batch), so
what the model computes for a face never depends on the chunk or on the faces batched beside it.
"""

import contextlib
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, colorspace, media
from .events import EngineError, Events
from .faces import align, masks
from .faceset import ALIGNMENTS_FILE, Alignments, check_same_shot
from .options import number_in

FORMATS = {"png16": ".png", "exr": ".exr"}
# EXR's convention (and what every reader assumes) is premultiplied colour; PNG's specification says straight.
ALPHA_MODES = ("premultiplied", "straight")
DEFAULT_ALPHA = {"png16": "straight", "exr": "premultiplied"}
DIRECTIONS = {"a2b": "a", "b2a": "b"}  # a2b: the shot's faces drawn by decoder A
MASK_MODES = ("predicted", "hull", "extended", "intersection")
COLOR_MODES = ("none", "avg", "rct", "hist", "seamless")
MANIFEST_FILE = "manifest.json"
MATRICES_FILE = "matrices.json"
# --feather's default: this share of the shot's median face width (the landmark box), in frame pixels.
AUTO_FEATHER = 0.06
MAX_SUPERSAMPLE = 4  # a crop that shrinks the face is averaged over up to 4x4 samples per pixel
# A mask level within 2% of 0 or 1 counts as fully outside or inside: a model's sigmoid mask never reaches
# either, which would let the plate show through the whole face and leave a faint haze around it.
MASK_SNAP = 0.02
# ... and after the warp and the feather, whose weights sum to 1 only up to float rounding.
ROUNDING_SNAP = 1e-5
MAX_ERODE, MAX_FEATHER = 500, 1000  # frame pixels: wider kernels cost time and memory for nothing
XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/'
    'compositeWithTrainedAlgorithmicMedia"/></rdf:RDF></x:xmpmeta>'
)


def add_arguments(parser) -> None:
    parser.add_argument("input", help="the shot: a video file or a folder holding an image sequence")
    parser.add_argument("--alignments", required=True, metavar="FILE", help="the shot's alignments.json (or its faceset folder)")
    parser.add_argument("--model", required=True, metavar="DIR", help="the trained model folder")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="the output folder")
    parser.add_argument("--direction", default="a2b", choices=list(DIRECTIONS),
                        help="a2b: draw the shot's faces as A (decoder A); b2a: as B")
    parser.add_argument("--mask", default="predicted", choices=MASK_MODES,
                        help="the model's mask, the landmark hull, the hull with forehead, or predicted ∩ extended")
    parser.add_argument("--erode", type=number_in(-MAX_ERODE, MAX_ERODE, kind=int), default=0, metavar="PX",
                        help="shrink the mask by PX frame pixels (negative grows it)")
    parser.add_argument("--feather", type=number_in(0, MAX_FEATHER), default=None, metavar="PX",
                        help=f"width of the mask's soft edge in frame pixels (default {AUTO_FEATHER * 100:g}%% of the face width)")
    parser.add_argument("--color", default="rct", choices=COLOR_MODES, help="colour matching to the original face")
    parser.add_argument("--detail", type=number_in(0, 4), default=0.0, metavar="AMOUNT",
                        help="add this much of the plate's own fine detail (skin, grain) onto the face, not on its eyes and mouth (0-4; 0: off; 2 suits a 64 px model)")
    parser.add_argument("--sharpen", type=number_in(0, 4), default=0.0, metavar="AMOUNT", help="unsharp-mask the face by this amount (0: off)")
    parser.add_argument("--format", default="png16", choices=list(FORMATS),
                        help="png16: 16-bit PNG; exr: 32-bit float EXR (sRGB and scene-linear without --colorspace)")
    parser.add_argument("--alpha", default=None, choices=ALPHA_MODES,
                        help="the face layer's colour: premultiplied by alpha (EXR's default) or straight "
                             "(PNG's, the only one PNG allows)")
    colorspace.add_arguments(parser, output=True)
    parser.add_argument("--frames", metavar="A-B", help="convert only frames A-B (inclusive, the shot's numbers): a farm chunk")
    parser.add_argument("--write-frames", action="store_true", help="also write finished frames to frames/")
    parser.add_argument("--write-patches", action="store_true", help="also write aligned patches to patch/")
    parser.add_argument("--batch", type=int, default=None, metavar="N", help="faces per model call (default 8 CPU, 32 CUDA)")
    parser.add_argument("--force", action="store_true",
                        help="use alignments whose shot signature does not match the input (a deliberate change of plate)")


def run(args, events: Events) -> None:
    convert(
        args.input, args.alignments, args.model, args.output, direction=args.direction, mask=args.mask,
        erode=args.erode, feather=args.feather, color=args.color, detail=args.detail, sharpen=args.sharpen,
        fmt=args.format, alpha=args.alpha, frames=args.frames, write_frames=args.write_frames,
        write_patches=args.write_patches, batch=args.batch, events=events, device=args.device, force=args.force,
        plate_colorspace=args.colorspace, output_colorspace=args.output_colorspace, ocio_config=args.ocio_config,
    )


# ---------------------------------------------------------------- the job: what to convert, and where


@dataclass
class FaceJob:
    frame: int
    index: int  # the face's place in its frame
    ordinal: int  # the face's place among all faces of the shot: fixes its batch slot
    matrix: np.ndarray  # 2x3, frame pixels -> aligned pixels at the model's size
    landmarks: np.ndarray  # 68x2, aligned pixels at the model's size


@dataclass
class Outputs:
    """The files of one frame."""

    face: Path
    matte: Path
    frame: Path | None = None
    patches: list[tuple[Path, Path]] = field(default_factory=list)

    def all(self) -> list[Path]:
        return [self.face, self.matte] + ([self.frame] if self.frame else []) + [p for pair in self.patches for p in pair]


def _patch_names(number: int, index: int, ext: str) -> tuple[str, str]:
    suffix = "" if index == 0 else f"_{index}"  # extract keeps one face a frame; more get a suffix
    return f"patch_{number:06d}{suffix}{ext}", f"patch_mask_{number:06d}{suffix}{ext}"


def _outputs(folder: Path, number: int, faces: int, ext: str, write_frames: bool, write_patches: bool) -> Outputs:
    out = Outputs(folder / "face" / f"face_{number:06d}{ext}", folder / "matte" / f"matte_{number:06d}{ext}")
    if write_frames:
        out.frame = folder / "frames" / f"frame_{number:06d}{ext}"
    if write_patches:
        out.patches = [tuple(folder / "patch" / n for n in _patch_names(number, i, ext)) for i in range(faces)]
    return out


def check_alignments(alignments: Alignments, source: media.FrameSource, where: Path) -> None:
    if not alignments.complete:
        raise EngineError(f"alignments {where} are incomplete: their extract did not finish (rerun it to resume)")
    if tuple(alignments.source_size) != tuple(source.size):
        w, h = alignments.source_size
        raise EngineError(
            f"alignments {where} are for a {w}x{h} shot but {source.path} is {source.size[0]}x{source.size[1]}"
        )
    if len(alignments.source_frames) != len(source.numbers):
        raise EngineError(
            f"alignments {where} are for a shot of {len(alignments.source_frames)} frames "
            f"but {source.path} has {len(source.numbers)}"
        )
    if list(alignments.source_frames) != list(source.numbers):
        raise EngineError(
            f"alignments {where} number their frames {alignments.source_frames[0]}-{alignments.source_frames[-1]} "
            f"but {source.path} numbers them {source.numbers[0]}-{source.numbers[-1]}"
        )


def _check_model(config, alignments: Alignments, model_dir: Path) -> None:
    """The model must have learnt faces framed as the alignments frame them: the matrices scale to any
    size, but a different coverage puts the face elsewhere in the crop than the model expects."""
    if config.coverage and abs(config.coverage - alignments.coverage) > 1e-6:
        raise EngineError(
            f"model {model_dir} was trained on faces at coverage {config.coverage:g} "
            f"(face size {config.face_size}), but the alignments are at coverage {alignments.coverage:g} "
            f"(face size {alignments.face_size}): extract the shot with the model's coverage"
        )


def _face_scale(matrix) -> float:
    """Aligned pixels per frame pixel of a similarity matrix."""
    m = np.asarray(matrix, np.float64)
    return math.sqrt(abs(np.linalg.det(m[:, :2])))


def _auto_feather(alignments: Alignments) -> float:
    widths = [alignments.coverage * alignments.face_size / _face_scale(f.matrix) for _, f in alignments.faces()]
    return round(AUTO_FEATHER * float(np.median(widths)), 1) if widths else 0.0


def _face_jobs(alignments: Alignments, size: int) -> dict[int, list[FaceJob]]:
    """Every frame's faces, with matrices and landmarks at the model's size and a shot-wide ordinal."""
    jobs: dict[int, list[FaceJob]] = {}
    ordinal = 0
    for frame in sorted(alignments.frames, key=lambda f: f.number):
        jobs[frame.number] = []
        for index, face in enumerate(frame.faces):
            matrix = align.scale_matrix(face.matrix, alignments.face_size, size)
            landmarks = align.transform_points(np.asarray(face.landmarks), matrix)
            jobs[frame.number].append(FaceJob(frame.number, index, ordinal, matrix, landmarks))
            ordinal += 1
    return jobs


# ---------------------------------------------------------------- markings, manifest, matrices


def _marking(common: dict, content: str, number: int) -> dict[str, str]:
    """The synthetic-media marking written into every file: a readable JSON record and the IPTC
    DigitalSourceType that image tools and platforms look for."""
    record = {**common, "content": content, "frame": number}
    return {
        "Software": f"FaceReplace {__version__}",
        "facereplace": json.dumps(record, sort_keys=True),
        "XML:com.adobe.xmp": XMP,
    }


def read_marking(path: str | Path) -> dict | None:
    """The FaceReplace record in an output file's metadata, or None if it has none or cannot be read."""
    try:
        return json.loads(media.image_metadata(path)["facereplace"])
    except Exception:  # a missing, foreign or damaged file: treated as not converted
        return None


def _is_complete(outputs: Outputs, common: dict) -> bool:
    if not all(p.is_file() for p in outputs.all()):
        return False
    marking = read_marking(outputs.face)
    return marking is not None and all(marking.get(k) == v for k, v in common.items())


def _matrices(jobs: dict[int, list[FaceJob]], size: int, ext: str, frame_size) -> dict:
    """matrices.json: for each frame, each patch's transform. Written from the alignments for the whole
    shot, so every chunk writes the same file."""
    frames = {}
    for number, faces in jobs.items():
        entries = []
        for job in faces:
            inverse = align.invert_matrix(job.matrix)
            edges = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]])
            corners = align.transform_points(edges, inverse) + 0.5
            patch, mask = _patch_names(number, job.index, ext)
            entries.append({
                "patch": patch,
                "mask": mask,
                "matrix": np.round(job.matrix, 9).tolist(),
                "inverse": np.round(inverse, 9).tolist(),
                "corners": np.round(corners, 4).tolist(),
            })
        frames[str(number)] = entries
    return {
        "format": "facereplace.patches",
        "version": 1,
        "patch_size": size,
        "frame_size": list(frame_size),
        "convention": (
            "matrix maps frame pixels to patch pixels and inverse maps back, both 2x3 with pixel centres "
            "at integer coordinates (OpenCV: cv2.warpAffine(patch, inverse, frame_size)); corners are the "
            "patch's top-left, top-right, bottom-right and bottom-left edges in frame coordinates with "
            "the origin at the frame's top-left edge, y down (for a corner pin)"
        ),
        "frames": frames,
    }


# ---------------------------------------------------------------- pixels on the device


def _sample(image, pixel_map: np.ndarray, out_w: int, out_h: int, mode: str, padding: str):
    """grid_sample `image` (1 x C x H x W) at output pixels (x, y) -> input pixels pixel_map @ (x, y, 1).

    Pixel centres sit at integer coordinates, as in OpenCV's warpAffine. The pixel-to-normalised scaling
    is folded into the 2x3 in float64 first, so float32 grids stay sub-pixel exact on 4K frames.
    """
    import torch
    from torch.nn import functional as F

    h, w = image.shape[-2:]
    to_normal = np.array([[2 / max(w - 1, 1), 0, -1], [0, 2 / max(h - 1, 1), -1], [0, 0, 1]])
    theta = torch.tensor((to_normal @ np.vstack([pixel_map, [0, 0, 1]]))[:2], dtype=torch.float32,
                         device=image.device)
    ys = torch.arange(out_h, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    xs = torch.arange(out_w, dtype=torch.float32, device=image.device).view(1, -1, 1)
    grid = xs * theta[:, 0] + ys * theta[:, 1] + theta[:, 2]
    return F.grid_sample(image, grid[None], mode=mode, padding_mode=padding, align_corners=True)


def _dilate(mask, radius: int, outside: float):
    """Grey dilation of 1 x 1 x H x W by a disk of `radius` pixels: the max, over the disk's rows, of a
    horizontal running max as wide as that row. `outside` is the value beyond the edges."""
    import torch
    from torch.nn import functional as F

    h, w = mask.shape[-2:]
    padded = F.pad(mask, (radius, radius, radius, radius), value=outside)
    row_max, out = {}, None
    for dy in range(-radius, radius + 1):
        half = int(math.isqrt(radius * radius - dy * dy))
        if half not in row_max:
            row_max[half] = F.max_pool2d(padded, (1, 2 * half + 1), stride=1, padding=(0, half))
        rows = row_max[half][..., radius + dy : radius + dy + h, radius : radius + w]
        out = rows if out is None else torch.maximum(out, rows)
    return out


def feather_radius(feather: float) -> int:
    """How far, in whole pixels, the feather reaches beyond the mask's edge: half its width."""
    return int(feather // 2)


def snap_levels(mask, within: float):
    """Stretch [within, 1 - within] to [0, 1] and clip: levels that close to 0 or 1 become exactly 0 or 1."""
    return ((mask - within) / (1 - 2 * within)).clamp(0.0, 1.0)


def shape_mask(mask, erode: int, feather: float):
    """Erode (or, negative, dilate) by `erode` pixels with a round kernel, then feather: a Gaussian with
    sigma feather/4 cut at feather/2, so the edge fades from exactly 0 to exactly 1 over `feather` pixels
    (2% to 98% over 0.87 of them) and the matte is solid inside and clean outside."""
    from .detail import gaussian_blur

    if erode > 0:
        mask = 1 - _dilate(1 - mask, erode, outside=1.0)
    elif erode < 0:
        mask = _dilate(mask, -erode, outside=0.0)
    if feather_radius(feather) > 0:
        mask = gaussian_blur(mask, feather / 4, "zeros", feather_radius(feather))
    return snap_levels(mask, ROUNDING_SNAP)


@dataclass
class FaceResult:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels, clipped to the frame
    color: object  # 3 x h x w tensor, the shot's own space
    alpha: object  # 1 x h x w tensor
    patch: np.ndarray | None = None  # S x S x 3 sRGB float, for --write-patches
    patch_mask: np.ndarray | None = None


class Converter:
    """The per-face and per-frame pixel work, on one torch device."""

    def __init__(self, model, size: int, device, identity: str, mask: str, erode: int, feather: float,
                 color: str, colour: colorspace.ShotColour, keep_patches: bool, detail: float = 0.0,
                 sharpen: float = 0.0):
        self.model, self.size, self.device, self.identity = model, size, device, identity
        self.mask_mode, self.erode, self.feather, self.color = mask, erode, feather, color
        self.colour = colour  # the model works in display sRGB, the plate and faces in the plate's space
        self.keep_patches = keep_patches
        self.detail, self.sharpen = detail, sharpen
        self.margin = 2 + max(-erode, 0) + feather_radius(feather)

    # -- geometry

    def face_box(self, job: FaceJob) -> tuple[int, int, int, int]:
        """Frame pixels the face can touch: its crop's footprint plus the dilate/feather margin (not clipped)."""
        s = self.size
        edges = np.array([[-0.5, -0.5], [s - 0.5, -0.5], [s - 0.5, s - 0.5], [-0.5, s - 0.5]])
        corners = align.transform_points(edges, align.invert_matrix(job.matrix))
        x0, y0 = np.floor(corners.min(0)).astype(int) - self.margin
        x1, y1 = np.ceil(corners.max(0)).astype(int) + self.margin + 1
        return int(x0), int(y0), int(x1), int(y1)

    @staticmethod
    def clip(box, frame_size) -> tuple[int, int, int, int]:
        """`box` within the frame. A detected face's crop always overlaps its frame, so this is never empty."""
        w, h = frame_size
        return max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)

    # -- per frame: upload, crop

    def upload(self, image: np.ndarray, box):
        """The frame's region `box` as a 1 x 3 x h x w float tensor in the shot's own space."""
        import torch

        x0, y0, x1, y1 = box
        pixels = image[y0:y1, x0:x1]
        if pixels.dtype == np.uint16:
            pixels = pixels.astype(np.float32) / 65535.0
        region = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        if region.dtype == torch.uint8:  # sent as bytes, a quarter of the float traffic
            region = region.float() / 255.0
        return region.permute(2, 0, 1)[None]

    def crop(self, region, origin, job: FaceJob):
        """The aligned face at the model's size, as sRGB in [0, 1], from the uploaded region.

        Where the face is larger in the frame than the crop, each crop pixel averages k x k samples
        (a box prefilter), so a downscaled face is not aliased.
        """
        from torch.nn import functional as F

        k = min(max(math.ceil(1 / _face_scale(job.matrix) - 1e-6), 1), MAX_SUPERSAMPLE)
        # supersampled pixel j sits at aligned coordinate (j + 0.5) / k - 0.5
        sub_to_aligned = np.array([[1 / k, 0, 0.5 / k - 0.5], [0, 1 / k, 0.5 / k - 0.5], [0, 0, 1]])
        aligned_to_frame = np.vstack([align.invert_matrix(job.matrix), [0, 0, 1]])
        frame_to_region = np.array([[1, 0, -origin[0]], [0, 1, -origin[1]], [0, 0, 1]])
        pixel_map = (frame_to_region @ aligned_to_frame @ sub_to_aligned)[:2]
        face = _sample(region, pixel_map, self.size * k, self.size * k, "bicubic", "reflection")
        if k > 1:
            face = F.avg_pool2d(face, k)
        face = colorspace.convert_tensor(face, self.colour.plate, colorspace.MODEL)
        return face[0].clamp(0.0, 1.0)

    # -- per face: mask, colour, warp back

    def finish_face(self, job: FaceJob, crop, rgb, predicted, frame_size, region=None, origin=(0, 0)) -> FaceResult:
        """Mask, colour-match and warp one swapped face back into frame pixels."""
        from .color import match_color

        mask = snap_levels(self.choose_mask(job, predicted), MASK_SNAP)
        face = match_color(self.color, rgb[None], crop[None], mask[None])[0]
        box = self.face_box(job)
        clipped = self.clip(box, frame_size)
        shot_face = colorspace.convert_tensor(face, colorspace.MODEL, self.colour.plate)
        w, h = box[2] - box[0], box[3] - box[1]
        frame_to_aligned = (np.vstack([job.matrix, [0, 0, 1]]) @ np.array([[1, 0, box[0]], [0, 1, box[1]], [0, 0, 1]]))[:2]
        color = _sample(shot_face[None], frame_to_aligned, w, h, "bicubic", "border")[0].clamp(min=0.0)
        if self.detail or self.sharpen:
            color = self.add_detail(color, job, frame_to_aligned, region, origin, box)
        if not self.colour.plate.scene_linear:  # a display-referred or log plate holds 0-1
            color = color.clamp(max=1.0)
        alpha = _sample(mask[None], frame_to_aligned, w, h, "bilinear", "zeros")
        alpha = shape_mask(alpha, self.erode, self.feather)[0]
        cx0, cy0, cx1, cy1 = clipped
        inside = (slice(None), slice(cy0 - box[1], cy1 - box[1]), slice(cx0 - box[0], cx1 - box[0]))
        result = FaceResult(clipped, color[inside], alpha[inside])
        if self.keep_patches:
            result.patch, result.patch_mask = face.permute(1, 2, 0).cpu().numpy(), mask[0].cpu().numpy()
        return result

    def add_detail(self, color, job: FaceJob, frame_to_aligned, region, origin, box):
        """--sharpen and --detail (engine.detail) on the face in frame pixels (3 x h x w over `box`)."""
        import torch

        from .detail import gaussian_blur, restore_detail, sharpen

        if self.sharpen:  # at the scale of the model's pixels, as enlarged into the frame
            color = sharpen(color[None], self.sharpen, max(1.0, 1 / _face_scale(job.matrix)))[0]
        if self.detail:
            features = np.maximum(masks.eyes_mask(job.landmarks, self.size), masks.mouth_mask(job.landmarks, self.size))
            features = gaussian_blur(torch.from_numpy(features).to(color)[None, None], self.size / 64, "zeros")
            w, h = box[2] - box[0], box[3] - box[1]
            keep = 1 - _sample(features, frame_to_aligned, w, h, "bilinear", "zeros")
            to_region = np.array([[1.0, 0, box[0] - origin[0]], [0, 1.0, box[1] - origin[1]]])
            plate = _sample(region, to_region, w, h, "nearest", "border")  # the same pixels, edges repeated
            color = restore_detail(color[None], plate, keep, self.detail)[0].clamp(min=0.0)
        return color

    def choose_mask(self, job: FaceJob, predicted):
        import torch

        if self.mask_mode == "predicted":
            return predicted
        kind = "hull" if self.mask_mode == "hull" else "extended"
        drawn = torch.from_numpy(masks.MASKS[kind](job.landmarks, self.size)).to(predicted)[None]
        return torch.minimum(drawn, predicted) if self.mask_mode == "intersection" else drawn

    # -- per frame: composite

    def composite(self, region, origin, results: list[FaceResult]) -> "Composite":
        """Alpha-over of the frame's faces over the uploaded region, in linear light (an sRGB shot is
        decoded first), as compositing applications do it."""
        import torch

        def linear(t):
            return colorspace.convert_tensor(t, self.colour.plate, self.colour.working)

        _, _, h, w = region.shape
        premultiplied = torch.zeros(3, h, w, device=region.device)
        alpha = torch.zeros(1, h, w, device=region.device)
        for r in results:
            x0, y0, x1, y1 = r.box
            window = (slice(None), slice(y0 - origin[1], y1 - origin[1]), slice(x0 - origin[0], x1 - origin[0]))
            premultiplied[window] = premultiplied[window] * (1 - r.alpha) + linear(r.color) * r.alpha
            alpha[window] = alpha[window] * (1 - r.alpha) + r.alpha
        finished = linear(region[0]) * (1 - alpha) + premultiplied

        def to_numpy(t):
            return t.permute(1, 2, 0).float().cpu().numpy()

        return Composite(to_numpy(premultiplied), to_numpy(alpha)[..., 0], to_numpy(finished))


@dataclass
class Composite:
    """A frame's faces over its region (h x w float32 numpy, the run's working space): the layer and the result."""

    premultiplied: np.ndarray  # h x w x 3, colour times alpha
    alpha: np.ndarray  # h x w
    finished: np.ndarray  # h x w x 3, the region with the layer over it

    def straight(self) -> np.ndarray:
        """The layer's colour un-premultiplied (zero where alpha is)."""
        alpha = self.alpha[..., None]
        return np.where(alpha > 0, self.premultiplied / np.maximum(alpha, 1e-12), 0.0).astype(np.float32)


# ---------------------------------------------------------------- files


def encode(image: np.ndarray, space: colorspace.Space, output: colorspace.Space, fmt: str) -> np.ndarray:
    """Pixels in `space` (uint8/uint16 or float) as the output stores them: in the `output` space, 16-bit
    for png16, float for exr. A float image already in `output` comes back as it is, bit for bit."""
    image = colorspace.convert(colorspace.as_float(image), space, output)
    if fmt == "exr":
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)


def encode_matte(alpha: np.ndarray, fmt: str) -> np.ndarray:
    return alpha.astype(np.float32) if fmt == "exr" else np.round(np.clip(alpha, 0, 1) * 65535.0).astype(np.uint16)


@dataclass
class FrameWork:
    """One frame on its way through: its image, its uploaded region and the results of its faces."""

    number: int
    image: np.ndarray | None
    jobs: list[FaceJob]
    outputs: Outputs
    box: tuple[int, int, int, int] | None = None
    region: object = None
    crops: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


def encode_layer(composed: Composite, fmt: str, alpha_mode: str, colour: colorspace.ShotColour) -> np.ndarray:
    """The RGBA face layer's pixels: premultiplied EXR, or straight colour in either format."""
    matte = encode_matte(composed.alpha, fmt)
    if alpha_mode == "premultiplied" and colour.working == colour.output:
        color = composed.premultiplied
    elif alpha_mode == "premultiplied":
        color = encode(composed.straight(), colour.working, colour.output, fmt) * composed.alpha[..., None]
    else:
        opaque = matte > 0  # as stored: a 16-bit zero is transparent however small the float
        color = np.where(opaque[..., None], encode(composed.straight(), colour.working, colour.output, fmt), 0)
    return np.dstack([color, matte]).astype(matte.dtype)


def _write_frame(work: FrameWork, composed: Composite | None, frame_size, colour: colorspace.ShotColour, fmt: str,
                 common: dict) -> None:
    """Encode and write one frame's files. The face layer goes last, so its presence (with the right
    marking) means the frame is complete."""
    w, h = frame_size
    out = work.outputs
    empty = np.float32 if fmt == "exr" else np.uint16
    layer = np.zeros((h, w, 4), empty)
    finished = encode(work.image, colour.plate, colour.output, fmt) if out.frame else None
    if composed is not None:
        x0, y0, x1, y1 = work.box
        layer[y0:y1, x0:x1] = encode_layer(composed, fmt, common["alpha"], colour)
        if finished is not None:  # pixels the layer does not reach keep the shot's own values exactly
            touched = layer[y0:y1, x0:x1, 3:] > 0
            finished[y0:y1, x0:x1] = np.where(touched, encode(composed.finished, colour.working, colour.output, fmt), finished[y0:y1, x0:x1])
    matte = np.ascontiguousarray(layer[..., 3])
    for index, (patch_path, mask_path) in enumerate(out.patches):
        result = work.results[index]
        media.write_image(patch_path, encode(result.patch, colorspace.MODEL, colour.output, fmt), _marking(common, "patch", work.number))
        media.write_image(mask_path, encode_matte(result.patch_mask, fmt), _marking(common, "patch_mask", work.number))
    media.write_image(out.matte, matte, _marking(common, "matte", work.number))
    if finished is not None:
        media.write_image(out.frame, finished, _marking(common, "frame", work.number))
    media.write_image(out.face, layer, _marking(common, "face", work.number))


class StageClock:
    """Busy seconds per pipeline stage, summed over the threads that run it. The stages overlap, so
    the slowest one (per thread that runs it) sets the frame rate."""

    STAGES = ("decode", "model", "warp_blend", "encode")

    def __init__(self):
        self.seconds = dict.fromkeys(self.STAGES, 0.0)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] += time.perf_counter() - started


# ---------------------------------------------------------------- the public function


@media.holds_folder_locks
def convert(
    input: str | Path,
    alignments: str | Path,
    model_dir: str | Path,
    output: str | Path,
    direction: str = "a2b",
    mask: str = "predicted",
    erode: int = 0,
    feather: float | None = None,
    color: str = "rct",
    detail: float = 0.0,
    sharpen: float = 0.0,
    fmt: str = "png16",
    alpha: str | None = None,
    frames: str | None = None,
    write_frames: bool = False,
    write_patches: bool = False,
    batch: int | None = None,
    events: Events | None = None,
    device: str = "auto",
    force: bool = False,
    plate_colorspace: str | None = None,
    output_colorspace: str | None = None,
    ocio_config: str | None = None,
) -> dict:
    """Convert `input` (a video or image folder) with its alignments and a trained model into `output`.
    `force` converts with alignments whose shot signature does not match `input`.
    Returns the summary that the "done" event carries."""
    events = events or Events("convert")
    for name, value, allowed in (("direction", direction, DIRECTIONS), ("mask", mask, MASK_MODES),
                                 ("color", color, COLOR_MODES), ("format", fmt, FORMATS)):
        if value not in allowed:
            raise EngineError(f"--{name} {value!r} is not one of {', '.join(allowed)}")
    alpha = alpha or DEFAULT_ALPHA[fmt]
    if alpha not in ALPHA_MODES:
        raise EngineError(f"--alpha {alpha!r} is not one of {', '.join(ALPHA_MODES)}")
    if fmt == "png16" and alpha != "straight":
        raise EngineError("--alpha premultiplied needs --format exr: PNG holds straight alpha only, by its "
                          "specification, and every reader takes it so")
    if feather is not None and not 0 <= feather <= MAX_FEATHER:
        raise EngineError(f"--feather must be 0 to {MAX_FEATHER}, got {feather}")
    if not -MAX_ERODE <= erode <= MAX_ERODE:
        raise EngineError(f"--erode must be {-MAX_ERODE} to {MAX_ERODE}, got {erode}")
    for name, value in (("detail", detail), ("sharpen", sharpen)):
        if not 0 <= value <= 4:
            raise EngineError(f"--{name} must be between 0 and 4, got {value}")
    if batch is not None and batch < 1:
        raise EngineError(f"--batch must be 1 or more, got {batch}")

    source = media.FrameSource(input)
    colour = _colour(source, fmt, plate_colorspace, output_colorspace, ocio_config)
    alignments_path = Path(alignments)
    if alignments_path.is_dir():
        alignments_path = alignments_path / ALIGNMENTS_FILE
    shot = Alignments.load(alignments_path)
    check_alignments(shot, source, alignments_path)
    check_same_shot(shot, source, alignments_path, force, events.warning)
    if Path(shot.source) != source.path.resolve():  # a regraded or re-exported plate is fine, a wrong one is not
        events.warning(f"the alignments were made from {shot.source}; converting {source.path.resolve()} with them")
    numbers = source.select(frames)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EngineError(f"model folder not found: {model_dir}")

    import torch

    from .device import pick_device
    from .model import load_model, model_hash

    torch_device = pick_device(device)
    if torch_device.type == "cuda":  # the same algorithms in every process, so chunks match a full run
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    model, config = load_model(model_dir, torch_device, warn=events.warning)
    _check_model(config, shot, model_dir)
    folder = media.check_writable(output)  # last: a refused input leaves no folder behind
    media.lock_folder(folder, shared=frames is not None)  # farm chunks write one folder side by side
    if frames is None:  # alone in the folder: what a killed run left half-written can go
        media.sweep_temp_files(folder)
    size = config.size
    ext = FORMATS[fmt]
    feather = _auto_feather(shot) if feather is None else float(feather)
    settings = {"direction": direction, "mask": mask, "erode": erode, "feather": feather, "color": color,
                "format": fmt, "colour": colour.record(), **({"detail": detail, "sharpen": sharpen} if detail or sharpen else {})}
    common = {"tool": "FaceReplace", "engine": __version__, "synthetic": True, "alpha": alpha,
              "model_hash": model_hash(model_dir, model.checkpoint), "settings": settings}

    jobs = _face_jobs(shot, size)
    missing = [n for n in numbers if n not in jobs]
    if missing:
        events.warning(f"{len(missing)} frames of the selection have no alignments (extracted with --every or "
                       f"--frames?); they get blank layers", frames=missing)
    work = {n: FrameWork(n, None, jobs.get(n, []),
                         _outputs(folder, n, len(jobs.get(n, [])), ext, write_frames, write_patches))
            for n in numbers}
    todo = [n for n in numbers if not _is_complete(work[n].outputs, common)]
    _write_manifest(folder, source, shot, alignments_path, model_dir, config, common, ext, write_frames,
                    write_patches, jobs, events, colour)
    if write_patches:
        media.write_json(folder / "patch" / MATRICES_FILE, _matrices(jobs, size, ext, source.size))

    events.start(input=str(source.path), frames=len(numbers), todo=len(todo), output=str(folder),
                 device=str(torch_device), model_size=size)
    if len(todo) < len(numbers):
        events.emit("resume", frames_done=len(numbers) - len(todo))
    batch = batch or (32 if torch_device.type == "cuda" else 8)
    converter = Converter(model, size, torch_device, DIRECTIONS[direction], mask, erode, feather, color,
                          colour, write_patches, detail, sharpen)
    # On the CPU the cores are shared: half for torch, the rest for the reader and the writers, which
    # would otherwise preempt torch's worker threads mid-operation and stall every small warp.
    cores = len(os.sched_getaffinity(0))
    torch_threads = torch.get_num_threads()
    if torch_device.type == "cpu":
        torch.set_num_threads(max(1, cores // 2))
    try:
        writers = min(8, max(1, cores - (torch.get_num_threads() if torch_device.type == "cpu" else 1)))
        run = _Run(converter, source, fmt, common, batch, writers, events, len(numbers), len(numbers) - len(todo))
        run.process([work[n] for n in todo], needs_pixels=write_frames)
    finally:
        torch.set_num_threads(torch_threads)

    in_selection = [n for n in numbers if jobs.get(n)]
    summary = {
        "frames": len(numbers),
        "converted": len(todo),
        "skipped": len(numbers) - len(todo),
        "frames_with_faces": len(in_selection),
        "faces": sum(len(jobs[n]) for n in in_selection),
        "fps": round(len(todo) / max(time.monotonic() - run.started, 1e-9), 2),
        "stage_seconds": {k: round(v, 3) for k, v in run.clock.seconds.items()},
        "output": str(folder),
    }
    events.done(**summary)
    return summary


def _colour(source, fmt, plate: str | None, output: str | None, config: str | None) -> colorspace.ShotColour:
    """The run's spaces. Files are written in the plate's space, except that exr files of a display-referred
    plate hold the config's scene-linear space, as EXR's convention is. Without names, as before colour
    management: an 8/16-bit plate is sRGB and a float one linear Rec.709, png16 files are written in sRGB
    and exr files in linear Rec.709."""
    plate_space = colorspace.plate_space(plate, config, source.linear)
    if output:
        return colorspace.ShotColour(plate_space, colorspace.resolve(output, config))
    if plate:
        linear = fmt == "exr" and not plate_space.scene_linear
        return colorspace.ShotColour(plate_space, colorspace.resolve("scene_linear", config) if linear else plate_space)
    return colorspace.ShotColour(plate_space, colorspace.BUILTIN_LINEAR if fmt == "exr" else colorspace.MODEL)


def _write_manifest(folder, source, shot, alignments_path, model_dir, config, common, ext, write_frames,
                    write_patches, jobs, events, colour) -> None:
    """manifest.json: the same bytes from every chunk of one job, so parallel chunks can all write it."""
    path = folder / MANIFEST_FILE
    files = {"face": f"face/face_%06d{ext}", "matte": f"matte/matte_%06d{ext}"}
    if write_frames:
        files["frames"] = f"frames/frame_%06d{ext}"
    if write_patches:
        files.update(patch=f"patch/patch_%06d{ext}", patch_mask=f"patch/patch_mask_%06d{ext}",
                     matrices=f"patch/{MATRICES_FILE}")
    manifest = {
        "format": "facereplace.convert",
        "version": 1,
        **common,
        "source": str(source.path.resolve()),
        "source_kind": source.kind,
        "source_size": list(source.size),
        "fps": source.fps,
        "linear": source.linear,
        "alignments": str(alignments_path.resolve()),
        "model": str(model_dir.resolve()),
        "model_size": config.size,
        "colorspace": colour.output.name,  # of every file written
        "plate_colorspace": colour.plate.name,
        "ocio_config": colour.output.config,
        "frame_range": [source.numbers[0], source.numbers[-1]],
        "frame_numbers": list(source.numbers),
        "frames_with_faces": [n for n, faces in jobs.items() if faces],
        "folders": {"face": "face", "matte": "matte", "frames": "frames" if write_frames else None,
                    "patch": "patch" if write_patches else None},
        "files": files,
    }
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (ValueError, RecursionError):
            old = {}
        old = old if isinstance(old, dict) else {}
        if old.get("settings") != manifest["settings"] or old.get("model_hash") != manifest["model_hash"]:
            events.warning(f"{folder} held a conversion with other settings or another model; frames outside "
                           f"this run's selection keep the old result")
    media.write_json(path, manifest)


class _Run:
    """One pass over the frames to do: reader thread -> batched model -> writer pool."""

    def __init__(self, converter: Converter, source, fmt, common, batch, workers, events, total, done):
        self.converter, self.source, self.fmt, self.common = converter, source, fmt, common
        self.batch, self.events, self.total, self.done = batch, events, total, done
        self.slots: dict[int, tuple[FrameWork, FaceJob]] = {}
        self.pending: dict[int, FrameWork] = {}
        self.workers = workers
        self.writers = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="convert-write")
        self.futures: list = []
        self.clock = StageClock()
        self.started = time.monotonic()
        self.converted = 0

    def process(self, todo: list[FrameWork], needs_pixels: bool) -> None:
        reading = [w for w in todo if w.jobs or needs_pixels]
        try:
            for w in todo:
                if not w.jobs and not needs_pixels:
                    self._submit(w, None)
            numbers = [w.number for w in reading]
            with media.Prefetch(self.source, numbers, max(4, self.batch), lambda: self.clock("decode")) as frames:
                by_number = {w.number: w for w in reading}
                for number, image in frames:
                    self._add(by_number[number], image)
                self._run_batch()
            for future in self.futures:
                future.result()
        finally:
            self.writers.shutdown(wait=True, cancel_futures=True)

    def _add(self, work: FrameWork, image: np.ndarray) -> None:
        import torch

        work.image = image
        if not work.jobs:  # read only for its finished frame
            self._submit(work, None)
            return
        conv = self.converter
        boxes = [conv.clip(conv.face_box(j), self.source.size) for j in work.jobs]
        work.box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
        with torch.inference_mode(), self.clock("warp_blend"):
            work.region = conv.upload(image, work.box)
            for job in work.jobs:
                work.crops[job.index] = conv.crop(work.region, work.box[:2], job)
        self.pending[work.number] = work
        for job in work.jobs:
            slot = job.ordinal % self.batch
            if slot in self.slots:
                self._run_batch()
            self.slots[slot] = (work, job)

    def _run_batch(self) -> None:
        import torch

        if not self.slots:
            return
        conv = self.converter
        with torch.inference_mode(), self.clock("model"):
            faces = torch.zeros(self.batch, 3, conv.size, conv.size, device=conv.device)
            for slot, (work, job) in self.slots.items():
                faces[slot] = work.crops[job.index]
            rgb, predicted = conv.model.swap(faces, conv.identity)
            if conv.device.type == "cuda":  # the time is the model's, not the first warp's that waits on it
                torch.cuda.synchronize(conv.device)
        with torch.inference_mode(), self.clock("warp_blend"):
            for slot, (work, job) in self.slots.items():
                work.results[job.index] = conv.finish_face(job, work.crops.pop(job.index), rgb[slot], predicted[slot],
                                                           self.source.size, work.region, work.box[:2])
            self.slots.clear()
            finished = []
            for number in [n for n, w in self.pending.items() if len(w.results) == len(w.jobs)]:
                work = self.pending.pop(number)
                finished.append((work, conv.composite(work.region, work.box[:2], list(work.results.values()))))
                work.region = None
        for work, composed in finished:
            self._submit(work, composed)

    def _submit(self, work: FrameWork, composed) -> None:
        # Keep at most a few frames per writer in flight (memory), and raise a writer's error promptly.
        while self.futures and (self.futures[0].done() or len(self.futures) > 2 * self.workers):
            self.futures.pop(0).result()
        self.futures.append(self.writers.submit(self._write, work, composed))
        self.done += 1
        self.converted += 1
        fps = self.converted / max(time.monotonic() - self.started, 1e-9)
        self.events.progress(self.done, self.total, frame=work.number, fps=round(fps, 2))

    def _write(self, work: FrameWork, composed) -> None:
        with self.clock("encode"):
            _write_frame(work, composed, self.source.size, self.converter.colour, self.fmt, self.common)
