"""Enhance: a trained face model and A's faceset -> the model folder's enhancer (engine.networks.enhancer), which
convert then runs after the face model to draw A's face at 2 or 4 times the model's size.

    python -m engine enhance --model MODEL --faceset-a FACESET_A [--size 256] [--iterations 2000] [--resume]

Each iteration takes a batch of A's faces at the enhancer's size (moved, flipped and recoloured as train
does, never warped), shrinks them to the model's size, lets the face model redraw them as A (A -> A, with
its softness and artefacts) and teaches the enhancer to turn that back into the faces it came from. Only
A's faceset is read, so the enhancer can draw nothing but A's features.

It runs as train does: it stops at an iteration count or a time budget, on SIGINT/SIGTERM or when a file
named `stop` appears in MODEL/enhancer/, saving first; `--resume` continues exactly (the batches are a
function of (seed, iteration), and the weights, optimiser and random state come back), so a run stopped
and resumed ends with the same weights as one that never stopped.
"""

import itertools
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn import functional as F

from ..base import loop, media
from ..base.checkpoints import CHECKPOINTS, checkpoint_paths, clear_stop, stop_requests, write_checkpoint
from ..base.device import pick_device, thread_adapter
from ..base.events import EngineError, Events, log
from ..base.options import add_fields, check, from_args
from ..folders.faceset import Faceset
from ..networks.adversarial import Adversary, make_adversary
from ..networks.augment import Augmentation, FaceBatches, augment, batch_loader, memory_budget
from ..networks.enhancer import (
    FACTORS,
    FORMAT,
    HISTORY_COLUMNS,
    PREVIEW_COLUMNS,
    VERSION,
    Enhancer,
    EnhancerConfig,
    model_input,
)
from ..networks.enhancer import check_config as check_enhancer_config
from ..networks.enhancer import config_from_state as enhancer_config_from_state
from ..networks.enhancer import latest_state as latest_enhancer_state
from ..networks.losses import LossWeights, image_loss
from ..networks.model import (
    MODEL_FOLDERS,
    PREVIEW_FILE,
    SUMMARY_FILE,
    append_history,
    enhancer_dir,
    load_model,
    trim_history,
    write_preview,
)

DEFAULTS = EnhancerConfig(input_size=0, size=0)  # the shape a new enhancer gets where no option is given
# Fields of EnhanceSettings that shape the enhancer (its EnhancerConfig) and those a resume may change.
SHAPE_FIELDS = ("width", "blocks", "batch", "learning_rate", "gan_weight")
RESUMABLE_CHANGES = {"batch", "learning_rate", "gan_weight"}


