"""Convert: shot + alignments + model -> face layers, mattes, finished frames and patches for compositing.

The output folder's layout, file patterns, markings and encodings are engine.folders.output's. A rerun skips
frames whose files are already there with the same marking (every file is written atomically), so
farm chunks (--frames FIRST-LAST) write disjoint files that together are byte-identical to one full run.

Per face: crop the frame with the stored matrix scaled to the model's size (or, when the model folder
holds an enhancer, to its size: the crop is shrunk to the model's, and the decoder's face enhanced back
to it, engine.networks.enhancer), run the decoder, match the colour to the original face inside the mask (in
aligned space), and warp face and mask back by the exact inverse matrix (torch grid_sample, on the GPU
when there is one); the mask is then eroded or dilated and feathered in frame pixels. The layer goes over the plate in linear light, as compositing
applications do, so finished frames equal what they make of the layer. A reader thread decodes, the
model runs in batches, and a pool of writer threads encodes, so the device does not wait on PNG/EXR
encoding.

Each face sits in a fixed slot of a fixed-size batch (its ordinal in the shot modulo the batch), so
what the model computes for a face never depends on the chunk or on the faces batched beside it.
"""

import contextlib
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..base import colorspace, media
from ..base.color import COLOR_MODES
from ..base.composite import over, straight
from ..base.events import EngineError, Events
from ..base.options import Choice, add_fields, check, from_args
from ..faces import align, expression, masks
from ..folders import exr_layers
from ..folders.faceset import (
    ALIGNMENTS_FILE,
    LEARNED_MASKS,
    Alignments,
    check_alignments,
    check_same_shot,
    learned_mask,
    read_face_image,
)
from ..folders.output import (
    ALPHA_MODES,
    DEFAULT_ALPHA,
    FORMATS,
    MULTILAYER,
    Outputs,
    encode,
    encode_layer,
    encode_matte,
    file_patterns,
    frame_outputs,
    is_complete,
    marking,
    matrices,
    write_manifest,
)

DIRECTIONS = {"a2b": "a", "b2a": "b"}  # a2b: the shot's faces drawn by A's decoder
ENHANCER_MODES = {
    "auto": Choice("Auto", "The model folder's enhancer when it has one (engine enhance), with a2b"),
    "off": Choice("Off", "The face model's output at its own size"),
}
MASK_MODES = {
    "predicted": Choice("Predicted", "The mask the model draws"),
    "hull": Choice("Landmark Hull", "The hull of the face's landmarks"),
    "extended": Choice("Extended", "The hull reaching up to the forehead"),
    "intersection": Choice("Intersection", "Where the predicted and the extended mask agree"),
    "learned": Choice("Learned", "The occlusion matte trained in Masks: occluders keep the plate"),
    "predicted+extended+learned": Choice("Intersection + Learned", "The intersection, less the occluders"),
}
NETWORK_MASKS = {"predicted", "learned"}  # drawn by a network, not from the landmarks
# --feather's default: this share of the shot's median face width (the landmark box), in frame pixels.
AUTO_FEATHER = 0.06
# --edge-match reaches this share of the face's (landmark) width in from the matte's edge (2 sigma of its blur):
# far enough to take the seam's colour step, short of the eyes and mouth, which stay the model's.
EDGE_MATCH_REACH = 0.18
# Beyond the solid face, its colour is carried out by a blur this share of the model's size wide (sigma).
FILL_SIGMA = 1 / 16
MAX_SUPERSAMPLE = 4  # a crop that shrinks the face is averaged over up to 4x4 samples per pixel
# A mask level within 2% of 0 or 1 counts as fully outside or inside: a model's sigmoid mask never reaches
# either, which would let the plate show through the whole face and leave a faint haze around it.
MASK_SNAP = 0.02
# ... and after the warp and the feather, whose weights sum to 1 only up to float rounding.
ROUNDING_SNAP = 1e-5
MAX_ERODE, MAX_FEATHER = 500, 1000  # frame pixels: wider kernels cost time and memory for nothing
# --plate-mouth: the hole follows the mouth's opening (expression.openings, a share of the eye distance):
# none while the lips meet or barely part, whole from the upper bound, so it never pops in from frame to frame.
PLATE_MOUTH_OPENING = (0.04, 0.10)
PLATE_MOUTH_FEATHER = 0.02  # the hole's soft edge, a share of the face's (landmark) width


