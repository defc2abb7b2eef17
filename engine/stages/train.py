"""Train: two facesets -> a model folder (see engine.networks.model for its layout).

    python -m engine train --a FACESET_A --b FACESET_B --model MODEL [--preset fast] [--iterations 20000]
    torchrun --nproc_per_node 4 -m engine train ...     one process per GPU, DistributedDataParallel

The loop below is the whole of training, written to be read top to bottom. It stops at an iteration
count, a time budget or a target loss, on SIGINT/SIGTERM, or when a file named `stop` appears in the
model folder, and it always saves before it stops. `--resume` continues exactly where it stopped: the
model, the optimiser, the iteration, the RNG and the settings all come back from the checkpoint, and the
batches are a function of (seed, iteration), so a stopped and resumed run gives the same losses as one
that never stopped.
"""

import contextlib
import io
import itertools
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import distributed as dist

from ..base import loop, media
from ..base.checkpoints import CHECKPOINTS, checkpoint_paths, clear_stop, stop_requests, write_checkpoint
from ..base.device import pick_device, thread_adapter
from ..base.events import EngineError, Events, log
from ..base.options import add_fields, changes_from_args, check, group, setting, split_changes, with_changes
from ..faces.expression import compare_expression_coverage, expression_balance_weights
from ..folders.faceset import Faceset
from ..networks.adversarial import Adversary, make_adversary
from ..networks.augment import Augmentation, FaceBatches, augment, batch_loader, memory_budget
from ..networks.losses import LossWeights, face_loss
from ..networks.model import (
    DEFAULT_PRESETS,
    FORMAT,
    MODEL_FOLDERS,
    PRESET_CHOICES,
    PREVIEW_FILE,
    SUMMARY_FILE,
    VERSION,
    FaceModel,
    ModelConfig,
    append_history,
    best_checkpoint,
    config_from_state,
    default_preset,
    latest_checkpoint,
    make_config,
    trim_history,
    write_preview,
)

MIN_FACES = 8  # fewer cannot hold out a validation split and still teach anything
FEW_FACES = 200  # below this, say that more faces would help
VALIDATION_FACES = 64  # validation loss is measured on at most this many held-out faces
# Overtraining: compare the mean of the last OVERTRAIN_WINDOW validations with the window before it.
OVERTRAIN_WINDOW = 3
OVERTRAIN_RISE = 0.01
# A run away: a training loss this many times above its best over the last rows (and validations) stops it.
DIVERGENCE_FACTOR = 100
DIVERGENCE_WINDOW = 50
# Model fields that a resume may change; any other would not fit the checkpoint.
RESUMABLE_CHANGES = {"batch", "learning_rate"}


@dataclass
class Schedule:
    """The late phase that sharpens a converged model (DeepFaceLab's recipe): the random warp goes off, so
    the model draws the faces exactly as they are, and learning-rate dropout randomly freezes most
    weights' updates each iteration, which settles the weights finely without lowering the rate."""

    no_warp_after: float = setting(
        0.0, "from this iteration (1 or more), or this share of --iterations or --time-budget (below 1), train "
             "without the random warp; 0: never", low=0, metavar="X", label="Late Phase")
    lr_dropout: float = setting(
        1.0, "share of the weights each Adam update reaches, at random (DeepFaceLab: 0.3), in the late phase (or "
             "throughout without --no-warp-after); 1: off", low=0, high=1, above=True, metavar="X",
        label="LR Dropout")


@dataclass
class Adversarial:
    """The adversarial phase (DeepFaceLab's GAN power; see engine.networks.adversarial): once the reconstruction has
    converged, a small patch discriminator judges the model's faces against the real ones, inside the mask,
    and the model learns to pass for real too, which sharpens skin and fine detail."""

    weight: float = setting(0.0, "weight of the adversarial loss beside the face loss (DeepFaceLab: about 0.1); "
                                 "0: off", low=0, metavar="W", label="Adversarial")
    after: float = setting(0.0, "start it from this iteration (1 or more), or this share of --iterations or "
                                "--time-budget (below 1), once the face is learnt; 0: with the late phase "
                                "(--no-warp-after)", low=0, metavar="X", label="Adversarial After")