@dataclass(frozen=True)
class EnhanceSettings:
    """How an enhancer is trained: one command-line option per field (engine.base.options.add_fields). Those that
    default to None take, on a new enhancer, the default they name and, on --resume, the enhancer's own."""

    size: int | None = field(default=None, metadata={
        "low": 32, "high": 4096, "kind": int, "metavar": "PX",
        "help": "the enhanced face's size, 2 or 4 times the model's (default: the larger of the two that A's "
                "faceset holds without enlarging its faces, else twice the model's)"})
    iterations: int | None = field(default=None, metadata={
        "low": 1, "kind": int, "metavar": "N", "help": "stop at this iteration (counted over resumes)"})
    time_budget: float | None = field(default=None, metadata={
        "low": 0, "above": True, "metavar": "SECONDS", "help": "stop after this long"})
    resume: bool = field(default=False, metadata={
        "help": "continue the model folder's enhancer exactly where it stopped"})
    width: int | None = field(default=None, metadata={
        "low": 8, "high": 1024, "kind": int, "metavar": "N",
        "help": f"channels at the model's size; each doubling of the size halves them ({DEFAULTS.width})"})
    blocks: int | None = field(default=None, metadata={
        "low": 0, "high": 64, "kind": int, "metavar": "N",
        "help": f"residual blocks at the model's size ({DEFAULTS.blocks})"})
    batch: int | None = field(default=None, metadata={
        "low": 1, "high": 4096, "kind": int, "metavar": "N", "help": f"faces per iteration ({DEFAULTS.batch})"})
    learning_rate: float | None = field(default=None, metadata={
        "low": 0, "high": 1, "above": True, "metavar": "X", "help": f"Adam learning rate ({DEFAULTS.learning_rate:g})"})
    gan_weight: float | None = field(default=None, metadata={
        "low": 0, "high": 100, "metavar": "W",
        "help": "weight of the adversarial loss: a patch discriminator asks for eyes, mouth and skin that look like "
                f"A's real ones where the pixel losses settle for a blur (0: off) ({DEFAULTS.gan_weight:g})"})
    seed: int | None = field(default=None, metadata={
        "low": 0, "high": 2**32 - 1, "kind": int, "metavar": "N", "help": "random seed (0)"})
    workers: int | None = field(default=None, metadata={
        "low": 0, "high": 64, "kind": int, "metavar": "N",
        "help": "data loader processes (default: 0 on the CPU, up to 8 on CUDA)"})
    log_every: int = field(default=10, metadata={
        "low": 1, "kind": int, "metavar": "N", "help": "iterations per history row and progress event (10)"})
    preview_every: int = field(default=100, metadata={
        "low": 1, "kind": int, "metavar": "N", "help": "iterations per preview (100)"})
    save_every: int = field(default=500, metadata={
        "low": 1, "kind": int, "metavar": "N", "help": "iterations per checkpoint (and always on stop) (500)"})
    keep: int = field(default=3, metadata={
        "low": 1, "kind": int, "metavar": "N", "help": "checkpoints kept (3)"})
    preview_rows: int = field(default=4, metadata={
        "low": 1, "high": 64, "kind": int, "metavar": "N", "help": "faces in the preview (4)"})

    def check(self) -> None:
        """Refuse values no run can use (the command line's parser already has)."""
        check(self)


class Done(NamedTuple):
    """The "done" event of a run, and what enhance() returns (as a dict)."""

    iterations: int
    loss: float | None
    stopped: str  # one of loop.STOP_REASONS
    checkpoint: str
    enhancer: str
    size: int
    preview: str


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="the trained model folder; the enhancer goes into its enhancer/ subfolder")
    parser.add_argument("--faceset-a", required=True, metavar="FACESET",
                        help="faceset of person A, the face the model puts in (the one it was trained on)")
    add_fields(parser, EnhanceSettings)


def run(args, events: Events) -> None:
    enhance(args.model, args.faceset_a, from_args(EnhanceSettings, args), device=args.device, events=events)


class Start(NamedTuple):
    """Where a run starts: the enhancer's config, seed, iteration and seconds so far, and the checkpoint
    state to resume (None for a new enhancer)."""

    config: EnhancerConfig
    seed: int
    iteration: int = 0
    elapsed: float = 0.0
    state: dict | None = None


