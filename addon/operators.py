"""The add-on's operators. Each engine stage builds the engine's argument list from the scene's settings,
runs it through jobs.run (in the background of the UI, or to completion when Blender is headless), and
writes the results back into the scene when the engine is done.

Headless and on a farm every operator blocks, prints progress and raises on failure, e.g.
    blender -b shot.blend --python-exit-code 1 \\
        --python-expr "import bpy; bpy.ops.facereplace.convert(frames='101-200')"
"""

import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import contract, jobs, strips
from .core import engine_args
from .core.done import (
    ConvertDone,
    EnhanceDone,
    ExtractDone,
    InfoDone,
    TrainDone,
    WeightsDone,
    read,
    stop_words,
)
from .core.engine_args import ConvertPanel, TrainPanel, has_model, plain
from .engine_client import REQUIREMENTS_FILE, ClientError, engine_command, engine_root, venv_python
from .jobs import Step
from .paths import blend_relative, folder_name, not_reserved
from .preferences import BACKENDS, SETUP_OFFLINE, engine_python, extension_user_folder, managed_venv, prefs
from .properties import RELATIVE
from .strips import absolute, edited_scene, find_strip

SIDES = [("A", "A", "A, the face to put in"), ("B", "B", "B, the shot's face: the one replaced")]
TRAIN_STOP_GRACE_S = 60.0  # a stopped train finishes its iteration and saves; a big model on a CPU takes a while


# ---------------------------------------------------------------- paths


def work_folder(scene) -> Path:
    """This scene's folder inside the work folder of the preferences."""
    folder = prefs().work_folder
    if folder.startswith("//") and not bpy.data.filepath:
        raise ClientError(f"save the .blend first: the work folder ({folder}) is beside it; "
                          f"or set an absolute work folder in Preferences > Add-ons > FaceReplace")
    root = absolute(folder)
    named = root / folder_name(scene.name)
    # Before names were kept apart, a scene's folder was its name as bpy.path.clean_name wrote it: such a
    # folder still serves its scene, while no other scene of the file would share it.
    legacy = not_reserved(bpy.path.clean_name(scene.name))
    sharing = [s for s in bpy.data.scenes if not_reserved(bpy.path.clean_name(s.name)) == legacy]
    if not named.exists() and (root / legacy).is_dir() and len(sharing) == 1:
        return root / legacy
    return named


def stored(path: Path) -> str:
    """A path in the work folder as the scene keeps it: relative to the .blend when the Work Folder
    preference is (so a project folder can move), absolute when it is absolute (a farm's shared storage,
    which must stay put when Flamenco's packer copies the .blend elsewhere)."""
    blend = Path(bpy.data.filepath).resolve().parent if bpy.data.filepath else None
    if prefs().work_folder.startswith("//") and blend is not None and path.resolve().is_relative_to(blend):
        return blend_relative(str(path), os.path.dirname(bpy.data.filepath))
    return str(path)


def run_env(interactive: bool | None = None) -> dict[str, str]:
    """What an engine run gets in its environment from the add-on: torch's cache inside the extension's
    user folder (never the user's home cache), and its CPU manners: a share of the cores beside the other
    runs and, started from Blender's window (`interactive`, by default: not headless), a passive OpenMP
    wait and a core left for Blender."""
    # The runs' lock files (engine/base/device.py), so every run the add-on starts shares the cores with the others.
    env = {"TORCH_HOME": str(extension_user_folder("torch")), "FACEREPLACE_RUNTIME_DIR": str(extension_user_folder("runs"))}
    preferences = prefs()
    interactive = not bpy.app.background if interactive is None else interactive
    # Headless (a farm worker, a script) the run owns the machine: a passive wait would cost it about 40%
    # alone (measured, docs/blender.md), so only a run beside Blender's window sleeps while it waits.
    if preferences.use_passive_wait and interactive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if preferences.cpu_threads:
        env["FACEREPLACE_THREADS"] = str(preferences.cpu_threads)
    elif interactive:
        env["FACEREPLACE_RESERVE_CORES"] = "1"
    return env