@dataclass
class TrainSettings:
    """How a model is trained (its shape is ModelConfig); stored in every checkpoint for --resume, which
    keeps them but for the options given again. One option per field (engine.base.options)."""

    seed: int = setting(0, "random seed", low=0, high=2**32 - 1, metavar="N")
    mask: str = setting("extended", "faceset mask to learn and weight the loss by", choices=["extended", "hull"])
    validation: float = setting(0.1, "share of each faceset held out (its last faces, so it is not the train "
                                     "set's neighbours)", low=0, high=0.5, below=True, metavar="X")
    log_every: int = setting(10, "iterations per history row and progress event", low=1, metavar="N")
    preview_every: int = setting(100, "iterations per preview and validation", low=1, metavar="N")
    save_every: int = setting(500, "iterations per checkpoint (and always on stop)", low=1, metavar="N")
    keep: int = setting(3, "checkpoints to keep", low=1, metavar="N")
    preview_rows: int = setting(4, "faces per person in the preview", low=1, metavar="N")
    balance_expressions: bool = setting(
        False, "show the mouth openings a faceset has few faces of more often (each step of opening by the square "
               "root of its faces, not their number): the swap's mouth then opens as far as B's, not half as far",
        panel=True)
    augmentation: Augmentation = group(Augmentation, "augmentation")
    loss: LossWeights = group(LossWeights, "loss weights", "--{}-weight")
    schedule: Schedule = group(Schedule, "late phase")
    adversarial: Adversarial = group(Adversarial, "adversarial phase", "--gan-{}")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        """The settings a checkpoint stores; a part it lacks (older checkpoints) has its defaults."""
        parts = {f.name: f.default_factory().__class__(**data.get(f.name, {})) for f in fields(cls)
                 if "group" in f.metadata}
        return cls(**{**data, **parts})


@dataclass
class TrainRun:
    """What one run of train is given each time and no checkpoint keeps: when to stop, how to load."""

    iterations: int | None = setting(None, "stop at this iteration (counted over resumes)", kind=int, low=1,
                                     metavar="N")
    time_budget: float | None = setting(None, "stop after this long", kind=float, low=0, above=True,
                                        metavar="SECONDS", unit="s")
    target_loss: float | None = setting(None, "stop when the mean training loss is this low", kind=float, low=0,
                                        above=True, metavar="X")
    workers: int | None = setting(None, "data loader processes (default: 0 on the CPU, up to 8 on CUDA)", kind=int,
                                  low=0, high=64, metavar="N")
    compile: bool = setting(False, "torch.compile the model (CUDA; slow to start)")


class Done(NamedTuple):
    """The "done" event of a run, and what train() returns (as a dict)."""

    iterations: int
    loss_a: float | None
    loss_b: float | None
    val_loss_a: float | None
    val_loss_b: float | None
    stopped: str  # one of loop.STOP_REASONS
    checkpoint: str
    model: str
    preview: str


def add_arguments(parser) -> None:
    parser.add_argument("--a", metavar="FACESET", help="faceset of person A (the face to put in)")
    parser.add_argument("--b", metavar="FACESET", help="faceset of person B (the shot's face)")
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder to create (or continue with --resume)")
    parser.add_argument("--pretrain", action="store_true",
                        help="train a base model on the faces of many people (--faces) instead of a pair")
    parser.add_argument("--faces", nargs="+", metavar="FACESET", help="with --pretrain: the facesets, any number")
    parser.add_argument("--init-from", metavar="BASE_MODEL",
                        help="start a new model from a base model's weights (one made with --pretrain, or any model)")
    parser.add_argument("--preset", choices=PRESET_CHOICES,
                        help="model preset (default: " + ", ".join(f"{p} on {d}" for d, p in DEFAULT_PRESETS.items())
                        + "; on --resume, the model's own)")
    parser.add_argument("--resume", action="store_true", help="continue the model in --model exactly where it stopped")
    add_fields(parser, TrainRun, changes=True)
    add_fields(parser.add_argument_group("model (override the preset)"), ModelConfig, changes=True, own_defaults=False)
    add_fields(parser, TrainSettings, changes=True)


SETTINGS = (TrainRun, ModelConfig, TrainSettings)  # what train()'s keywords and the command line set


def run(args, events: Events) -> None:
    if args.pretrain:
        if not args.faces or args.a or args.b:
            raise EngineError("--pretrain takes its facesets as --faces FACESET ... (not --a and --b)")
    elif args.faces or not (args.a and args.b):
        raise EngineError("train a pair with --a FACESET --b FACESET (or a base model with --pretrain --faces ...)")
    changes = {name: value for cls in SETTINGS for name, value in changes_from_args(cls, args).items()}
    train(args.faces if args.pretrain else args.a, None if args.pretrain else args.b, args.model,
          init_from=args.init_from, preset=args.preset, resume=args.resume, device=args.device, events=events,
          **changes)


