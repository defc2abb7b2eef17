"""The add-on's operators. Each engine stage builds the engine's argument list from the scene's settings,
runs it through jobs.run (in the background of the UI, or to completion when Blender is headless), and
writes the results back into the scene when the engine is done.

Headless and on a farm every operator blocks, prints progress and raises on failure, e.g.
    blender -b shot.blend --python-exit-code 1 \\
        --python-expr "import bpy; bpy.ops.facereplace.convert(frames='101-200')"
"""

import hashlib
import json
import sys
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import jobs, strips
from .engine_client import REQUIREMENTS_FILE, ClientError, engine_command, engine_root, venv_python
from .jobs import Step
from .preferences import engine_python, managed_venv, prefs
from .strips import absolute, edited_scene

SIDES = [("A", "A", "Source A: the face to put in"), ("B", "B", "Target B: the shot whose face is replaced")]
TRAIN_STOP_GRACE_S = 60.0  # a stopped train finishes its iteration and saves; a big model on a CPU takes a while


# ---------------------------------------------------------------- paths


def work_folder(scene) -> Path:
    """This scene's folder inside the work folder of the preferences."""
    folder = prefs().work_folder
    if folder.startswith("//") and not bpy.data.filepath:
        raise ClientError(f"save the .blend first: the work folder ({folder}) is beside it; "
                          f"or set an absolute work folder in Preferences > Add-ons > FaceReplace")
    return absolute(folder) / bpy.path.clean_name(scene.name)


def stored(path: Path) -> str:
    """A path as the scene keeps it: relative to the .blend when it lies beside it, so a project can move."""
    blend = Path(bpy.data.filepath).resolve().parent if bpy.data.filepath else None
    if blend is not None and path.resolve().is_relative_to(blend):
        return bpy.path.relpath(str(path))
    return str(path)


def resolved(path: str, missing: str) -> Path:
    """A stored path made absolute; `missing` is the error when none is stored yet."""
    if not path:
        raise ClientError(missing)
    return absolute(path)


def digest(args: list) -> str:
    """A short name for a set of arguments: a change of source, range or settings gets a fresh folder,
    the same ones find their earlier (possibly interrupted) run and resume it."""
    return hashlib.sha256(json.dumps([str(a) for a in args]).encode()).hexdigest()[:8]