def detector_args() -> list[str]:
    """The preferences' detector, kept off the network while Blender's Online Access is off."""
    preferences = prefs()
    weights = bpy.path.abspath(preferences.fan_weights) if preferences.fan_weights else ""
    return engine_args.detector_args(preferences.detector, weights, bpy.app.online_access)


def resolved(path: str, missing: str) -> Path:
    """A stored path made absolute; `missing` is the error when none is stored yet."""
    if not path:
        raise ClientError(missing)
    return absolute(path)


def digest(args: list) -> str:
    """A short name for a set of arguments: a change of source, range or settings gets a fresh folder,
    the same ones find their earlier (possibly interrupted) run and resume it."""
    return hashlib.sha256(json.dumps([str(a) for a in args]).encode()).hexdigest()[:8]


# ---------------------------------------------------------------- the stages


def shot_args(scene, side: str) -> tuple[strips.Shot, list]:
    """The shot of a side and the engine arguments that say what a faceset of it holds: source, frame
    numbers, face size and reference face. Their digest is the shot's signature."""
    settings = scene.facereplace
    shot_settings = getattr(settings, side.lower())
    shot = strips.shot_of(scene, shot_settings, side)
    reference = (shot.number_at(shot_settings.reference_frame), shot_settings.reference_face) \
        if shot_settings.use_reference else None
    return shot, engine_args.shot_args(shot.input, shot.frames, settings.face_size, strips.colour_args(shot), reference)


def stale_message(scene, side: str) -> str:
    """Why the faceset of `side` no longer fits its shot ("" while it does, or before any extract): the
    shot, its range, its person or the face size changed since it was extracted."""
    shot_settings = getattr(scene.facereplace, side.lower())
    if not shot_settings.faceset:
        return ""
    try:
        _shot, args = shot_args(scene, side)
    except ClientError:
        return ""  # a shot that cannot be read (a deleted strip) says so on its own: its faceset is as extracted
    if shot_settings.signature and shot_settings.signature != digest(args):
        return f"{side} changed since extraction: Extract {side}"
    return ""


def shot_problem(scene, side: str) -> str:
    """Why the shot `side` names cannot be read ("" when it can, or while none is picked): a deleted
    strip, a missing file, a range outside the shot."""
    shot_settings = getattr(scene.facereplace, side.lower())
    if not (shot_settings.strip if shot_settings.source == "STRIP" else shot_settings.folder):
        return ""
    try:
        shot_args(scene, side)
    except ClientError as e:
        return str(e)
    return ""


def results_out_of_step(scene) -> str:
    """Why B's result strips no longer sit over B's frames ("" while they do, or while B cannot be read)."""
    try:
        return strips.layer_out_of_step(scene, strips.shot_of(scene, scene.facereplace.b, "B"))
    except ClientError:
        return ""


def same_shot_message(scene) -> str:
    """A refusal when A and B name the same strip or folder and do not pick a different person in it
    (Pick Person): extract and train would then run on one person."""
    settings = scene.facereplace
    a, b = settings.a, settings.b
    if a.source != b.source:
        return ""
    if a.source == "STRIP":
        editor = scene.sequence_editor
        strip = find_strip(editor, a.strip_id, a.strip)
        if strip is None or strip != find_strip(editor, b.strip_id, b.strip):
            return ""
        name = strip.name
    else:
        if not a.folder or absolute(a.folder) != absolute(b.folder):
            return ""
        name = absolute(a.folder).name
    if a.use_reference and b.use_reference and (a.reference_frame, a.reference_face) != (b.reference_frame, b.reference_face):
        return ""  # two people of one shot
    return f"A and B are both {name}: set A to a shot of the face to put in (or Pick Person in each)"