@media.holds_folder_locks
def train(
    a: str | Path | list,
    b: str | Path | None,
    model_dir: str | Path,
    init_from: str | Path | None = None,
    preset: str | None = None,
    resume: bool = False,
    device: str = "auto",
    events: Events | None = None,
    **changes,
) -> dict:
    """Train (or with `resume`, continue) the model in `model_dir` on facesets `a` and `b`.

    A base model (pretraining): `a` is a list of facesets of many people and `b` is None; both decoders
    learn from all of them. `init_from` starts a new model from another model's weights (same shape).
    `preset` None means model.default_preset for a new model (by device) and the model's own on resume.
    `changes` are fields of TrainRun, of ModelConfig (its options) and of TrainSettings (a part as a
    dict: loss={"eyes": 2}); None values keep the model's own (or the default). Returns the Done event.
    """
    events = events or Events("train")
    model_dir = Path(model_dir)
    run_changes, model_changes, setting_changes = split_changes(changes, *SETTINGS)
    limits = TrainRun(**run_changes)
    check(limits)
    iterations, time_budget, target_loss = limits.iterations, limits.time_budget, limits.target_loss
    rank, world, device = _start_processes(device)
    main_process = rank == 0
    # Stop asked for during start-up ends the run at once; in the loop it saves first (checkpoints.StopRequests)
    with stop_requests(model_dir if main_process else None) as requests:
        if not main_process:
            events = Events("train", stderr=io.StringIO())  # only the first process reports: never a bar (no tty)
        run_started = time.monotonic()

        # -- set up: the facesets; the model's config, settings and progress; the data; the model and optimiser
        pretrain = b is None
        facesets = _pretrain_facesets(a) if pretrain else {"a": Faceset(a), "b": Faceset(b)}
        _check_facesets(facesets)
        begin = _resumed_start if resume else _new_start
        start = begin(model_dir, init_from, preset, model_changes, facesets, device, events, main_process)
        config, progress = start.config, start.progress
        train_settings = with_changes(start.settings, setting_changes)
        _check_settings(train_settings, limits)
        data = _data(facesets, pretrain, config, train_settings, rank, world)
        loader = batch_loader(data.batches, progress.iteration, iterations, limits.workers, device, world)
        model, optimizer = _model_and_optimizer(config, train_settings.seed, device, start.state,
                                                start.checkpoint if resume else None)
        adversary = _resumed_adversary(train_settings, config, device, world, progress, start.state, start.checkpoint)
        del start  # the loaded weights: the model holds them now
        train_model = _parallel(model, device, world, limits.compile)
        parameters = sum(p.numel() for p in model.parameters())
        if main_process:
            _tidy(model_dir, progress.iteration)
            _announce(events, model_dir, a, b, progress.iteration, device, world, config, parameters, data, facesets)

        # -- the loop
        loss_fn = partial(pair_loss, weights=train_settings.loss)
        window = torch.zeros(2, device=device)  # summed losses since the last history row
        window_start, window_iterations = time.monotonic(), 0
        losses = {"loss_a": None, "loss_b": None, "val_loss_a": None, "val_loss_b": None}
        iteration, checkpoint, stop_reason = progress.iteration, None, None
        threads = thread_adapter(device, world)
        requests.training = True
        with _out_of_memory_hint(config):
            for iteration, batch in zip(itertools.count(progress.iteration + 1), loader, strict=False):
                if progress.late_from is None and late_phase(train_settings.schedule, iteration, iterations,
                                                             time.monotonic() - run_started, time_budget):
                    progress.late_from = iteration
                    events.emit("late_phase", iteration=iteration)
                late = progress.late_from is not None and iteration >= progress.late_from
                if adversary is None and _adversarial_phase(train_settings, iteration, iterations,
                                                            time.monotonic() - run_started, time_budget, late, world,
                                                            device):
                    progress.adversarial_from = iteration
                    adversary = make_adversary(train_settings.adversarial.weight, config.learning_rate,
                                               train_settings.seed, device, world)
                    events.emit("adversarial_phase", iteration=iteration)
                window += train_step(train_model, optimizer, batch, device, loss_fn, warp=not late,
                                     update=_update(optimizer, train_settings, late, iteration, device),
                                     adversary=adversary)
                window_iterations += 1
                if threads:
                    threads.step()

                # why stop now, if at all (every process must agree, or DDP would hang)
                stop_reason = loop.stop_reason(iteration, iterations, time.monotonic() - run_started, time_budget,
                                           requests.reason or events.stop_reason())
                feedback = iteration % train_settings.preview_every == 0
                row = iteration % train_settings.log_every == 0 or feedback
                if row and target_loss is not None and window.sum().item() / (2 * window_iterations) <= target_loss:
                    stop_reason = stop_reason or loop.STOP_TARGET_LOSS
                if world > 1:
                    stop_reason = _agree(stop_reason, device)
                stopping = stop_reason is not None

                if main_process and (row or stopping):
                    it_per_s = window_iterations / max(time.monotonic() - window_start, 1e-9)
                    losses = _report(model_dir, model, data, device, train_settings, events, progress, iteration,
                                     (window / window_iterations).tolist(), validate=feedback or stopping)
                    append_history(model_dir, iteration, progress.elapsed + time.monotonic() - run_started, losses)
                    events.progress(iteration, iterations, iteration=iteration, **losses, it_per_s=round(it_per_s, 3),
                                    eta_s=loop.eta(iteration, iterations, it_per_s, time_budget,
                                               time.monotonic() - run_started))
                if row or stopping:
                    window.zero_()
                    window_start, window_iterations = time.monotonic(), 0
                if main_process and (stopping or iteration % train_settings.save_every == 0):
                    reached = replace(progress, iteration=iteration,
                                      elapsed=progress.elapsed + time.monotonic() - run_started)
                    checkpoint = _save(model_dir, model, optimizer, config, train_settings, facesets, reached, losses,
                                       parameters, adversary)
                if stopping:
                    break

    # -- save: the loop saved its last checkpoint as it stopped
    if main_process:
        clear_stop(model_dir)
    if world > 1:  # leave together: a process that tears gloo down while the first still saves can abort
        dist.barrier()
        dist.destroy_process_group()
    if stop_reason is None:  # the loader ran dry: --iterations was already reached before this run
        stop_reason = loop.STOP_ITERATIONS
        checkpoint = checkpoint_paths(model_dir)[0] if main_process else None
    summary = Done(iteration, **losses, stopped=stop_reason, checkpoint=str(checkpoint), model=str(model_dir),
                   preview=str(model_dir / PREVIEW_FILE))._asdict()
    events.done(**summary)
    return summary