def compact(numbers: list[int]) -> str:
    """[3, 7, 8, 9] -> "3, 7-9"."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


# ---------------------------------------------------------------- the stages


def extract_step(scene, side: str) -> Step:
    settings = scene.facereplace
    shot_settings = getattr(settings, side.lower())
    shot = strips.shot_of(scene, shot_settings, side)
    args = [shot.input, "--frames", shot.frames, "--detector", prefs().detector, "--size", settings.face_size]
    if shot_settings.use_reference:
        args += ["--reference-face", f"{shot.number_at(shot_settings.reference_frame)}:{shot_settings.reference_face}"]
    work = work_folder(scene)
    folder = work / f"faceset_{side.lower()}-{digest(args)}"
    argv = engine_command(engine_python(), "extract", [*args, "--output", folder], prefs().device)

    def finish(scene, summary: dict) -> str:
        result = getattr(scene.facereplace, side.lower())
        result.faceset = stored(folder)
        result.frames = summary["frames"]
        result.frames_with_faces = summary["frames_with_faces"]
        missing = [shot.start + shot.numbers.index(n) for n in summary.get("frames_without_faces", [])]
        result.frames_without_faces = compact(missing)
        return (f"Extract {side}: faces in {summary['frames_with_faces']} of {summary['frames']} frames"
                + (f", none in {result.frames_without_faces}" if missing else ""))

    return Step(f"Extract {side}", argv, finish, log=work / "logs" / f"extract_{side.lower()}.log")


def _faceset(settings, side: str) -> Path:
    folder = resolved(getattr(settings, side.lower()).faceset, f"extract {side} first")
    if not (folder / "alignments.json").is_file():
        raise ClientError(f"the faceset of {side} ({folder}) is gone or incomplete: extract {side} again")
    return folder


def has_model(folder: Path) -> bool:
    return (folder / "model.json").is_file()


def train_step(scene, resume: bool) -> Step:
    settings = scene.facereplace
    train = settings.train
    faceset_a, faceset_b = _faceset(settings, "A"), _faceset(settings, "B")
    work = work_folder(scene)
    if resume:
        model = resolved(train.model, "there is no model to resume: start training first")
        if not has_model(model):
            raise ClientError(f"there is no model in {model} to resume")
    else:
        # A new model never overwrites an earlier one: it gets the next free folder.
        model = next(work / name for i in range(1, 1000)
                     if not (work / (name := "model" if i == 1 else f"model_{i}")).exists())
    args = ["--a", faceset_a, "--b", faceset_b, "--model", model, "--iterations", train.iterations]
    if resume:  # a model keeps the preset and resolution it was made with
        args.append("--resume")
    else:
        args += ["--preset", train.preset] + (["--size", train.size] if train.size != "PRESET" else [])
    if train.time_budget > 0:
        args += ["--time-budget", round(train.time_budget, 1)]
    argv = engine_command(engine_python(), "train", args, prefs().device, processes=prefs().train_processes)

    def finish(scene, summary: dict) -> str:
        result = scene.facereplace.train
        result.model = stored(model)
        result.iteration = summary.get("iterations", 0)
        result.loss_a = summary.get("loss_a") or 0.0
        result.loss_b = summary.get("loss_b") or 0.0
        if Path(summary.get("preview", "")).is_file():
            result.preview = stored(Path(summary["preview"]))
        return f"Train: {result.iteration} iterations, loss A {result.loss_a:.4f}, B {result.loss_b:.4f}"

    return Step("Train", argv, finish, stop_file=model / "stop", log=work / "logs" / "train.log",
                grace_s=TRAIN_STOP_GRACE_S)


def convert_step(scene, frames: tuple[int, int] | None) -> Step:
    """Convert target B, or only its timeline frames first..last (a farm chunk, which leaves the strips)."""
    settings = scene.facereplace
    target = strips.shot_of(scene, settings.b, "B")
    chunk = target.within(*frames) if frames else target
    faceset_b = _faceset(settings, "B")
    model = resolved(settings.train.model, "train a model first")
    if not has_model(model):
        raise ClientError(f"there is no model in {model}: train one first")
    convert = settings.convert
    # A farm worker writes where the artist's earlier runs did, whatever its own work folder preference.
    output = absolute(convert.output) if convert.output else work_folder(scene) / "output"
    args = [chunk.input, "--alignments", faceset_b / "alignments.json", "--model", model, "--output", output,
            "--mask", convert.mask, "--erode", convert.erode, "--color", convert.color, "--format", convert.format,
            "--detail", convert.detail, "--frames", chunk.frames]
    if not convert.use_auto_feather:
        args += ["--feather", convert.feather]
    argv = engine_command(engine_python(), "convert", args, prefs().device)

    def finish(scene, summary: dict) -> str:
        result = scene.facereplace.convert
        result.output = stored(output)
        result.frames = summary.get("frames", 0)
        result.frames_with_faces = summary.get("frames_with_faces", 0)
        line = f"Convert: {result.frames} frames, faces in {result.frames_with_faces}"
        if frames:  # a farm chunk: other chunks write the rest, the strips come once they are all there
            return line
        strips.add_result_strips(scene, strips.shot_of(scene, scene.facereplace.b, "B"), output)
        return line + "; result strips added"

    log = output.parent / "logs" / (f"convert_{chunk.frames}.log" if frames else "convert.log")
    return Step("Convert", argv, finish, log=log)


def record_engine(_scene, summary: dict) -> str:
    """Check engine's result, into the preferences."""
    gpu = f"CUDA {summary.get('cuda_version')}: {', '.join(summary.get('gpus') or [])}" if summary.get("cuda") \
        else "no CUDA GPU: CPU only"
    status = f"Engine {summary.get('engine')}, Python {summary.get('python')}, torch {summary.get('torch')}, {gpu}"
    preferences = prefs()
    preferences.engine_status = status
    preferences.engine_ok = True
    return status