@dataclass(frozen=True)
class ConvertSettings:
    """How a shot is converted: one command-line option per field (add_fields), the same keywords in
    convert(), and (but batch) the settings every output file's marking records."""

    direction: str = field(default="a2b", metadata={
        "choices": DIRECTIONS, "help": "a2b: draw the shot's faces as A (A's decoder); b2a: as B"})
    enhancer: str = field(default="auto", metadata={
        "choices": ENHANCER_MODES,
        "help": "auto: with a2b, run the model folder's enhancer (MODEL/enhancer, trained by `engine enhance`) "
                "after the face model, when it holds one; off: never"})
    mask: str = field(default="predicted", metadata={
        "choices": MASK_MODES,
        "help": "the model's mask (predicted), the landmark hull, the hull with forehead (extended), the occlusion "
                "matte of `mask apply` (learned), predicted ∩ extended (intersection), or their intersection with learned"})
    erode: int = field(default=0, metadata={
        "low": -MAX_ERODE, "high": MAX_ERODE, "kind": int, "metavar": "PX", "unit": "px",
        "help": "shrink the mask by PX frame pixels (negative grows it)"})
    feather: float | None = field(default=None, metadata={
        "low": 0, "high": MAX_FEATHER, "metavar": "PX", "unit": "px",
        "help": f"width of the mask's soft edge in frame pixels (default {AUTO_FEATHER * 100:g}%% of the face width)"})
    color: str = field(default="rct", metadata={"choices": COLOR_MODES, "help": "colour matching to the original face"})
    detail: float = field(default=0.0, metadata={
        "low": 0, "high": 4, "metavar": "AMOUNT", "label": "Plate Detail",
        "help": "add this much of the plate's own fine detail (skin, grain) onto the face, not on its eyes and "
                "mouth (0-4; 0: off; 2 suits a 64 px model)"})
    plate_mouth: bool = field(default=False, metadata={
        "help": "keep the plate's own mouth interior (teeth, tongue, the dark of an open mouth) inside B's inner "
                "lip line: the matte has a hole there as the mouth opens, so the swap opens and speaks exactly as "
                "B does, with the face's lips around it"})
    sharpen: float = field(default=0.0, metadata={
        "low": 0, "high": 4, "metavar": "AMOUNT", "help": "unsharp-mask the face by this amount (0: off)"})
    edge_match: float = field(default=0.0, metadata={
        "low": 0, "high": 1, "metavar": "AMOUNT",
        "help": "near the matte's edge, give the face this much of the plate's own colour and shading, fading "
                "out a fifth of the face width inside (0-1; 0: off; 1 halves the seam on the benchmark)"})
    format: str = field(default="png16", metadata={
        "choices": FORMATS, "help": "png16: 16-bit PNG; exr: 32-bit float EXR (sRGB and scene-linear without "
                                   "--colorspace); exr-multilayer: one EXR per frame with face, matte, hull (and "
                                   "occlusion) layers over the face's box"})
    alpha: str | None = field(default=None, metadata={
        "choices": ALPHA_MODES, "help": "the face layer's colour: premultiplied by alpha (EXR's default) or "
                                        "straight (PNG's, the only one PNG allows)"})
    write_frames: bool = field(default=False, metadata={"help": "also write finished frames to frames/"})
    write_patches: bool = field(default=False, metadata={"help": "also write aligned patches to patch/"})
    batch: int | None = field(default=None, metadata={
        "kind": int, "low": 1, "metavar": "N", "help": "faces per model call (default 8 CPU, 32 CUDA)"})

    def check(self) -> None:
        """Refuse values no run can use (the command line's parser already has): out of their fields' kinds,
        ranges and choices, or an alpha the format cannot hold."""
        check(self)
        if self.format == "png16" and self.layer_alpha != "straight":
            raise EngineError("--alpha premultiplied needs --format exr: PNG holds straight alpha only, by its "
                              "specification, and every reader takes it so")

    @property
    def layer_alpha(self) -> str:
        """The face layer's alpha: --alpha, else the format's own."""
        return self.alpha or DEFAULT_ALPHA[self.format]

    def marked(self) -> dict:
        """The settings a file's marking records (the feather resolved): a file converted with others is
        converted again. Detail, sharpen and edge match only when used, so files from before they existed
        still count; the enhancer, by its checkpoint's hash, only when one is used (convert adds it)."""
        return {"direction": self.direction, "mask": self.mask, "erode": self.erode, "feather": self.feather,
                "color": self.color, "format": self.format,
                **({"detail": self.detail, "sharpen": self.sharpen} if self.detail or self.sharpen else {}),
                **({"edge_match": self.edge_match} if self.edge_match else {}),
                **({"plate_mouth": True} if self.plate_mouth else {})}