# ---------------------------------------------------------------- set-up


@dataclass
class Progress:
    """How far a model has trained, kept at the top level of each checkpoint: its iteration, the seconds
    all its runs took, [training loss, validation loss] at each validation, and the iterations the late
    and adversarial phases began at (None: not yet; the adversarial one is saved with its discriminator)."""

    iteration: int = 0
    elapsed: float = 0.0
    checks: list = field(default_factory=list)
    late_from: int | None = None
    adversarial_from: int | None = None
    recent_losses: list = field(default_factory=list)  # this run's last history rows' training loss, not saved


class Start(NamedTuple):
    """Where a run starts from: the model's config, settings and progress, and the weights to load (a
    checkpoint's whole state to resume, a base model's to start from, or None) with their checkpoint."""

    config: ModelConfig
    settings: TrainSettings
    progress: Progress
    state: dict | None = None
    checkpoint: Path | None = None


def _resumed_start(model_dir: Path, init_from, preset, model_changes: dict, facesets: dict, device, events: Events,
                   main_process: bool) -> Start:
    """The model in `model_dir` as its newest loadable checkpoint left it, with the changes a resume allows."""
    if not model_dir.is_dir() or not checkpoint_paths(model_dir):
        raise EngineError(f"nothing to resume: {model_dir} holds no model (drop --resume to start one)")
    if init_from:  # refused before the checkpoint is read: it would not be used
        raise EngineError("--init-from starts a new model; a resumed one already has its weights (drop one of them)")
    if main_process:
        media.check_writable(model_dir, MODEL_FOLDERS)
        media.lock_folder(model_dir)
    state, checkpoint = latest_checkpoint(model_dir, device, warn=events.warning)
    first = next(iter(facesets.values()))
    config = _resumed_config(config_from_state(state), preset, model_changes, first.face_size,
                             first.alignments.coverage, model_dir)
    try:
        settings = TrainSettings.from_dict(state["settings"])
        progress = Progress(int(state["iteration"]), float(state["elapsed"]), list(state["checks"]),
                            state.get("late_from"), state.get("adversarial_from"))
    except (KeyError, TypeError, ValueError) as e:
        raise EngineError(f"checkpoint {checkpoint} cannot be resumed: {type(e).__name__}: {e}") from None
    log.info("resuming %s at iteration %d from %s", model_dir, progress.iteration, checkpoint.name)
    return Start(config, settings, progress, state, checkpoint)


def _new_start(model_dir: Path, init_from, preset, model_changes: dict, facesets: dict, device, events: Events,
               main_process: bool) -> Start:
    """A new model in `model_dir` (which must not hold one): from `preset`, or shaped as the base model
    `init_from` with its weights."""
    if checkpoint_paths(model_dir):
        raise EngineError(f"{model_dir} already holds a model: pass --resume to continue it, or choose a new folder")
    if model_dir.is_file():
        raise EngineError(f"--model {model_dir} is a file, not a folder")
    if main_process:
        media.check_writable(model_dir, MODEL_FOLDERS)
        media.lock_folder(model_dir)
    first = next(iter(facesets.values()))
    face_size, coverage = first.face_size, first.alignments.coverage
    if not init_from:
        config = make_config(preset or default_preset(device.type), **model_changes)
        return Start(replace(config, face_size=face_size, coverage=coverage), TrainSettings(), Progress())
    base = _read_base(init_from, device, events)
    config = _resumed_config(config_from_state(base), preset, model_changes, None, coverage, init_from,
                             "start from it at")
    return Start(replace(config, face_size=face_size), TrainSettings(), Progress(), {"model": base["model"]})


@dataclass
class Data:
    """The faces a run learns from and reports on, per person ("a", "b")."""

    samples: dict  # every face (a pretraining pool's, for both people)
    train_samples: dict  # the faces it learns from: the others are held out for validation
    batches: FaceBatches  # the augmented training batches, each a function of (seed, iteration)
    cached: int  # faces held in memory
    validation: dict  # a fixed batch of held-out faces
    preview_faces: dict  # the fixed batch of faces the preview grid shows