def extract_step(scene, side: str) -> Step:
    shot, args = shot_args(scene, side)
    signature = digest(args)
    strip = strips.find_strip(scene.sequence_editor, shot.key, shot.strip) if shot.strip and side == "B" else None
    fps_warning = strips.fps_mismatch(strip, scene) if strip is not None else ""  # A's rate does not matter
    work = work_folder(scene)
    folder = work / f"faceset_{side.lower()}-{digest(args + [prefs().detector])}"
    argv = engine_command(engine_python(), "extract", [*args, *detector_args(), "--output", folder], prefs().device)

    def finish(scene, summary: dict) -> str:
        done = read(ExtractDone, summary)
        result = getattr(scene.facereplace, side.lower())
        result.faceset = stored(folder)
        result.signature = signature
        result.frames, result.frames_with_faces = done.frames, done.frames_with_faces
        missing = [shot.start + shot.numbers.index(n) for n in done.frames_without_faces]
        result.frames_without_faces = strips.frame_rules.format_ranges(missing)
        return (f"Extract {side}: faces in {done.frames_with_faces} of {done.frames} frames"
                + (f", none in {result.frames_without_faces}" if missing else "") + (f"; {fps_warning}" if fps_warning else ""))

    return Step(f"Extract {side}", argv, finish, log=work / "logs" / f"extract_{side.lower()}.log", env=run_env())


def _faceset(scene, side: str) -> Path:
    """The faceset of `side`, refused when it is gone or its shot changed since extraction."""
    folder = resolved(getattr(scene.facereplace, side.lower()).faceset, f"extract {side} first")
    if not (folder / contract.folder("faceset")["alignments"]).is_file():
        raise ClientError(f"the faceset of {side} ({folder}) is gone or incomplete: extract {side} again")
    if stale := stale_message(scene, side):
        raise ClientError(stale)
    return folder


def train_step(scene, resume: bool, into: str = "", iterations: int = 0) -> Step:
    """Train a new model, or `resume` the scene's; `into` (a farm task): train the model in that folder,
    resuming whatever it holds, so a requeued task goes on where the last one stopped. `iterations`
    overrides the scene's."""
    settings = scene.facereplace
    train = settings.train
    faceset_a, faceset_b = _faceset(scene, "A"), _faceset(scene, "B")
    work = work_folder(scene)
    if into:
        model = absolute(into)
        resume = has_model(model)
    elif resume:
        model = resolved(train.model, "there is no model to resume: start training first")
        if not has_model(model):
            raise ClientError(f"there is no model in {model} to resume")
    else:
        model = engine_args.new_model_folder(work)
    panel = replace(plain(TrainPanel, train), panel_options=tuple(contract.panel_args("train", train)),
                    base_model=str(absolute(train.base_model)) if train.base_model else "")
    args = engine_args.train_args(faceset_a, faceset_b, model, panel, resume, iterations)
    argv = engine_command(engine_python(), "train", args, prefs().device, processes=prefs().train_processes)

    def finish(scene, summary: dict) -> str:
        done = read(TrainDone, summary)
        result = scene.facereplace.train
        another = result.model != stored(model)
        result.model = stored(model)
        result.iteration, result.loss_a, result.loss_b = done.iterations, done.loss_a, done.loss_b
        if done.preview and Path(done.preview).is_file():
            result.preview = stored(Path(done.preview))
        elif another:  # a new model before its first preview: the old model's is not its
            result.preview = ""
        return (f"Train: {result.iteration} iterations{stop_words(done.stopped)}, loss A {result.loss_a:.4f}, "
                f"B {result.loss_b:.4f}")

    return Step("Train", argv, finish, stop_file=engine_args.stop_file(model), log=work / "logs" / "train.log",
                grace_s=TRAIN_STOP_GRACE_S, env=run_env())


def train_steps(scene, resume: bool, into: str = "", iterations: int = 0) -> list[Step]:
    """train_step and then, with the Train panel's Enhancer Iterations, enhance_step in the model folder it
    trains (the folder of its stop file)."""
    train = train_step(scene, resume, into, iterations)
    if not scene.facereplace.train.enhancer_iterations:
        return [train]
    return [train, enhance_step(scene, train.stop_file.parent)]