def add_arguments(parser) -> None:
    parser.add_argument("input", help="the shot: a video file or a folder holding an image sequence")
    parser.add_argument("--alignments", required=True, metavar="FILE", help="the shot's alignments.json (or its faceset folder)")
    parser.add_argument("--model", required=True, metavar="DIR", help="the trained model folder")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="the output folder")
    parser.add_argument("--frames", metavar="FIRST-LAST", help="convert only frames FIRST-LAST (inclusive, the shot's numbers): a farm chunk")
    add_fields(parser, ConvertSettings)
    parser.add_argument("--force", action="store_true",
                        help="use alignments whose shot signature does not match the input (a deliberate change of plate)")
    colorspace.add_arguments(parser, output=True)


def run(args, events: Events) -> None:
    convert(args.input, args.alignments, args.model, args.output, from_args(ConvertSettings, args), frames=args.frames,
            events=events, device=args.device, force=args.force, plate_colorspace=args.colorspace,
            output_colorspace=args.output_colorspace, ocio_config=args.ocio_config)


# ---------------------------------------------------------------- the job: what to convert, and where


@dataclass
class FaceJob:
    frame: int
    index: int  # the face's place in its frame
    ordinal: int  # the face's place among all faces of the shot: fixes its batch slot
    matrix: np.ndarray  # 2x3, frame pixels -> aligned pixels at the model's size
    landmarks: np.ndarray  # 68x2, aligned pixels at the model's size
    learned: Path | None = None  # its learned occlusion matte (faceset masks/learned/), aligned at the faceset's size
    occlusion: np.ndarray | None = None  # a learned mask (1 = face) at the model's size, for exr-multilayer's occlusion layer


def _enhancer(model_dir: Path, model, settings: ConvertSettings, device, events: Events):
    """The model folder's enhancer that --enhancer auto uses (it draws A, so a2b only), or None."""
    from ..networks.enhancer import load_enhancer

    if settings.enhancer == "off" or settings.direction != "a2b":
        return None
    enhancer = load_enhancer(model_dir, device, events.warning)
    if enhancer is None:
        return None
    if enhancer.config.input_size != model.config.size:
        raise EngineError(f"the enhancer in {enhancer.checkpoint.parent.parent} takes {enhancer.config.input_size} px "
                          f"faces but the model draws {model.config.size} px: train it again (engine enhance), or "
                          f"convert with --enhancer off")
    if enhancer.face_model_hash != model.hash:
        events.warning(f"the enhancer learnt from another checkpoint of the face model than the one converting "
                       f"(iteration {model.iteration}): `engine enhance --resume` brings it up to date")
    return enhancer


def _check_model(config, alignments: Alignments, model_dir: Path) -> None:
    """The model must have learnt faces framed as the alignments frame them: the matrices scale to any
    size, but a different coverage puts the face elsewhere in the crop than the model expects."""
    if config.coverage and abs(config.coverage - alignments.coverage) > 1e-6:
        raise EngineError(
            f"model {model_dir} was trained on faces at coverage {config.coverage:g} "
            f"(face size {config.face_size}), but the alignments are at coverage {alignments.coverage:g} "
            f"(face size {alignments.face_size}): extract the shot with the model's coverage"
        )


def _plate_under(region, origin, box):
    """The shot's own pixels under `box` (frame pixels), from the uploaded `region` at `origin`, edges repeated."""
    w, h = box[2] - box[0], box[3] - box[1]
    to_region = np.array([[1.0, 0, box[0] - origin[0]], [0, 1.0, box[1] - origin[1]]])
    return _sample(region, to_region, w, h, "nearest", "border")


def _face_width(job: "FaceJob", size: int) -> float:
    """The face's landmark width in frame pixels."""
    xs = job.landmarks[:, 0]
    return float(xs.max() - xs.min()) / _face_scale(job.matrix)


def _face_scale(matrix) -> float:
    """Aligned pixels per frame pixel of a similarity matrix."""
    m = np.asarray(matrix, np.float64)
    return math.sqrt(abs(np.linalg.det(m[:, :2])))


def _colour(source, fmt: str, plate: str | None, output: str | None, config: str | None) -> colorspace.ShotColour:
    """The run's spaces. Files are written in the plate's space, except that EXR files of a display-referred
    plate hold the config's scene-linear space, as EXR's convention is. Without names, as before colour
    management: an 8/16-bit plate is sRGB and a float one linear Rec.709, PNG files are written in sRGB
    and EXR files in linear Rec.709."""
    exr = FORMATS[fmt].extension == ".exr"
    plate_space = colorspace.plate_space(plate, config, source.linear)
    if output:
        return colorspace.ShotColour(plate_space, colorspace.resolve(output, config))
    if plate:
        linear = exr and not plate_space.scene_linear
        return colorspace.ShotColour(plate_space, colorspace.resolve("scene_linear", config) if linear else plate_space)
    return colorspace.ShotColour(plate_space, colorspace.BUILTIN_LINEAR if exr else colorspace.MODEL)