def _data(facesets: dict, pretrain: bool, config: ModelConfig, settings: TrainSettings, rank: int,
          world: int) -> Data:
    """Each person's faces, their last ones held out as the validation split (so it is not the training set's
    neighbours), and the batches of the others."""
    samples = {k: f.samples() for k, f in facesets.items()}
    if pretrain:  # both decoders learn every face: the base then draws any person either way
        samples = dict.fromkeys("ab", [face for faces in samples.values() for face in faces])
    held_out = {k: max(1, math.ceil(len(s) * settings.validation)) if settings.validation > 0 else 0
                for k, s in samples.items()}
    train_samples = {k: s[: len(s) - held_out[k]] for k, s in samples.items()}
    face_size = next(iter(facesets.values())).face_size
    weights = ({k: expression_balance_weights([face.landmarks for face in s]) for k, s in train_samples.items()}
               if settings.balance_expressions else None)
    batches = FaceBatches(train_samples, face_size, config.size, config.batch, settings.augmentation, settings.mask,
                          settings.seed, rank, weights)
    cached = batches.preload(memory_budget() // world)
    validation = {k: batches.fixed(loop.spread(s[len(s) - held_out[k]:], VALIDATION_FACES))
                  for k, s in samples.items() if held_out[k]}
    preview_rows = min(settings.preview_rows, *map(len, samples.values()))
    preview_faces = {k: batches.fixed(loop.spread(s, preview_rows)) for k, s in samples.items()}
    return Data(samples, train_samples, batches, cached, validation, preview_faces)


def _model_and_optimizer(config: ModelConfig, seed: int, device, state: dict | None, resumed: Path | None):
    """The model, initialised from `seed` then given `state`'s weights if any, and its Adam optimiser. When
    `resumed` (the checkpoint `state` came from), the optimiser and the random states come back too."""
    torch.manual_seed(seed)
    model = FaceModel(config).to(device)
    cuda = device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.5, 0.999), fused=cuda)
    if resumed is None and state is not None:
        model.load_state_dict(state["model"])
    elif resumed is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if cuda and state["rng"]["cuda"]:
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise EngineError(f"checkpoint {resumed} cannot be resumed: {type(e).__name__}: {e}") from None
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate  # a resume may change it
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    return model, optimizer