@media.holds_folder_locks
def enhance(model_dir: str | Path, faceset_a: str | Path, settings: EnhanceSettings | None = None,
            device: str = "auto", events: Events | None = None, **changes) -> dict:
    """Train (or with `resume`, continue) the enhancer of the model in `model_dir` on A's faceset, with
    `settings` and any of its fields `changes`d. Returns the "done" event's summary."""
    events = events or Events("enhance")
    settings = replace(settings or EnhanceSettings(), **changes)
    settings.check()
    model_dir, torch_device = Path(model_dir), pick_device(device)
    folder = enhancer_dir(model_dir)
    face_model, model_config = load_model(model_dir, torch_device, warn=events.warning)
    faceset = Faceset(faceset_a)
    samples = faceset.samples()
    if not samples:
        raise EngineError(f"faceset {faceset.folder} holds no faces (extract A's shot into it)")
    if model_config.coverage and abs(model_config.coverage - faceset.alignments.coverage) > 1e-6:
        raise EngineError(f"model {model_dir} was trained on faces at coverage {model_config.coverage:g}; faceset "
                          f"{faceset.folder} is at coverage {faceset.alignments.coverage:g}: give it A's faceset")
    with stop_requests(folder) as requests:
        run_started = time.monotonic()
        start = (_resumed_start if settings.resume else _new_start)(folder, settings, model_config.size,
                                                                   faceset.face_size, events)
        config = start.config
        if start.state is not None and start.state.get("face_model", {}).get("hash") != face_model.hash:
            events.warning(f"the face model has changed since the enhancer began (now at iteration "
                           f"{face_model.iteration}): the enhancer goes on learning from the new one's faces")
        batches = FaceBatches({"a": samples}, faceset.face_size, config.size, config.batch,
                              replace(Augmentation(), warp=0.0), seed=start.seed)
        batches.preload(memory_budget())
        preview_faces = batches.fixed(loop.spread(samples, settings.preview_rows))
        loader = batch_loader(batches, start.iteration, settings.iterations, settings.workers, torch_device)
        enhancer, optimizer = _enhancer_and_optimizer(config, start, torch_device, folder)
        adversary = _adversary(config, start, torch_device, folder)
        media.sweep_temp_files(folder)
        trim_history(folder, start.iteration, HISTORY_COLUMNS)
        parameters = sum(p.numel() for p in enhancer.parameters())
        events.start(model=str(model_dir), faceset=str(faceset.folder), enhancer=str(folder),
                     iteration=start.iteration, device=str(torch_device), input_size=config.input_size,
                     size=config.size, batch=config.batch, parameters=parameters, faces=len(samples))
        if config.size > faceset.face_size:
            events.warning(f"A's faceset holds {faceset.face_size} px faces but the enhancer draws {config.size} px: "
                           f"it learns enlarged faces (extract A at --size {config.size} or more for sharper ones)")

        run = Run(folder, enhancer, face_model, optimizer, adversary, start, faceset, parameters, settings,
                  preview_faces, torch_device, events, run_started)
        iteration, stopped = start.iteration, None
        threads = thread_adapter(torch_device, 1)  # beside Blender and other runs, as train does
        requests.training = True
        for iteration, batch in zip(itertools.count(start.iteration + 1), loader, strict=False):
            run.window += enhance_step(enhancer, face_model, optimizer, batch["a"], torch_device, run.weights, adversary)
            run.window_iterations += 1
            if threads:
                threads.step()
            stopped = loop.stop_reason(iteration, settings.iterations, time.monotonic() - run_started,
                                       settings.time_budget, requests.reason or events.stop_reason())
            run.after(iteration, stopped)
            if stopped:
                break
    clear_stop(folder)
    if stopped is None:  # the loader ran dry: --iterations was already reached before this run
        stopped, run.checkpoint = loop.STOP_ITERATIONS, checkpoint_paths(folder)[0]
    summary = Done(iteration, run.loss, stopped, str(run.checkpoint), str(folder), config.size,
                   str(folder / PREVIEW_FILE))._asdict()
    events.done(**summary)
    return summary


# ---------------------------------------------------------------- set-up


def default_size(model_size: int, face_size: int) -> int:
    """The enhancer's size when none is asked for: the largest of FACTORS times the model's size that A's
    faces reach without being enlarged, else the smallest."""
    reached = [model_size * f for f in FACTORS if model_size * f <= face_size]
    return max(reached, default=model_size * min(FACTORS))


def _new_start(folder: Path, settings: EnhanceSettings, model_size: int, face_size: int, events: Events) -> Start:
    if checkpoint_paths(folder):
        raise EngineError(f"{folder} already holds an enhancer: pass --resume to continue it, or remove the folder "
                          f"to train a new one")
    config = check_enhancer_config(replace(
        DEFAULTS, input_size=model_size, size=settings.size or default_size(model_size, face_size),
        **{name: getattr(settings, name) for name in SHAPE_FIELDS if getattr(settings, name) is not None}))
    _take(folder)
    return Start(config, settings.seed or 0)