def _recorded_space(shot: Alignments, config: str | None, where: Path) -> str | None:
    """The plate's colour space that extract was given (--colorspace), which convert then takes too; None
    when extract took its files' default (either default: a linear EXR plate of a shot extracted from its
    sRGB proxy is still linear). It is named in the run's config: one recorded from another config is
    refused (a path read from a file is not a config to load)."""
    name, recorded_config = shot.settings.get("colorspace"), shot.settings.get("ocio_config")
    if not isinstance(name, str) or name in ("", colorspace.DISPLAY, colorspace.LINEAR):
        return None
    if isinstance(recorded_config, str) and recorded_config != colorspace.config_path(config):
        raise EngineError(f"extract recorded the plate's colour space as {name!r} in the OCIO config "
                          f"{recorded_config!r}, not this run's: pass --ocio-config (or --colorspace) ({where})")
    return name


def _auto_feather(alignments: Alignments) -> float:
    widths = [alignments.coverage * alignments.face_size / _face_scale(f.matrix) for _, f in alignments.faces()]
    return round(AUTO_FEATHER * float(np.median(widths)), 1) if widths else 0.0


def mask_sources(mode: str) -> tuple[str, ...]:
    """The masks a --mask mode (one of MASK_MODES) intersects: "intersection" is predicted+extended, and
    a mode joined by "+" is its parts."""
    return ("predicted", "extended") if mode == "intersection" else tuple(mode.split("+"))


def _face_jobs(alignments: Alignments, size: int, faceset: Path | None = None) -> dict[int, list[FaceJob]]:
    """Every frame's faces, with matrices and landmarks at the model's size and a shot-wide ordinal;
    with `faceset`, each face's learned mask there."""
    jobs: dict[int, list[FaceJob]] = {}
    ordinal = 0
    for frame in sorted(alignments.frames, key=lambda f: f.number):
        jobs[frame.number] = []
        for index, face in enumerate(frame.faces):
            matrix = align.scale_matrix(face.matrix, alignments.face_size, size)
            landmarks = align.transform_points(np.asarray(face.landmarks), matrix)
            jobs[frame.number].append(FaceJob(frame.number, index, ordinal, matrix, landmarks,
                                              learned_mask(faceset, face) if faceset else None))
            ordinal += 1
    return jobs


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
    from ..base.detail import gaussian_blur

    if erode > 0:
        mask = 1 - _dilate(1 - mask, erode, outside=1.0)
    elif erode < 0:
        mask = _dilate(mask, -erode, outside=0.0)
    if feather_radius(feather) > 0:
        mask = gaussian_blur(mask, feather / 4, "zeros", feather_radius(feather))
    return snap_levels(mask, ROUNDING_SNAP)


def mouth_opened(landmarks) -> float:
    """How far the hole of --plate-mouth is faded in for a face with these `landmarks`: 0 while the lips meet
    or barely part, 1 from PLATE_MOUTH_OPENING's upper bound."""
    low, high = PLATE_MOUTH_OPENING
    return min(max((expression.openings(landmarks)[0] - low) / (high - low), 0.0), 1.0)


def mouth_hole(landmarks, size, opened: float):
    """--plate-mouth's hole in the matte, 1 x `size` over `landmarks` (in those pixels): B's mouth interior,
    its edge softened, faded in to `opened`."""
    import torch

    points = np.asarray(landmarks, np.float64)
    hole = torch.from_numpy(masks.mouth_interior(points, size))[None, None]
    return shape_mask(hole, 0, PLATE_MOUTH_FEATHER * float(np.ptp(points[:, 0])))[0] * opened


@dataclass
class FaceResult:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels, clipped to the frame
    color: object  # 3 x h x w tensor, the shot's own space
    alpha: object  # 1 x h x w tensor
    patch: np.ndarray | None = None  # S x S x 3 sRGB float, for --write-patches
    patch_mask: np.ndarray | None = None