def setup_steps(venv: Path, requirements: Path) -> list[Step]:
    """Make `venv` with Blender's own Python (unless it exists), pip-install `requirements` into it, then
    run the engine from it once: what Set up engine does."""
    if not requirements.is_file():
        raise ClientError(f"{requirements} is missing: reinstall the FaceReplace extension")
    python = str(venv_python(venv))
    packages = sum(1 for line in requirements.read_text().splitlines() if line.strip() and line[0] != "#")
    steps = [] if Path(python).is_file() else [Step("Make venv", [sys.executable, "-m", "venv", str(venv)])]
    steps.append(Step("Install packages",
                      [python, "-m", "pip", "install", "--progress-bar", "off", "-r", str(requirements)],
                      expected_packages=packages * 4))  # each requirement brings a few of its own
    steps.append(Step("Check engine", [python, "-m", "engine", "info", "--events"], record_engine))
    return steps


# ---------------------------------------------------------------- operators


class EngineOperator:
    """Runs `steps(scene)` as one job; reports the engine's errors, blocks when headless."""

    bl_options = {"REGISTER", "UNDO"}
    stage = ""

    @classmethod
    def poll(cls, context):
        job = jobs.active()
        if job is not None:
            cls.poll_message_set(f"FaceReplace is busy: {job.text}")
        return job is None

    def steps(self, scene) -> list[Step]:
        raise NotImplementedError

    def execute(self, context):
        try:
            self.before(context)
            scene = edited_scene(context)
            report = jobs.run(self.stage, scene, self.steps(scene), wait=bpy.app.background)
        except (ClientError, jobs.JobFailed) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, report or f"FaceReplace: {self.stage} started")
        return {"FINISHED"}

    def before(self, context) -> None:
        """Anything to do before the steps are built."""


class FACEREPLACE_OT_extract(EngineOperator, bpy.types.Operator):
    bl_idname = "facereplace.extract"
    bl_label = "Extract Faces"
    bl_description = "Detect, align and mask the faces of the shot, into a faceset for training"
    stage = "extract"

    side: EnumProperty(name="Shot", items=[*SIDES, ("BOTH", "A and B", "Both shots, one after the other")],
                       default="BOTH")

    def steps(self, scene):
        return [extract_step(scene, side) for side in (("A", "B") if self.side == "BOTH" else (self.side,))]


class FACEREPLACE_OT_train(EngineOperator, bpy.types.Operator):
    bl_idname = "facereplace.train"
    bl_label = "Train"
    bl_description = "Train the model that draws face A with the expressions, pose and light of shot B"
    stage = "train"

    resume: BoolProperty(name="Resume", description="Continue the scene's model; off: start a new model",
                         options={"SKIP_SAVE"})

    def steps(self, scene):
        return [train_step(scene, self.resume)]


class FACEREPLACE_OT_convert(EngineOperator, bpy.types.Operator):
    bl_idname = "facereplace.convert"
    bl_label = "Convert"
    bl_description = "Swap the faces of target B and add the face layer and matte above it as strips"
    stage = "convert"

    frames: StringProperty(
        name="Frames",
        description="Timeline frames to convert, as A-B or A-B,C-D (a farm chunk); these leave the strips "
        "alone. Empty: the whole target, then add the strips",
        options={"SKIP_SAVE"},
    )

    def steps(self, scene):
        if not self.frames:
            return [convert_step(scene, None)]
        return [convert_step(scene, frames) for frames in strips.parse_ranges(self.frames)]


class FACEREPLACE_OT_check_engine(EngineOperator, bpy.types.Operator):
    bl_idname = "facereplace.check_engine"
    bl_label = "Check Engine"
    bl_description = "Run the engine once and show its version, torch, CUDA and GPU"
    bl_options = {"REGISTER"}
    stage = "check"

    def before(self, context):
        prefs(context).engine_ok = False

    def steps(self, scene):
        return [Step("Check engine", engine_command(engine_python(), "info", []), record_engine)]