def _resumed_start(folder: Path, settings: EnhanceSettings, model_size: int, face_size: int, events: Events) -> Start:
    if not checkpoint_paths(folder):
        raise EngineError(f"nothing to resume: {folder} holds no enhancer (drop --resume to start one)")
    _take(folder)
    state, path, _ = latest_enhancer_state(folder, "cpu", events.warning)
    stored = enhancer_config_from_state(state)
    given = {"size": settings.size, "seed": settings.seed,
             **{name: getattr(settings, name) for name in SHAPE_FIELDS}}
    stored_values = {**asdict(stored), "seed": state.get("seed")}
    for name, value in given.items():
        if value is not None and value != stored_values[name] and name not in RESUMABLE_CHANGES:
            raise EngineError(f"the enhancer in {folder} has {name.replace('_', ' ')} {stored_values[name]}; a resume "
                              f"cannot change it to {value} (remove the folder to train a new one)")
    if stored.input_size != model_size:
        raise EngineError(f"the enhancer in {folder} takes {stored.input_size} px faces but the model draws "
                          f"{model_size} px: remove the folder to train a new one")
    config = replace(stored, **{k: given[k] for k in RESUMABLE_CHANGES if given[k] is not None})
    try:
        start = Start(config, int(state["seed"]), int(state["iteration"]), float(state["elapsed"]), state)
    except (KeyError, TypeError, ValueError) as e:
        raise EngineError(f"enhancer checkpoint {path} cannot be resumed: {type(e).__name__}: {e}") from None
    log.info("resuming %s at iteration %d from %s", folder, start.iteration, path.name)
    return start


def _take(folder: Path) -> None:
    """Make the enhancer folder and hold its lock for the run."""
    if folder.is_file():
        raise EngineError(f"{folder} is a file, not the enhancer's folder")
    media.check_writable(folder, MODEL_FOLDERS)
    media.lock_folder(folder)


def _enhancer_and_optimizer(config: EnhancerConfig, start: Start, device, folder: Path):
    """The enhancer, initialised from the seed, and its Adam optimiser; on resume with the checkpoint's
    weights, optimiser and random state."""
    torch.manual_seed(start.seed)
    enhancer = Enhancer(config).to(device)
    optimizer = torch.optim.Adam(enhancer.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))
    if start.state is not None:
        try:
            enhancer.load_state_dict(start.state["model"])
            optimizer.load_state_dict(start.state["optimizer"])
            torch.set_rng_state(start.state["rng"]["torch"].cpu())
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise EngineError(f"the enhancer in {folder} cannot be resumed: {type(e).__name__}: {e}") from None
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate  # a resume may change it
    return enhancer, optimizer


