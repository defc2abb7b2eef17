"""Convert's output folder, which this module alone lays out; convert writes it, evaluate and the add-on
read it through the manifest's file patterns.

    OUTPUT/
      manifest.json                  source, model and hash, settings, frame range, file patterns
      face/face_%06d.png|exr         RGBA face layer, fully transparent where no face is: premultiplied
                                     alpha in EXR (--alpha straight to change it), straight in PNG
      matte/matte_%06d.png|exr       the layer's alpha as one channel (not for exr-multilayer, whose
                                     face file holds face, matte, hull and occlusion layers: exr_layers)
      frames/frame_%06d.png|exr      the shot with the face composited in (--write-frames)
      patch/patch_%06d.png|exr       the swapped face in aligned space, its mask and matrices.json
      patch/patch_mask_%06d.png|exr  (--write-patches)

%06d is the source frame number. PNGs are 16-bit, EXRs 32-bit float, both in the output colour space
(engine.base.colorspace: the plate's; without --colorspace, sRGB PNGs and scene-linear EXRs). Every
file carries a synthetic-media marking (PNG iTXt / EXR header) with the tool, version, model hash and
settings, and nothing that depends on which frames a run was asked for, so farm chunks write disjoint
files that together are byte-identical to one full run.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import __version__
from ..base import colorspace, media
from ..base.events import EngineError
from ..base.frames import MANIFEST_FILE, check_manifest, frame_file
from ..faces import align


class OutputFormat(NamedTuple):
    """A --format: its files' extension, and its name and description in the add-on's menu."""

    extension: str
    label: str
    description: str


FORMATS = {
    "png16": OutputFormat(".png", "PNG 16-bit", "16-bit RGBA PNG face layers"),
    "exr": OutputFormat(".exr", "OpenEXR", "32-bit float scene-linear RGBA EXR face layers"),
    "exr-multilayer": OutputFormat(".exr", "OpenEXR Multilayer",
                                   "One EXR per frame with face, matte and hull layers over the face's box, for "
                                   "Nuke, Fusion and Blender's compositor (not added as strips)"),
}
MULTILAYER = "exr-multilayer"  # its face file holds the matte too: no matte files
# EXR's convention (and what every reader assumes) is premultiplied colour; PNG's specification says straight.
ALPHA_MODES = ("premultiplied", "straight")
DEFAULT_ALPHA = {"png16": "straight", "exr": "premultiplied", MULTILAYER: "premultiplied"}
MATRICES_FILE = "matrices.json"
# Each kind of file, relative to the output folder, before its extension; %06d is the frame number.
PATTERNS = {"face": "face/face_%06d", "matte": "matte/matte_%06d", "frames": "frames/frame_%06d",
            "patch": "patch/patch_%06d", "patch_mask": "patch/patch_mask_%06d"}
XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/'
    'compositeWithTrainedAlgorithmicMedia"/></rdf:RDF></x:xmpmeta>'
)


def file_patterns(ext: str, write_frames: bool, write_patches: bool, mattes: bool = True) -> dict[str, str]:
    """The manifest's "files": each kind of file a run writes, as a pattern of its frame number; no
    matte files without `mattes` (exr-multilayer)."""
    kinds = ["face"] + (["matte"] if mattes else []) + (["frames"] if write_frames else []) + (["patch", "patch_mask"] if write_patches else [])
    files = {kind: PATTERNS[kind] + ext for kind in kinds}
    if write_patches:
        files["matrices"] = f"patch/{MATRICES_FILE}"
    return files


@dataclass
class Outputs:
    """The files of one frame."""

    face: Path
    matte: Path | None  # None: exr-multilayer keeps the matte in the face file
    frame: Path | None = None
    patches: list[tuple[Path, Path]] = field(default_factory=list)

    def all(self) -> list[Path]:
        return [self.face] + ([self.matte] if self.matte else []) + ([self.frame] if self.frame else []) + [p for pair in self.patches for p in pair]


def patch_names(files: dict[str, str], number: int, index: int) -> tuple[str, str]:
    """The names (in patch/) of a frame's `index`-th face patch and its mask."""
    suffix = "" if index == 0 else f"_{index}"  # extract keeps one face a frame; more get a suffix
    names = (Path(files[kind] % number) for kind in ("patch", "patch_mask"))
    return tuple(f"{name.stem}{suffix}{name.suffix}" for name in names)


def frame_outputs(folder: Path, files: dict[str, str], number: int, faces: int) -> Outputs:
    """Where frame `number` (with `faces` faces) goes, by the run's file patterns."""
    out = Outputs(folder / (files["face"] % number), folder / (files["matte"] % number) if "matte" in files else None)
    if "frames" in files:
        out.frame = folder / (files["frames"] % number)
    if "patch" in files:
        out.patches = [tuple(folder / "patch" / n for n in patch_names(files, number, i)) for i in range(faces)]
    return out


# ---------------------------------------------------------------- markings


def marking(common: dict, content: str, number: int) -> dict[str, str]:
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