class Converter:
    """The per-face and per-frame pixel work, on one torch device."""

    def __init__(self, model, size: int, device, settings: ConvertSettings, colour: colorspace.ShotColour,
                 enhancer=None):
        """`size`: the faces', the model's or, with an `enhancer` (engine.networks.enhancer), its own; `settings` with
        its feather resolved; `colour`: the model works in display sRGB, the plate and faces in the plate's space."""
        self.model, self.size, self.device, self.settings, self.colour = model, size, device, settings, colour
        self.enhancer = enhancer
        self.decoder = DIRECTIONS[settings.direction]
        self.margin = 2 + max(-settings.erode, 0) + feather_radius(settings.feather)
        self.mask_sources = mask_sources(settings.mask)

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

    # -- per batch: the model

    def draw(self, faces):
        """The model's (rgb, mask) for a batch of crops at `size`. With the enhancer, the crops are shrunk to
        the model's size, and its faces enhanced and its mask enlarged back to `size`."""
        if self.enhancer is None:
            return self.model.swap(faces, self.decoder)
        from torch.nn import functional as F

        from ..networks.enhancer import model_input

        rgb, mask = self.model.swap(model_input(faces, self.model.config.size), self.decoder)
        return self.enhancer.enhance(rgb), F.interpolate(mask, size=(self.size, self.size), mode="bilinear",
                                                         align_corners=False)

    # -- per face: mask, colour, warp back

    def finish_face(self, job: FaceJob, crop, rgb, predicted, frame_size, region=None, origin=(0, 0)) -> FaceResult:
        """Mask, colour-match and warp one swapped face back into frame pixels."""
        import torch

        from ..base.color import match_color
        from ..base.detail import extend_colour

        mask = snap_levels(self.choose_mask(job, predicted), MASK_SNAP)
        face = match_color(self.settings.color, rgb[None], crop[None], mask[None])[0]
        face = extend_colour(face[None], mask[None], self.size * FILL_SIGMA)[0]
        box = self.face_box(job)
        clipped = self.clip(box, frame_size)
        shot_face = colorspace.convert_tensor(face, colorspace.MODEL, self.colour.plate)
        w, h = box[2] - box[0], box[3] - box[1]
        frame_to_aligned = (np.vstack([job.matrix, [0, 0, 1]]) @ np.array([[1, 0, box[0]], [0, 1, box[1]], [0, 0, 1]]))[:2]
        color = _sample(shot_face[None], frame_to_aligned, w, h, "bicubic", "border")[0].clamp(min=0.0)
        if self.settings.detail or self.settings.sharpen:
            color = self.add_detail(color, job, frame_to_aligned, region, origin, box)
        if not self.colour.plate.scene_linear:  # a display-referred or log plate holds 0-1
            color = color.clamp(max=1.0)
        alpha = _sample(mask[None], frame_to_aligned, w, h, "bilinear", "zeros")
        # The same bound again at the frame's resolution: a model's pixel is several frame pixels wide, and
        # its soft edge, enlarged, would reach that far past the face.
        frame_landmarks = align.transform_points(job.landmarks, align.invert_matrix(job.matrix)) - box[:2]
        alpha = torch.minimum(alpha, torch.from_numpy(self.face_region(frame_landmarks, (h, w))).to(alpha))
        alpha = shape_mask(alpha, self.settings.erode, self.settings.feather)[0]
        if self.settings.edge_match:
            from ..base.detail import match_edges

            sigma = EDGE_MATCH_REACH / 2 * _face_width(job, self.size)
            color = match_edges(color[None], _plate_under(region, origin, box), alpha[None], self.settings.edge_match,
                                sigma)[0].clamp(min=0.0)
            if not self.colour.plate.scene_linear:
                color = color.clamp(max=1.0)
        # After the edge match, which would pull the plate's colour onto the lips.
        if self.settings.plate_mouth and (opened := mouth_opened(job.landmarks)) > 0:
            alpha = alpha * (1 - mouth_hole(frame_landmarks, (h, w), opened).to(alpha))
            mask = mask * (1 - mouth_hole(job.landmarks, self.size, opened).to(mask))
        cx0, cy0, cx1, cy1 = clipped
        inside = (slice(None), slice(cy0 - box[1], cy1 - box[1]), slice(cx0 - box[0], cx1 - box[0]))
        result = FaceResult(clipped, color[inside], alpha[inside])
        if self.settings.write_patches:
            result.patch, result.patch_mask = face.permute(1, 2, 0).cpu().numpy(), mask[0].cpu().numpy()
        return result

    def add_detail(self, color, job: FaceJob, frame_to_aligned, region, origin, box):
        """--sharpen and --detail (engine.base.detail) on the face in frame pixels (3 x h x w over `box`)."""
        import torch

        from ..base.detail import gaussian_blur, restore_detail, sharpen

        if self.settings.sharpen:  # at the scale of the model's pixels, as enlarged into the frame
            color = sharpen(color[None], self.settings.sharpen, max(1.0, 1 / _face_scale(job.matrix)))[0]
        if self.settings.detail:
            features = np.maximum(masks.eyes_mask(job.landmarks, self.size), masks.mouth_mask(job.landmarks, self.size))
            features = gaussian_blur(torch.from_numpy(features).to(color)[None, None], self.size / 64, "zeros")
            w, h = box[2] - box[0], box[3] - box[1]
            keep = 1 - _sample(features, frame_to_aligned, w, h, "bilinear", "zeros")
            color = restore_detail(color[None], _plate_under(region, origin, box), keep,
                                   self.settings.detail)[0].clamp(min=0.0)
        return color

    def choose_mask(self, job: FaceJob, predicted):
        """The intersection of the --mask sources, 1 x size x size in [0, 1]. A network's mask (predicted,
        learned) is kept within the face's reach: what it draws beyond, its border and corners included
        (convolutions see the crop's edge there), is no face, and would show the crop's box in the matte."""
        import torch

        chosen = None
        for source in self.mask_sources:
            if source == "predicted":
                mask = predicted
            elif source == "learned":  # faceset pixels -> model pixels: the same aligned space, rescaled
                import cv2

                learned = cv2.resize(media.to_float(read_face_image(job.learned, None, grey=True)), (self.size, self.size),
                                     interpolation=cv2.INTER_AREA)
                mask = torch.from_numpy(learned).to(predicted)[None]
                job.occlusion = learned  # exr-multilayer's occlusion layer
            else:
                mask = torch.from_numpy(masks.MASKS[source](job.landmarks, self.size)).to(predicted)[None]
            chosen = mask if chosen is None else torch.minimum(chosen, mask)
        if set(self.mask_sources) & NETWORK_MASKS:
            chosen = torch.minimum(chosen, torch.from_numpy(self.face_region(job.landmarks, self.size)).to(predicted))
        return chosen

    def face_region(self, landmarks, size):
        """Where this run's mask may be above 0, drawn from `landmarks` in their own pixels (`size` square or
        (height, width)): the hull for --mask hull, the face's reach (the extended mask's outer hull) else."""
        return (masks.hull_mask if self.mask_sources == ("hull",) else masks.face_reach)(landmarks, size)[None]

    # -- per frame: composite

    def composite(self, region, origin, results: list[FaceResult]) -> "Composite":
        """The frame's faces over the uploaded region, in linear light (an sRGB shot is decoded first), as
        compositing applications do it (engine.base.composite, which evaluate scores with)."""
        import torch

        def linear(t):
            return colorspace.convert_tensor(t, self.colour.plate, self.colour.working)

        _, _, h, w = region.shape
        premultiplied = torch.zeros(3, h, w, device=region.device)
        alpha = torch.zeros(1, h, w, device=region.device)
        for r in results:
            x0, y0, x1, y1 = r.box
            window = (slice(None), slice(y0 - origin[1], y1 - origin[1]), slice(x0 - origin[0], x1 - origin[0]))
            premultiplied[window] = over(premultiplied[window], linear(r.color) * r.alpha, r.alpha)
            alpha[window] = over(alpha[window], r.alpha, r.alpha)
        finished = over(linear(region[0]), premultiplied, alpha)

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
        return straight(self.premultiplied, self.alpha[..., None])