class FACEREPLACE_OT_setup_engine(EngineOperator, bpy.types.Operator):
    bl_idname = "facereplace.setup_engine"
    bl_label = "Set up Engine"
    bl_description = ("Make a Python venv for the engine in the extension's user folder and install torch, "
                      "OpenCV, dlib and the rest into it (a few GB, downloaded once)")
    bl_options = {"REGISTER"}
    stage = "setup"

    def before(self, context):
        if not bpy.app.online_access:
            raise ClientError("Set up engine downloads the engine's packages: allow Online Access in "
                              "Preferences > System > Network first")
        preferences = prefs(context)
        preferences.engine_ok = False
        preferences.engine_python = ""  # the made venv is the engine once it exists

    def steps(self, scene):
        return setup_steps(managed_venv(), engine_root() / REQUIREMENTS_FILE)


class FACEREPLACE_OT_add_strips(bpy.types.Operator):
    bl_idname = "facereplace.add_strips"
    bl_label = "Add Result Strips"
    bl_description = ("Add the converted face layer (Alpha Over, with a Color Balance modifier) and the muted "
                      "matte above target B, replacing earlier ones")
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        scene = edited_scene(context)
        settings = scene.facereplace
        try:
            target = strips.shot_of(scene, settings.b, "B")
            added = strips.add_result_strips(
                scene, target, resolved(settings.convert.output, "convert first: there are no results yet"))
        except ClientError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Added {', '.join(s.name for s in added.values())}")
        return {"FINISHED"}


class FACEREPLACE_OT_cancel(bpy.types.Operator):
    bl_idname = "facereplace.cancel"
    bl_label = "Stop"
    bl_description = "Stop the running engine (a train saves its model first)"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return jobs.active() is not None

    def execute(self, context):
        jobs.cancel()
        return {"FINISHED"}


class FACEREPLACE_OT_use_active_strip(bpy.types.Operator):
    bl_idname = "facereplace.use_active_strip"
    bl_label = "Use Active Strip"
    bl_description = "Use the sequencer's active strip as this shot, and its frames as the range"
    bl_options = {"REGISTER", "UNDO"}

    side: EnumProperty(name="Shot", items=SIDES)

    @classmethod
    def poll(cls, context):
        editor = edited_scene(context).sequence_editor
        return editor is not None and editor.active_strip is not None

    def execute(self, context):
        scene = edited_scene(context)
        strip = scene.sequence_editor.active_strip
        if strip.type not in {"MOVIE", "IMAGE"}:
            self.report({"ERROR"}, f"{strip.name} is a {strip.type.lower()} strip; pick a movie or image strip")
            return {"CANCELLED"}
        shot = getattr(scene.facereplace, self.side.lower())
        shot.source = "STRIP"
        shot.strip = strip.name
        shot.frame_first, shot.frame_last = strip.frame_final_start, strip.frame_final_end - 1
        shot.reference_frame = min(max(scene.frame_current, shot.frame_first), shot.frame_last)
        return {"FINISHED"}


class FACEREPLACE_OT_reference_frame(bpy.types.Operator):
    bl_idname = "facereplace.reference_frame"
    bl_label = "Use Current Frame"
    bl_description = "Pick the person from the current frame"
    bl_options = {"REGISTER", "UNDO"}

    side: EnumProperty(name="Shot", items=SIDES)

    def execute(self, context):
        scene = edited_scene(context)
        shot = getattr(scene.facereplace, self.side.lower())
        shot.reference_frame = scene.frame_current
        shot.use_reference = True
        return {"FINISHED"}


CLASSES = (
    FACEREPLACE_OT_extract,
    FACEREPLACE_OT_train,
    FACEREPLACE_OT_convert,
    FACEREPLACE_OT_check_engine,
    FACEREPLACE_OT_setup_engine,
    FACEREPLACE_OT_add_strips,
    FACEREPLACE_OT_cancel,
    FACEREPLACE_OT_use_active_strip,
    FACEREPLACE_OT_reference_frame,
)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