def enhance_step(scene, model: Path) -> Step:
    """Train the enhancer of the model in `model` on faceset A, resuming the one it holds, up to the Train
    panel's Enhancer Iterations."""
    args = engine_args.enhance_args(model, _faceset(scene, "A"), scene.facereplace.train.enhancer_iterations)
    argv = engine_command(engine_python(), "enhance", args, prefs().device)

    def finish(scene, summary: dict) -> str:
        done = read(EnhanceDone, summary)
        return f"Enhance: {done.iterations} iterations{stop_words(done.stopped)}, loss {done.loss:.4f}"

    return Step("Enhance", argv, finish, stop_file=engine_args.stop_file(engine_args.enhancer_folder(model)),
                log=work_folder(scene) / "logs" / "enhance.log", grace_s=TRAIN_STOP_GRACE_S, env=run_env())


def convert_step(scene, frames: tuple[int, int] | None) -> Step:
    """Convert B's shot, or only its timeline frames first..last (a farm chunk, which leaves the strips)."""
    settings = scene.facereplace
    target = strips.shot_of(scene, settings.b, "B")
    chunk = target.within(*frames) if frames else target
    faceset_b = _faceset(scene, "B")
    model = resolved(settings.train.model, "train a model first")
    if not has_model(model):
        raise ClientError(f"there is no model in {model}: train one first")
    convert = settings.convert
    # A farm worker writes where the artist's earlier runs did, whatever its own work folder preference.
    output = absolute(convert.output) if convert.output else work_folder(scene) / "output"
    args = engine_args.convert_args(chunk.input, chunk.frames, strips.colour_args(chunk), faceset_b, model, output,
                                    plain(ConvertPanel, convert))
    argv = engine_command(engine_python(), "convert", args, prefs().device)

    def finish(scene, summary: dict) -> str:
        result = scene.facereplace.convert
        if not result.output:  # a folder the user chose stays as they wrote it
            result.output = stored(output)
        done = read(ConvertDone, summary)
        result.frames, result.frames_with_faces = done.frames, done.frames_with_faces
        line = f"Convert: {result.frames} frames, faces in {result.frames_with_faces}"
        if frames:  # a farm chunk: other chunks write the rest, the strips come once they are all there
            return line
        strips.add_result_strips(scene, strips.shot_of(scene, scene.facereplace.b, "B"), output,
                                 relative=strips.keeps_relative(scene.facereplace))
        return line + "; result strips added"

    log = output.parent / "logs" / (f"convert_{chunk.frames}.log" if frames else "convert.log")
    return Step("Convert", argv, finish, log=log, env=run_env())


def record_engine(_scene, summary: dict) -> str:
    """Check engine's result, into the preferences."""
    done = read(InfoDone, summary)
    status = done.describe()
    if done.schema:
        contract.save(done.schema)
    preferences = prefs()
    preferences.engine_status = status
    preferences.engine_ok, preferences.engine_error = True, ""
    return status


def record_set_up_engine(scene, summary: dict) -> str:
    """The engine Set up Engine made works: record it, and make it the engine (an Engine Python chosen
    before is cleared only now, so a failed download never leaves the add-on without its working engine)."""
    status = record_engine(scene, summary)
    prefs().engine_python = ""
    return status


def torch_requirement(requirements: Path) -> str:
    """The pinned torch line of engine-requirements.txt."""
    for line in requirements.read_text().splitlines():
        if line.strip().lower().startswith("torch"):
            return line.strip()
    raise ClientError(f"{requirements} names no torch version: reinstall the FaceReplace extension")