def _adversary(config: EnhancerConfig, start: Start, device, folder: Path) -> Adversary | None:
    """The patch discriminator where config.gan_weight asks for one: new from the seed, or the checkpoint's
    (a resume that turns the adversarial loss on starts a new one)."""
    if not config.gan_weight:
        return None
    state = (start.state or {}).get("discriminator")
    try:
        return make_adversary(config.gan_weight, config.learning_rate, start.seed, device, state=state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise EngineError(f"the enhancer's discriminator in {folder} cannot be resumed: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- the loop's feedback


class Run:
    """A run's state between iterations: the losses summed since the last history row, and what it reports
    and saves after each iteration."""

    def __init__(self, folder: Path, enhancer: Enhancer, face_model, optimizer, adversary: Adversary | None,
                 start: Start, faceset: Faceset, parameters: int, settings: EnhanceSettings, preview_faces: dict,
                 device, events: Events, started: float):
        self.folder, self.enhancer, self.face_model, self.optimizer = folder, enhancer, face_model, optimizer
        self.adversary = adversary
        self.start, self.faceset, self.parameters, self.settings = start, faceset, parameters, settings
        self.preview_faces, self.device, self.events, self.started = preview_faces, device, events, started
        self.weights = LossWeights()
        self.window = torch.zeros((), device=device)  # summed losses since the last history row
        self.window_iterations, self.window_start = 0, time.monotonic()
        self.loss: float | None = None
        self.checkpoint: Path | None = None

    def after(self, iteration: int, stopped: str | None) -> None:
        """A history row and progress event every log_every iterations, a preview every preview_every, a
        checkpoint every save_every; each of them as the run stops."""
        s = self.settings
        if not stopped and all(iteration % every for every in (s.log_every, s.preview_every, s.save_every)):
            return
        seconds = time.monotonic() - self.started
        self.loss = self.window.item() / self.window_iterations
        if not math.isfinite(self.loss):
            raise EngineError(f"the enhancer diverged at iteration {iteration}: its loss is no longer a finite "
                              f"number (a lower --learning-rate helps)")
        it_per_s = self.window_iterations / max(time.monotonic() - self.window_start, 1e-9)
        self.window.zero_()
        self.window_iterations, self.window_start = 0, time.monotonic()
        append_history(self.folder, iteration, self.start.elapsed + seconds, {"loss": self.loss}, HISTORY_COLUMNS)
        self.events.progress(iteration, s.iterations, iteration=iteration, loss=self.loss, it_per_s=round(it_per_s, 3),
                             eta_s=loop.eta(iteration, s.iterations, it_per_s, s.time_budget, seconds))
        if iteration % s.preview_every == 0 or stopped:
            grid = preview_grid(self.enhancer, self.face_model, self.preview_faces, self.device)
            path = write_preview(self.folder, grid, iteration, PREVIEW_COLUMNS)
            self.events.preview(path=str(path), iteration=iteration)
        if iteration % s.save_every == 0 or stopped:
            self.checkpoint = _save(self.folder, self.enhancer, self.optimizer, self.adversary, self.start, iteration,
                                    seconds, self.loss, self.face_model, self.faceset, self.parameters, s.keep)


# ---------------------------------------------------------------- one step, one save, one preview


def enhance_step(enhancer: Enhancer, face_model, optimizer, batch: dict, device, weights: LossWeights,
                 adversary: Adversary | None = None) -> torch.Tensor:
    """One step on a batch of A's faces: the face model redraws them at its size (A -> A), the enhancer
    enlarges that, and learns from image_loss against the faces themselves (and, with an `adversary`, to
    look real to its discriminator, which then learns from the step's faces). Returns the loss, detached."""
    _, target, mask, eyes, mouth = augment(batch, device, train=False)
    drawn, _ = face_model.swap(model_input(target, enhancer.config.input_size), "a")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        enhanced = enhancer(drawn.clone())  # a copy outside inference mode, which autograd may keep
    loss = image_loss(enhanced, target, mask, eyes, mouth, weights)
    if adversary is not None:
        loss = loss + adversary.generator_loss(enhanced, [target, mask])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if adversary is not None:
        adversary.step([enhanced], [[target, mask]])
    return loss.detach()


def _save(folder: Path, enhancer: Enhancer, optimizer, adversary: Adversary | None, start: Start, iteration: int,
          seconds: float, loss: float | None, face_model, faceset: Faceset, parameters: int, keep: int) -> Path:
    """The checkpoint (weights, optimiser, random state, the face model it learnt from, the discriminator)
    and model.json."""
    if not all(torch.isfinite(p).all() for p in enhancer.parameters()):
        raise EngineError(f"the enhancer diverged at iteration {iteration}: its weights are no longer finite numbers "
                          f"(a lower --learning-rate helps)")
    state = {"format": FORMAT, "version": VERSION, "iteration": iteration, "elapsed": start.elapsed + seconds,
             "config": asdict(enhancer.config), "seed": start.seed,
             "face_model": {"hash": face_model.hash, "iteration": face_model.iteration},
             "faceset": str(faceset.folder.resolve()), "model": enhancer.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    if adversary is not None:
        state["discriminator"] = adversary.state_dict()
    path = write_checkpoint(folder, state, keep)
    media.write_json(folder / SUMMARY_FILE, {
        "format": FORMAT, "version": VERSION, "iteration": iteration, "checkpoint": f"{CHECKPOINTS}/{path.name}",
        "elapsed_s": round(state["elapsed"], 1), "config": state["config"], "seed": start.seed,
        "parameters": parameters, "face_model": state["face_model"], "faceset": state["faceset"], "loss": loss})
    return path


@torch.no_grad()
def preview_grid(enhancer: Enhancer, face_model, faces: dict, device):
    """Rows of PREVIEW_COLUMNS: the face model's A -> A enlarged (bicubic), enhanced, and A itself, at the
    enhancer's size. uint8 RGB."""
    _, target, *_ = augment(faces, device, train=False)
    drawn, _ = face_model.swap(model_input(target, enhancer.config.input_size), "a")
    size = (enhancer.config.size, enhancer.config.size)
    enlarged = F.interpolate(drawn, size=size, mode="bicubic", align_corners=False)
    tiles = torch.stack([enlarged, enhancer.enhance(drawn), target], 1).flatten(0, 1).clamp(0, 1)
    tiles = (tiles * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return media.contact_sheet(list(tiles), columns=3)