def _resumed_adversary(settings: TrainSettings, config: ModelConfig, device, world: int, progress: Progress,
                       state: dict | None, checkpoint: Path | None) -> Adversary | None:
    """The discriminator a resumed checkpoint holds, when its phase had begun and is still on; else None
    (the phase then begins, or begins again, when the loop reaches it)."""
    if settings.adversarial.weight == 0 or progress.adversarial_from is None or "discriminator" not in state:
        return None
    try:
        return make_adversary(settings.adversarial.weight, config.learning_rate, settings.seed, device, world,
                              state["discriminator"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise EngineError(f"checkpoint {checkpoint} cannot be resumed: {type(e).__name__}: {e}") from None


def _parallel(model: FaceModel, device, world: int, compile: bool) -> torch.nn.Module:
    """The module the loop trains: `model` in DistributedDataParallel under torchrun, compiled if asked."""
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    return torch.compile(model) if compile else model


def _tidy(model_dir: Path, start: int) -> None:
    """Clear what an earlier run left behind: killed writes and history rows after `start`."""
    media.sweep_temp_files(model_dir)
    trim_history(model_dir, start)


def _announce(events: Events, model_dir: Path, a, b, start: int, device, world: int, config: ModelConfig,
              parameters: int, data: Data, facesets: dict) -> None:
    """The start event, then warnings about the facesets that a better run would fix."""
    face_size = data.batches.face_size
    events.start(model=str(model_dir), a=str(a), b=str(b), iteration=start, device=str(device),
                 processes=world, preset=config.preset, size=config.size, batch=config.batch,
                 parameters=parameters, faces_a=len(data.train_samples["a"]), faces_b=len(data.train_samples["b"]),
                 faces_in_memory=data.cached,
                 learned_masks=sum(s.mask_learned is not None and s.mask_learned.is_file()
                                   for faces in data.samples.values() for s in faces))
    if config.size > face_size:
        events.warning(f"the facesets' faces are {face_size} px but the model is {config.size} px: it learns "
                       f"upscaled faces (extract at --size {config.size} or more for sharper results)")
    for k, s in data.samples.items():
        if len(s) < FEW_FACES:
            events.warning(f"faceset {k.upper()} has only {len(s)} faces; a few hundred or more, in every pose "
                           f"and light the shot needs, give a far better model")
    if b is not None:  # a pair, not a base: A's faces should span the expressions B's face makes
        faces_a, faces_b = facesets["a"].kept_faces(), facesets["b"].kept_faces()
        coverage = compare_expression_coverage([f.landmarks_raw for _, f in faces_a],
                                               [f.landmarks_raw for _, f in faces_b], [n for n, _ in faces_b])
        for message in coverage["messages"]:
            events.warning(message)


# ---------------------------------------------------------------- the loop's parts


def pair_loss(output, target, weights: LossWeights) -> torch.Tensor:
    """face_loss of the model's (rgb, mask logits) `output` for one person against augment's `target`."""
    return face_loss(*output, *target, weights)


def _report(model_dir: Path, model: FaceModel, data: Data, device, settings: TrainSettings, events: Events,
            progress: Progress, iteration: int, mean: list[float], validate: bool) -> dict:
    """The losses of a history row: the `mean` training losses since the last row and, when `validate`, the
    validation losses (with the overtraining check they feed) and a new preview."""
    if not all(map(math.isfinite, mean)):
        raise _diverged(model_dir, iteration)
    recent = [check[0] for check in progress.checks] + progress.recent_losses
    best = min(recent[-DIVERGENCE_WINDOW:], default=math.inf)
    if sum(mean) / 2 > DIVERGENCE_FACTOR * best:
        raise _diverged(model_dir, iteration, f"the loss climbed to {sum(mean) / 2:.3g}, over {DIVERGENCE_FACTOR}x "
                                              f"its recent best of {best:.3g}")
    progress.recent_losses = progress.recent_losses[-DIVERGENCE_WINDOW:] + [sum(mean) / 2]
    losses = {"loss_a": mean[0], "loss_b": mean[1], "val_loss_a": None, "val_loss_b": None}
    if not validate:
        return losses
    losses.update(_validate(model, data.validation, device, settings.loss))
    if losses["val_loss_a"] is not None:
        progress.checks.append([sum(mean) / 2, (losses["val_loss_a"] + losses["val_loss_b"]) / 2])
        if overtraining(progress.checks) and not overtraining(progress.checks[:-1]):  # once per rise
            events.warning(f"validation loss is rising while training loss still falls (iteration {iteration}): "
                           f"the model may be overtraining; more varied faces help, or stop here", iteration=iteration)
    preview = write_preview(model_dir, preview_grid(model, data.preview_faces, device), iteration)
    events.preview(path=str(preview), iteration=iteration)
    return losses


# ---------------------------------------------------------------- one step, one save


def train_step(model, optimizer, batch: dict, device, loss, warp: bool = True, update=None,
               adversary: Adversary | None = None) -> torch.Tensor:
    """One training step, as train() runs it and bench/train.py times it: augment both people's faces on
    the device (random warp while `warp`), run `model` on them (bf16 autocast on CUDA), `loss(output,
    target)` for each person, backward, then `update()` (default: the optimizer's step). With an
    `adversary` (the adversarial phase), its generator term joins each person's loss and its
    discriminator then takes a step of its own on this batch. Returns the two `loss`es, detached."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    inputs, targets = {}, {}
    for k in ("a", "b"):
        x, *target = augment(batch[k], device, train=warp)
        inputs[k], targets[k] = x.contiguous(memory_format=memory_format), target
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):  # MPS: float32
        outputs = model(inputs["a"], inputs["b"])
    loss_a, loss_b = (loss(out, targets[k]) for k, out in zip("ab", outputs, strict=True))
    total = loss_a + loss_b
    if adversary is not None:
        total = total + sum(adversary.generator_loss(out[0], targets[k]) for k, out in zip("ab", outputs, strict=True))
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    (update or optimizer.step)()
    if adversary is not None:
        adversary.step([out[0] for out in outputs], [targets["a"], targets["b"]])
    return torch.stack([loss_a.detach(), loss_b.detach()])


def _save(model_dir: Path, model: FaceModel, optimizer, config: ModelConfig, settings: "TrainSettings",
          facesets: dict, progress: Progress, losses: dict, parameters: int, adversary: Adversary | None) -> Path:
    """The checkpoint (weights, optimiser, random states, `progress` and, in the adversarial phase, the
    discriminator and its optimiser) and model.json, on the main process; never of weights that are not
    finite. The face model's weights are the same keys with or without a discriminator."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise _diverged(model_dir, progress.iteration)
    state = {
        "format": FORMAT, "version": VERSION, "iteration": progress.iteration, "elapsed": progress.elapsed,
        "config": asdict(config), "settings": asdict(settings), "checks": progress.checks,
        "late_from": progress.late_from, "facesets": {k: str(f.folder.resolve()) for k, f in facesets.items()},
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if next(model.parameters()).is_cuda else []},
    }
    if adversary is not None:
        state.update(adversarial_from=progress.adversarial_from, discriminator=adversary.state_dict())
    best = best_checkpoint(model_dir)
    path = write_checkpoint(model_dir, state, settings.keep, best[0] if best else None)
    media.write_json(model_dir / SUMMARY_FILE, {
        "format": FORMAT, "version": VERSION, "iteration": state["iteration"],
        "checkpoint": f"{CHECKPOINTS}/{path.name}", "elapsed_s": round(state["elapsed"], 1), "config": state["config"],
        "parameters": parameters, "settings": state["settings"], "facesets": state["facesets"], **losses,
    })
    return path


def _update(optimizer, settings: "TrainSettings", late: bool, iteration: int, device):
    """The optimizer update of `iteration`: with learning-rate dropout (seeded by the iteration, so a
    resumed run makes the same choices) in the late phase, or throughout without one; else Adam's step."""
    keep = settings.schedule.lr_dropout
    if keep < 1 and (late or not settings.schedule.no_warp_after):
        return partial(masked_step, optimizer, keep, torch.Generator(device).manual_seed(
            settings.seed * 1_000_003 + iteration))
    return optimizer.step


# ---------------------------------------------------------------- checks


def _given(changes: dict) -> dict:
    return {k: v for k, v in changes.items() if v is not None}


def _diverged(model_dir: Path, iteration: int, how: str = "the loss is no longer a finite number") -> EngineError:
    """The error that stops a run whose loss ran away or whose loss or weights stopped being numbers:
    nothing more of it is saved, and it names the checkpoint to go back to."""
    kept, best = checkpoint_paths(model_dir), best_checkpoint(model_dir)
    if best and best[0] != kept[0]:
        last = (f"its best checkpoint, {best[0].name} (loss {best[1]:.4g}), is kept: move the newer ones out of "
                f"{model_dir / CHECKPOINTS} to resume from it")
    else:
        last = f"its last good checkpoint, {kept[0].name}, is kept" if kept else "no checkpoint was saved"
    return EngineError(f"training diverged at iteration {iteration}: {how} (a lower --learning-rate helps); {last}")


def _pretrain_facesets(folders: list) -> dict[str, Faceset]:
    return {str(i + 1): Faceset(folder) for i, folder in enumerate(folders)}


def _check_facesets(facesets: dict[str, Faceset]) -> None:
    """A pair ("a", "b") needs MIN_FACES each; a pretraining pool ("1", "2", ...) needs them in all."""
    pair = set(facesets) == {"a", "b"}
    for k, faceset in facesets.items() if pair else [("the pool", None)]:
        count = len(faceset) if pair else sum(map(len, facesets.values()))
        if count < MIN_FACES:
            where = f"faceset {k.upper()} ({faceset.folder})" if pair else "the pretraining facesets together"
            raise EngineError(f"{where} has {count} faces; training needs at least {MIN_FACES} (extract more frames)")
    (first_name, first), *others = facesets.items()
    for name, other in others:
        if (first.face_size, first.alignments.coverage) != (other.face_size, other.alignments.coverage):
            raise EngineError(f"the facesets differ: {first_name.upper()} is {first.face_size} px at coverage "
                              f"{first.alignments.coverage:g}, {name.upper()} is {other.face_size} px at coverage "
                              f"{other.alignments.coverage:g}; extract all with the same --size and --coverage")


def _read_base(base_dir, device, events: Events) -> dict:
    """The newest good checkpoint of the model that --init-from names."""
    if not checkpoint_paths(base_dir):
        raise EngineError(f"--init-from {base_dir} holds no model checkpoint")
    return latest_checkpoint(base_dir, device, warn=events.warning)[0]


def _resumed_config(stored: ModelConfig, preset, changes: dict, face_size: int | None, coverage: float,
                    model_dir: Path, action: str = "resume at") -> ModelConfig:
    """The checkpoint's config with the changes a resume (or an --init-from, `action`) allows; an error for
    any it does not. `face_size` None: the new facesets may be of any size (they are resized)."""
    changes = _given({"preset": preset, **changes})
    for name, value in changes.items():
        if value != getattr(stored, name) and name not in RESUMABLE_CHANGES:
            what = {"size": "px", "preset": "preset"}.get(name, name.replace("_", " "))
            raise EngineError(f"the model in {model_dir} is {getattr(stored, name)} {what}; it cannot {action} "
                              f"{value} {what} (train a new model folder for that)")
    if (face_size or stored.face_size, coverage) != (stored.face_size, stored.coverage):
        raise EngineError(f"the model in {model_dir} was trained on {stored.face_size} px faces at coverage "
                          f"{stored.coverage:g}; these facesets are {face_size} px at coverage {coverage:g}")
    return replace(stored, **{k: v for k, v in changes.items() if k in RESUMABLE_CHANGES})


def _check_settings(settings: TrainSettings, limits: TrainRun) -> None:
    """Refuse settings no run can use: out of their fields' ranges, or phases that cannot start."""
    check(settings)
    schedule, gan = settings.schedule, settings.adversarial
    _check_phase_start("--no-warp-after", schedule.no_warp_after, limits)
    _check_phase_start("--gan-after", gan.after, limits)
    if gan.weight > 0 and not gan.after and not schedule.no_warp_after:
        raise EngineError("--gan-weight needs --gan-after X (or --no-warp-after X, whose late phase it then joins): "
                          "the adversarial phase starts only once the face is learnt")


def _check_phase_start(option: str, after: float, limits: TrainRun) -> None:
    """A phase starts at an iteration, or at a share (below 1) of a budget that must then be given (see _reached)."""
    if 0 < after < 1 and limits.iterations is None and limits.time_budget is None:
        raise EngineError(f"{option} takes an iteration, or a share (below 1) of --iterations or --time-budget; "
                          f"got {after:g} with neither given")


def late_phase(schedule: Schedule, iteration: int, iterations: int | None, seconds: float,
               time_budget: float | None) -> bool:
    """Whether `iteration` (`seconds` into this run) falls in the schedule's late phase."""
    return _reached(schedule.no_warp_after, iteration, iterations, seconds, time_budget)


def _adversarial_phase(settings: TrainSettings, iteration: int, iterations: int | None, seconds: float,
                       time_budget: float | None, late: bool, world: int, device) -> bool:
    """Whether `iteration` falls in the adversarial phase: from --gan-after, or with the late phase. Under
    torchrun every process agrees (a share of the time budget may come to each at another iteration)."""
    gan = settings.adversarial
    if gan.weight == 0:
        return False
    begun = _reached(gan.after, iteration, iterations, seconds, time_budget) if gan.after else late
    if world > 1:
        flag = torch.tensor([int(begun)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        begun = bool(flag.item())
    return begun


def _reached(after: float, iteration: int, iterations: int | None, seconds: float, time_budget: float | None) -> bool:
    """Whether a phase that starts `after` (an iteration, 1 or more; a share, below 1, of `iterations` or of
    `time_budget`; 0: never) has started by `iteration`, `seconds` into this run."""
    if after >= 1:
        return iteration > after
    if after > 0 and iterations is not None:
        return iteration > after * iterations
    return after > 0 and time_budget is not None and seconds >= after * time_budget


@torch.no_grad()
def masked_step(optimizer: torch.optim.Optimizer, keep: float, generator: torch.Generator) -> None:
    """Learning-rate dropout (DeepFaceLab's lr_dropout): an optimiser step whose update reaches each weight
    with probability `keep`; the others keep their value (Adam's moments still see every gradient). The
    masks come from `generator`, seeded by (seed, iteration) like the batches, so a resumed run and every
    DDP process draw the same ones."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    before = [p.detach().clone() for p in params]
    optimizer.step()
    for p, old in zip(params, before, strict=True):
        drawn = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        p.copy_(torch.where(drawn < keep, p, old))


# ---------------------------------------------------------------- processes, signals, memory


def _start_processes(device_name: str):
    """(rank, world size, device). Under torchrun, one process per GPU (or CPU process) joined for DDP."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device(device_name)
    device = pick_device(device_name)
    if device.type == "mps":
        raise EngineError("one Mac has one MPS GPU: train without torchrun (or with --device cpu)")
    # nccl is Linux's; Windows' torch has gloo only, which carries CUDA tensors more slowly but works
    dist.init_process_group("nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def _agree(stop_reason: str | None, device) -> str | None:
    """Every process stops if any wants to: the reason is shared as an index into a fixed list."""
    reasons = [None, *loop.STOP_REASONS]
    flag = torch.tensor([reasons.index(stop_reason)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return reasons[int(flag.item())]


@contextlib.contextmanager
def _out_of_memory_hint(config: ModelConfig):
    try:
        yield
    except torch.OutOfMemoryError:
        raise EngineError(f"out of GPU memory training {config.size} px at batch {config.batch}: lower --batch "
                          f"or --size (or use a smaller --preset)") from None


# ---------------------------------------------------------------- feedback


@torch.no_grad()
def _validate(model: FaceModel, validation: dict, device, weights: LossWeights) -> dict:
    """Mean loss of each person's held-out faces, unaugmented; {} when nothing is held out."""
    out = {}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for k, batch in validation.items():
            inputs, *targets = augment(batch, device, train=False)
            out[f"val_loss_{k}"] = face_loss(*model.draw(inputs, k), *targets, weights).item()
    return out


def overtraining(checks: list[list[float]]) -> bool:
    """True when, over the latest validations, validation loss went up while training loss went down.

    `checks` holds [training loss, validation loss] per validation, oldest first. Each trend is the mean
    of the last few against the few before, so one noisy validation does not raise the alarm.
    """
    w = OVERTRAIN_WINDOW
    if len(checks) < 2 * w:
        return False
    before, recent = np.mean(checks[-2 * w : -w], axis=0), np.mean(checks[-w:], axis=0)
    return bool(recent[1] > before[1] * (1 + OVERTRAIN_RISE) and recent[0] < before[0])


def preview_grid(model: FaceModel, faces: dict, device) -> np.ndarray:
    """Rows of A, A->A, A->B, B, B->B, B->A: each drawn face is laid over its source face by its own
    predicted mask, as convert would lay it into a frame. uint8 RGB, rows*size x 6*size."""
    columns = []
    for source, other in (("a", "b"), ("b", "a")):
        inputs, *_ = augment(faces[source], device, train=False)
        columns.append(inputs)
        for person in (source, other):
            rgb, mask = model.swap(inputs, person)
            columns.append(rgb * mask + inputs * (1 - mask))
    tiles = torch.stack(columns, 1).flatten(0, 1)  # row-major: face 0's six columns, then face 1's, ...
    tiles = (tiles.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return media.contact_sheet(list(tiles), columns=6)