def setup_steps(venv: Path, requirements: Path, backend: str = "CPU") -> list[Step]:
    """Make `venv` with Blender's own Python (unless it exists), pip-install the pinned torch from the
    wheel index of `backend`, then the rest of `requirements`, then run the engine from it once: what Set
    up Engine does. Every step logs to setup.log beside the venv."""
    if not requirements.is_file():
        raise ClientError(f"{requirements} is missing: reinstall the FaceReplace extension")
    python = str(venv_python(venv))
    log = venv.parent / "setup.log"
    label, _description, index = BACKENDS[backend]
    packages = sum(1 for line in requirements.read_text().splitlines() if line.strip() and line[0] != "#")
    pip = [python, "-m", "pip", "install", "--progress-bar", "off"]
    steps = [] if Path(python).is_file() else [Step("Make venv", [sys.executable, "-m", "venv", str(venv)], log=log)]
    steps.append(Step(f"Install torch ({label})", pip + [torch_requirement(requirements)]
                      + (["--index-url", index, "--extra-index-url", "https://pypi.org/simple"] if index else []),
                      log=log, expected_packages=8))
    steps.append(Step("Install packages", pip + ["-r", str(requirements)], log=log,
                      expected_packages=packages * 4))  # each requirement brings a few of its own
    steps.append(Step("Check engine", [python, "-m", "engine", "info", "--events"], record_set_up_engine, log=log))
    return steps


# ---------------------------------------------------------------- operators


class EngineOperator:
    """Runs `steps(scene)` as one job; reports the engine's errors, blocks when headless. No UNDO: the
    job runs on after the operator returns (the redo panel would run it again into "busy"); the results
    get an undo step of their own when they come in."""

    bl_options = {"REGISTER"}
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
            jobs.record_failure(self.stage, str(e))  # refused before it started, too: the panel says why
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, report or f"FaceReplace: {self.stage} started")
        return {"FINISHED"}

    def before(self, context) -> None:
        """Anything to do before the steps are built."""


class OnePersonRefused(EngineOperator):
    """Extract and train: refused while A and B are one shot of one person (poll runs before every call,
    from the panel or a script, and its message is the call's error)."""

    @classmethod
    def poll(cls, context):
        if refusal := same_shot_message(edited_scene(context)):
            cls.poll_message_set(refusal)
            return False
        return super().poll(context)


class FACEREPLACE_OT_extract(OnePersonRefused, bpy.types.Operator):
    bl_idname = "facereplace.extract"
    bl_label = "Extract Faces"
    bl_description = "Detect, align and mask the faces of the shot, into a faceset for training"
    stage = "extract"

    side: EnumProperty(name="Shot", items=[*SIDES, ("BOTH", "A and B", "Both shots, one after the other")],
                       default="BOTH")

    def steps(self, scene):
        return [extract_step(scene, side) for side in (("A", "B") if self.side == "BOTH" else (self.side,))]


class FACEREPLACE_OT_train(OnePersonRefused, bpy.types.Operator):
    bl_idname = "facereplace.train"
    bl_label = "Train"
    bl_description = "Train the model that draws A's face with the expression, pose and light of B's shot"
    stage = "train"

    resume: BoolProperty(name="Resume", description="Continue the scene's model; off: start a new model",
                         options={"SKIP_SAVE"})
    model: StringProperty(
        name="Model Folder",
        description="Train the model in this folder, resuming whatever it holds (a farm task that is requeued "
        "goes on). Empty: the scene's model (Resume) or a new one in the work folder",
        options={"SKIP_SAVE"},
    )
    iterations: IntProperty(name="Iterations", min=0, options={"SKIP_SAVE"},
                            description="Stop at this iteration (0: the Train panel's Iterations)")

    def steps(self, scene):
        return train_steps(scene, self.resume, self.model, self.iterations)