def is_complete(outputs: Outputs, common: dict) -> bool:
    """Whether a frame's files are all there, with the marking of this run's settings and model."""
    if not all(p.is_file() for p in outputs.all()):
        return False
    found = read_marking(outputs.face)
    return found is not None and all(found.get(k) == v for k, v in common.items())


# ---------------------------------------------------------------- manifest and matrices


def write_manifest(folder: Path, common: dict, files: dict[str, str], source, alignments_path: Path,
                   model_dir: Path, model_size: int, frames_with_faces: list[int], warn,
                   colour: colorspace.ShotColour, layers: list[str] | None = None, selection=None) -> None:
    """manifest.json: the same bytes from every chunk of one job, so parallel chunks can all write it.
    `selection`: the frame numbers this run converts (None: all of them)."""
    path = folder / MANIFEST_FILE
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
        "model_size": model_size,
        "colorspace": colour.output.name,  # of every file written
        "plate_colorspace": colour.plate.name,
        "ocio_config": colour.output.config,
        "frame_range": [source.numbers[0], source.numbers[-1]],
        "frame_numbers": list(source.numbers),
        "frames_with_faces": frames_with_faces,
        **({"layers": layers} if layers else {}),
        "folders": {"face": "face", "matte": "matte" if "matte" in files else None, "frames": "frames" if "frames" in files else None,
                    "patch": "patch" if "patch" in files else None},
        "files": files,
    }
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (ValueError, RecursionError):
            old = {}
        old = old if isinstance(old, dict) else {}
        changed = old.get("settings") != manifest["settings"] or old.get("model_hash") != manifest["model_hash"]
        # Only a frame converted before and outside this run keeps an old result: a rerun of the whole shot
        # with new settings replaces them all, and needs no warning.
        outside = set(source.numbers) - set(source.numbers if selection is None else selection)
        if changed and any((folder / frame_file(files["face"], n)).is_file() for n in outside):
            warn(f"{folder} held a conversion with other settings or another model; frames outside "
                 f"this run's selection keep the old result")
    media.write_json(path, manifest)


def read_manifest(folder: Path) -> dict:
    """An output folder's manifest, checked as far as its readers rely on it (frames.check_manifest, which
    the add-on's result strips read it with too)."""
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise EngineError(f"layers folder not found: {folder}")
    if not path.is_file():
        raise EngineError(f"{folder} is not a convert output folder (it has no {MANIFEST_FILE})")
    try:
        return check_manifest(media.read_json(path), path)
    except ValueError as e:
        raise EngineError(str(e)) from None


def layer_path(folder: Path, manifest: dict, number: int, kind: str = "face") -> Path:
    """Frame `number`'s file of `kind` by the manifest's pattern, which must stay inside `folder`."""
    return media.inside(folder, frame_file(manifest["files"][kind], number), f"{folder / MANIFEST_FILE} files.{kind}")


def matrices(jobs: dict, size: int, files: dict[str, str], frame_size) -> dict:
    """matrices.json: for each frame, each patch's transform (`jobs`: frame number -> its faces, each with
    its 2x3 `matrix` at the model's `size` and its `index`). Written from the alignments for the whole
    shot, so every chunk writes the same file."""
    frames = {}
    for number, faces in jobs.items():
        entries = []
        for job in faces:
            inverse = align.invert_matrix(job.matrix)
            edges = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]])
            corners = align.transform_points(edges, inverse) + 0.5
            patch, mask = patch_names(files, number, job.index)
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


# ---------------------------------------------------------------- encodings


def encode(image: np.ndarray, space: colorspace.Space, output: colorspace.Space, fmt: str) -> np.ndarray:
    """Pixels in `space` (uint8/uint16 or float) as the output stores them: in the `output` space, 16-bit
    for png16, float for exr. A float image already in `output` comes back as it is, bit for bit."""
    image = colorspace.convert(colorspace.as_float(image), space, output)
    if fmt == "exr":
        return image
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)


def encode_matte(alpha: np.ndarray, fmt: str) -> np.ndarray:
    return alpha.astype(np.float32) if fmt == "exr" else np.round(np.clip(alpha, 0, 1) * 65535.0).astype(np.uint16)


def encode_layer(composed, fmt: str, alpha_mode: str, colour: colorspace.ShotColour) -> np.ndarray:
    """The RGBA face layer's pixels from a frame's composite (convert.Composite: colour in the run's
    working space, and alpha): premultiplied EXR, or straight colour in either format."""
    matte = encode_matte(composed.alpha, fmt)
    if alpha_mode == "premultiplied" and colour.working == colour.output:
        color = composed.premultiplied
    elif alpha_mode == "premultiplied":
        color = encode(composed.straight(), colour.working, colour.output, fmt) * composed.alpha[..., None]
    else:
        opaque = matte > 0  # as stored: a 16-bit zero is transparent however small the float
        color = np.where(opaque[..., None], encode(composed.straight(), colour.working, colour.output, fmt), 0)
    return np.dstack([color, matte]).astype(matte.dtype)