# ---------------------------------------------------------------- files


@dataclass
class FrameInProgress:
    """One frame on its way through: its image, its uploaded region and the results of its faces."""

    number: int
    image: np.ndarray | None
    jobs: list[FaceJob]
    outputs: Outputs
    box: tuple[int, int, int, int] | None = None
    region: object = None
    crops: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


def _write_frame(work: FrameInProgress, composed: Composite | None, frame_size, colour: colorspace.ShotColour, fmt: str,
                 common: dict, size: int) -> None:
    """Encode and write one frame's files. The face layer goes last, so its presence (with the right
    marking) means the frame is complete."""
    w, h = frame_size
    out = work.outputs
    layers_file, fmt = fmt == MULTILAYER, "exr" if fmt == MULTILAYER else fmt
    box_layer = None if composed is None else encode_layer(composed, fmt, common["alpha"], colour)
    finished = encode(work.image, colour.plate, colour.output, fmt) if out.frame else None
    if box_layer is not None and finished is not None:  # pixels the layer does not reach keep the shot's own values exactly
        x0, y0, x1, y1 = work.box
        touched = box_layer[..., 3:] > 0
        finished[y0:y1, x0:x1] = np.where(touched, encode(composed.finished, colour.working, colour.output, fmt), finished[y0:y1, x0:x1])
    for index, (patch_path, mask_path) in enumerate(out.patches):
        result = work.results[index]
        media.write_image(patch_path, encode(result.patch, colorspace.MODEL, colour.output, fmt), marking(common, "patch", work.number))
        media.write_image(mask_path, encode_matte(result.patch_mask, fmt), marking(common, "patch_mask", work.number))
    if finished is not None:
        media.write_image(out.frame, finished, marking(common, "frame", work.number))
    if layers_file:  # only the face's box, no full-frame layer
        faces = [exr_layers.FaceMattes(job.matrix, job.landmarks, job.occlusion) for job in work.jobs]
        metadata = {**marking(common, "layers", work.number), "facereplace_model_hash": common["model_hash"],
                    "facereplace_matrices": exr_layers.header_matrices(faces, size)}
        mattes = {} if box_layer is None else exr_layers.face_mattes(faces, size, work.box)
        exr_layers.write(out.face, frame_size, work.box, box_layer, mattes, metadata)
        return
    layer = np.zeros((h, w, 4), np.float32 if fmt == "exr" else np.uint16)
    if box_layer is not None:
        x0, y0, x1, y1 = work.box
        layer[y0:y1, x0:x1] = box_layer
    media.write_image(out.matte, np.ascontiguousarray(layer[..., 3]), marking(common, "matte", work.number))
    media.write_image(out.face, layer, marking(common, "face", work.number))


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
    settings: ConvertSettings | None = None,
    frames: str | None = None,
    events: Events | None = None,
    device: str = "auto",
    force: bool = False,
    plate_colorspace: str | None = None,
    output_colorspace: str | None = None,
    ocio_config: str | None = None,
    **changes,
) -> dict:
    """Convert `input` (a video or image folder) with its alignments and a trained model into `output`,
    with `settings` and any of its fields `changes`d (convert(..., color="avg")); only `frames` (FIRST-LAST) of
    the shot when given. `force` converts with alignments whose shot signature does not match `input`.
    Returns the summary that the "done" event carries."""
    events = events or Events("convert")
    settings = replace(settings or ConvertSettings(), **changes)
    settings.check()

    source = media.FrameSource(input)
    # the names given are checked before any other file is read
    colour = _colour(source, settings.format, plate_colorspace, output_colorspace, ocio_config)
    alignments_path = Path(alignments)
    if alignments_path.is_dir():
        alignments_path = alignments_path / ALIGNMENTS_FILE
    shot = Alignments.load(alignments_path)
    if plate_colorspace is None and (recorded := _recorded_space(shot, ocio_config, alignments_path)):
        colour = _colour(source, settings.format, recorded, output_colorspace, ocio_config)
    check_alignments(shot, source, alignments_path)
    check_same_shot(shot, source, alignments_path, force, events.warning)
    if Path(shot.source) != source.path.resolve():  # a regraded or re-exported plate is fine, a wrong one is not
        events.warning(f"the alignments were made from {shot.source}; converting {source.path.resolve()} with them")
    numbers = source.select(frames)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EngineError(f"model folder not found: {model_dir}")

    import torch

    from ..base.device import available_cores, pick_device
    from ..networks.model import load_model

    torch_device = pick_device(device)
    if torch_device.type == "cuda":  # the same algorithms in every process, so chunks match a full run
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    model, config = load_model(model_dir, torch_device, warn=events.warning)
    _check_model(config, shot, model_dir)
    enhancer = _enhancer(model_dir, model, settings, torch_device, events)
    size = enhancer.config.size if enhancer else config.size  # of the faces: cropped, drawn and warped back
    uses_learned = "learned" in mask_sources(settings.mask)
    jobs = _face_jobs(shot, size, alignments_path.parent if uses_learned else None)
    unlearned = [n for n in numbers for job in jobs.get(n, []) if not job.learned.is_file()] if uses_learned else []
    if unlearned:
        raise EngineError(f"--mask {settings.mask}: {len(unlearned)} faces (frames {unlearned[0]}...) have no learned mask in "
                          f"{alignments_path.parent / LEARNED_MASKS}: run python -m engine mask apply --faceset "
                          f"{alignments_path.parent} first")
    ext = FORMATS[settings.format].extension
    files = file_patterns(ext, settings.write_frames, settings.write_patches, mattes=settings.format != MULTILAYER)
    # last: a refused input leaves no folder behind
    folder = media.check_writable(output, {str(Path(pattern).parent) for pattern in files.values()})
    media.lock_folder(folder, shared=frames is not None)  # farm chunks write one folder side by side
    if frames is None:  # alone in the folder: what a killed run left half-written can go
        media.sweep_temp_files(folder)
    settings = replace(settings, feather=_auto_feather(shot) if settings.feather is None else float(settings.feather))
    common = {"tool": "FaceReplace", "engine": __version__, "synthetic": True, "alpha": settings.layer_alpha,
              "model_hash": model.hash, "settings": {**settings.marked(), "colour": colour.record(),
                                                     **({"enhancer": enhancer.hash} if enhancer else {})}}

    missing = [n for n in numbers if n not in jobs]
    if missing:
        events.warning(f"{len(missing)} frames of the selection have no alignments (extracted with --every or "
                       f"--frames?); they get blank layers", frames=missing)
    work = {n: FrameInProgress(n, None, jobs.get(n, []), frame_outputs(folder, files, n, len(jobs.get(n, []))))
            for n in numbers}
    todo = [n for n in numbers if not is_complete(work[n].outputs, common)]
    layers = None if settings.format != MULTILAYER else [
        name for name in exr_layers.LAYERS if name != "occlusion" or uses_learned]
    write_manifest(folder, common, files, source, alignments_path, model_dir, size,
                   [n for n, faces in jobs.items() if faces], events.warning, colour, layers, numbers)
    if settings.write_patches:
        media.write_json(folder / files["matrices"], matrices(jobs, size, files, source.size))

    events.start(input=str(source.path), frames=len(numbers), todo=len(todo), output=str(folder),
                 device=str(torch_device), model_size=config.size,
                 **({"enhancer": str(enhancer.checkpoint), "enhancer_size": size} if enhancer else {}))
    if len(todo) < len(numbers):
        events.resume(len(numbers) - len(todo))
    batch = settings.batch or (32 if torch_device.type == "cuda" else 8)
    converter = Converter(model, size, torch_device, settings, colour, enhancer)
    # On the CPU the cores are shared: half for torch, the rest for the reader and the writers, which
    # would otherwise preempt torch's worker threads mid-operation and stall every small warp.
    cores = available_cores()
    torch_threads = torch.get_num_threads()
    if torch_device.type == "cpu":
        torch.set_num_threads(max(1, cores // 2))
    try:
        writers = min(8, max(1, cores - (torch.get_num_threads() if torch_device.type == "cpu" else 1)))
        run = Pipeline(converter, source, common, batch, writers, events, len(numbers), len(numbers) - len(todo))
        run.process([work[n] for n in todo], needs_pixels=settings.write_frames)
    finally:
        torch.set_num_threads(torch_threads)

    if run.non_finite:
        events.warning(media.non_finite_warning(run.non_finite, "under the faces"), frames=sorted(run.non_finite))
    in_selection = [n for n in numbers if jobs.get(n)]
    summary = {
        "frames": len(numbers),
        "converted": len(todo),
        "skipped": len(numbers) - len(todo),
        "frames_with_faces": len(in_selection),
        "faces": sum(len(jobs[n]) for n in in_selection),
        "non_finite_samples": sum(run.non_finite.values()),
        "fps": round(len(todo) / max(time.monotonic() - run.started, 1e-9), 2),
        "stage_seconds": {k: round(v, 3) for k, v in run.clock.seconds.items()},
        "output": str(folder),
    }
    events.done(**summary)
    return summary


class Pipeline:
    """One pass over the frames to do: reader thread -> batched model -> writer pool."""

    def __init__(self, converter: Converter, source, common, batch, workers, events, total, done):
        self.converter, self.source, self.fmt, self.common = converter, source, converter.settings.format, common
        self.batch, self.events, self.total, self.done = batch, events, total, done
        self.slots: dict[int, tuple[FrameInProgress, FaceJob]] = {}
        self.pending: dict[int, FrameInProgress] = {}
        self.workers = workers
        self.writers = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="convert-write")
        self.futures: list = []
        self.clock = StageClock()
        self.started = time.monotonic()
        self.converted = 0
        self.non_finite: dict[int, int] = {}  # frame number -> NaN or infinite samples under its faces

    def process(self, todo: list[FrameInProgress], needs_pixels: bool) -> None:
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

    def _add(self, work: FrameInProgress, image: np.ndarray) -> None:
        import torch

        work.image = image
        if not work.jobs:  # read only for its finished frame
            self._submit(work, None)
            return
        conv = self.converter
        boxes = [conv.clip(conv.face_box(j), self.source.size) for j in work.jobs]
        work.box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
        x0, y0, x1, y1 = work.box
        clean, bad = media.finite_pixels(image[y0:y1, x0:x1])
        if bad:  # what the model, the colour match and the layer see; the finished frame keeps the plate's
            self.non_finite[work.number] = bad
            image = image.copy()
            image[y0:y1, x0:x1] = clean
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
            rgb, predicted = conv.draw(faces)
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

    def _submit(self, work: FrameInProgress, composed) -> None:
        # Keep at most a few frames per writer in flight (memory), and raise a writer's error promptly.
        while self.futures and (self.futures[0].done() or len(self.futures) > 2 * self.workers):
            self.futures.pop(0).result()
        self.futures.append(self.writers.submit(self._write, work, composed))
        self.done += 1
        self.converted += 1
        fps = self.converted / max(time.monotonic() - self.started, 1e-9)
        self.events.progress(self.done, self.total, frame=work.number, fps=round(fps, 2))

    def _write(self, work: FrameInProgress, composed) -> None:
        with self.clock("encode"):
            _write_frame(work, composed, self.source.size, self.converter.colour, self.fmt, self.common,
                         self.converter.size)