class FACEREPLACE_OT_convert(EngineOperator, bpy.types.Operator):
    bl_idname = "facereplace.convert"
    bl_label = "Convert"
    bl_description = "Put A's face into B's shot and add the face layer and matte above it as strips"
    stage = "convert"

    frames: StringProperty(
        name="Frames",
        description="Timeline frames to convert, as 101-200 or 1-50,80-90 (a farm chunk); these leave the strips "
        "alone. Empty: the whole of B's shot, then add the strips",
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

    def steps(self, scene):
        return [Step("Check engine", engine_command(engine_python(), "info", []), record_engine, env=run_env())]


class FACEREPLACE_OT_setup_engine(EngineOperator, bpy.types.Operator):
    bl_idname = "facereplace.setup_engine"
    bl_label = "Set up Engine"
    bl_description = ("Make a Python venv for the engine in the extension's user folder and install torch, "
                      "OpenCV, dlib and the rest into it (a few GB, downloaded once)")
    bl_options = {"REGISTER"}
    stage = "setup"

    @classmethod
    def poll(cls, context):
        if not bpy.app.online_access:
            cls.poll_message_set(SETUP_OFFLINE)
            return False
        return super().poll(context)

    def steps(self, scene):
        return setup_steps(managed_venv(), engine_root() / REQUIREMENTS_FILE, prefs().backend)


class FACEREPLACE_OT_download_weights(EngineOperator, bpy.types.Operator):
    bl_idname = "facereplace.download_weights"
    bl_label = "Download Detector Weights"
    bl_description = ("Download the FAN detector's weights (about 100 MB) into the Detector Weights Folder, "
                      "each checked against its published hash, so extract runs offline with FAN")
    stage = "download"

    @classmethod
    def poll(cls, context):
        if not bpy.app.online_access:
            cls.poll_message_set("Allow Online Access in Preferences > System > Network first")
            return False
        return super().poll(context)

    def steps(self, scene):
        preferences = prefs()
        if not preferences.fan_weights:
            preferences.fan_weights = str(extension_user_folder("fan-weights"))
        folder = bpy.path.abspath(preferences.fan_weights)
        return [Step("Download detector weights", engine_command(engine_python(), "weights", ["--folder", folder]),
                     lambda _scene, summary: f"Detector weights in {read(WeightsDone, summary).folder}",
                     env=run_env())]


class FACEREPLACE_OT_open_image(bpy.types.Operator):
    bl_idname = "facereplace.open_image"
    bl_label = "Open in Image Editor"
    bl_description = "Show this image (the training preview, a contact sheet) full size in an Image Editor"
    bl_options = {"REGISTER"}

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE", *RELATIVE})

    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"{path} does not exist yet")
            return {"CANCELLED"}
        image = bpy.data.images.load(path, check_existing=True)
        image.reload()  # the preview is rewritten while training runs
        editors = [a for w in context.window_manager.windows for a in w.screen.areas if a.type == "IMAGE_EDITOR"]
        if not editors and not bpy.app.background:
            bpy.ops.wm.window_new()
            editors = [context.window_manager.windows[-1].screen.areas[0]]
            editors[0].type = "IMAGE_EDITOR"
        for area in editors[:1]:
            area.spaces.active.image = image
        return {"FINISHED"}


class FACEREPLACE_OT_add_strips(bpy.types.Operator):
    bl_idname = "facereplace.add_strips"
    bl_label = "Add Result Strips"
    bl_description = ("Add the converted face layer (Alpha Over, with a FaceReplace Blend modifier) and the "
                      "muted matte above B's shot, replacing earlier ones")
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        scene = edited_scene(context)
        settings = scene.facereplace
        try:
            target = strips.shot_of(scene, settings.b, "B")
            added = strips.add_result_strips(
                scene, target, resolved(settings.convert.output, "convert first: there are no results yet"),
                relative=strips.keeps_relative(settings))
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
    bl_description = "Pick the person (A or B) from the current frame"
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
    FACEREPLACE_OT_download_weights,
    FACEREPLACE_OT_open_image,
    FACEREPLACE_OT_add_strips,
    FACEREPLACE_OT_cancel,
    FACEREPLACE_OT_use_active_strip,
    FACEREPLACE_OT_reference_frame,
)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
