"""`train(cfg)`: the whole training run, short enough to read in one go (in the spirit of nanoGPT).

Order matters for the run folder's records (facelab.train.run): the configuration is checked, the
folder locked, a resume checked against the checkpoint, the data opened and the state restored
before anything in the folder is written, so a run that cannot start leaves the folder as it was.
"""

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facelab.config import AMP_MODES, Config, config_to_dict
from facelab.data.loader import make_loader, to_device
from facelab.data.multi import open_training_data
from facelab.data.pairsets import load_bin
from facelab.data.samplers import build_sampler
from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.distill.setup import DistillPlots, distill_data
from facelab.distributed import env as dist_env
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.protocols import PROTOCOLS
from facelab.eval.protocols.thresholds import store_thresholds
from facelab.eval.reports.folders import without_curves
from facelab.eval.reports.plots import plot_roc
from facelab.io import check_writable, remove_stale_temps, write_table
from facelab.jsonfile import write_json_atomic
from facelab.model import CHECKPOINT_NAME, load_checkpoint
from facelab.train.checkpoint import TrainState
from facelab.train.finetune import (
    InitSource,
    adopt_preprocess,
    init_preprocess,
    load_backbone,
    load_init_source,
)
from facelab.train.logging import RunLogger
from facelab.train.optim import build_optimizer, build_scheduler
from facelab.train.progress import Progress
from facelab.train.run import METRICS_NAME, RunLock, finished_summary, resume_changes, write_config
from facelab.train.task import FaceTask, check_names, check_world
from facelab.train.validate import embed_images_sharded

log = logging.getLogger(__name__)
AMP_DTYPES = dict(zip(AMP_MODES, (None, torch.bfloat16, torch.float16), strict=True))
BAD_IMAGES_NAME = "bad_images.csv"


@dataclass
class _Run:
    """One process's run: config, folder, data, training state and records."""

    cfg: Config
    folder: Path
    env: dist_env.DistEnv
    state: TrainState
    dataset: torch.utils.data.Dataset
    val_sets: dict  # name -> pair set (facelab.data.pairsets)
    plots: DistillPlots | None
    bad_images: list[tuple[str, str]]  # (image, reason) left out of the set (data.skip_bad)
    changes: list[dict]  # config changes made by resumes (facelab.train.run)
    # the model the run started from (model.init_from): {"path", "weights_digest"}; None: random
    init_from: dict | None = None
    seconds: float = 0.0  # time spent in training steps, over every session of the run (images/s)
    images: int = 0  # images trained on, over every session


def train(cfg: Config, resume: bool = False, stop_at: int | None = None) -> dict:
    """Train `cfg`; returns the summary also written to `<output>/metrics.json`.

    resume: continue the run in cfg.output from its checkpoint; cfg may differ from the run's stored
    configuration only in facelab.train.run.RESUMABLE keys. A finished run is left untouched.
    stop_at: leave after this step with a checkpoint, as a pre-empted job would (continue with
    resume=True); such a partial run writes no metrics.json.
    """
    # a misspelt margin or backbone fails here, before data is read or files written
    check_names(cfg)
    # fine-tuning: a new run's source model, read and checked before anything else; a resumed run
    # restores its own weights and never reads it again (facelab.train.finetune)
    source = None if resume else load_init_source(cfg)
    # one process, or one of torchrun's (facelab.distributed)
    env = dist_env.setup(cfg.train.device)
    finished, lock = False, None
    try:
        # fp16 or GroupFace under torchrun: refused before the data is opened and decoded
        check_world(cfg, env.world_size)
        folder, lock = _open_run(cfg, resume, env)
        summary = _train(cfg, folder, resume, stop_at, env, source)
        finished = True
        return summary
    finally:
        if lock is not None:
            lock.release()
        dist_env.teardown(env, finished)


def _train(cfg: Config, folder: Path, resume: bool, stop_at: int | None,
           env: dist_env.DistEnv, source: InitSource | None = None) -> dict:
    ckpt, changes = (load_checkpoint(folder), []) if resume else (None, [])
    if ckpt is not None:
        changes = [*ckpt.get("config_changes", []), *resume_changes(cfg, ckpt, folder)]
        done = finished_summary(folder, cfg, ckpt)
        if done is not None:
            asked = len(changes) > len(ckpt.get("config_changes", []))
            log.info(
                "%s: finished at step %d already; nothing to do, the folder is left as it is%s",
                folder,
                ckpt["step"],
                " (the changed settings are not applied)" if asked else "",
            )
            return done
    _set_torch(cfg, env.device)
    # a resumed run trains with the input normalisation it recorded (a fine-tuned run's: its
    # source's)
    recorded = None if ckpt is None else ckpt["preprocess"]
    run = _build(cfg, folder, env, changes, source, recorded)
    if ckpt is not None:
        run.state.restore(ckpt, env.device)
        run.init_from = ckpt.get("init_from")  # what the run started from, kept across resumes
        timing = ckpt.get("timing", {"seconds": 0.0, "images": 0})
        run.seconds, run.images = timing["seconds"], timing["images"]
        log.info("resumed %s at step %d", folder, run.state.step)
    del ckpt
    if env.main:  # the run is set up: only now is the folder written
        _write_records(folder, cfg, changes, run.bad_images)
    dist_env.barrier(env)
    first = run.state.step if resume else None
    logger = RunLogger(folder, cfg.train.tensorboard, first) if env.main else dist_env.NullLogger()
    end = min(cfg.train.steps, stop_at) if stop_at else cfg.train.steps
    show = cfg.train.progress and env.main
    progress = Progress(cfg.name, cfg.train.steps, run.state.step, show, cfg.train.status_every)
    _loop(run, logger, progress, end)
    progress.close()
    if end < cfg.train.steps:
        logger.close()
        return {"train": {"steps": end, "complete": False}}
    return _finish(run, logger)


def _set_torch(cfg: Config, device: torch.device) -> None:
    """Threads, cuDNN autotuning and the seed of the run's draws."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":  # fixed 112×112 batches: the fastest algorithm found once serves all
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    torch.manual_seed(cfg.seed)


def _build(cfg: Config, folder: Path, env: dist_env.DistEnv, changes: list[dict],
           source: InitSource | None = None, recorded: dict | None = None) -> _Run:
    """Data, model, head, optimiser, schedule and batch sampler of `cfg` on this rank; the
    backbone freshly initialised, or with `source`'s weights (model.init_from of a new run).
    recorded: the preprocessing record of the checkpoint a resumed run continues."""
    dataset = open_training_data(cfg.data, preload=cfg.data.preload)  # data.train or data.datasets
    val_sets = {Path(p).stem: load_bin(p) for p in cfg.data.val_pairs}
    preprocess = {**PREPROCESS_DEFAULT, "size": int(dataset[0][0].shape[-1])}
    if source is not None:  # the source's colour and normalisation; size and template agree
        preprocess = init_preprocess(source, preprocess)
    elif recorded is not None:
        preprocess = adopt_preprocess(recorded, preprocess)
    offsets = getattr(dataset, "offsets", None)  # first class of each dataset (DAIL); None: one
    shard = (env.rank, env.world_size)
    task = FaceTask(cfg, dataset.num_classes, preprocess, shard=shard, offsets=offsets)
    if source is not None:  # after the random init, so the head draws as in a run from scratch
        load_backbone(task.backbone, source)
        source.state.clear()  # copied into the task: the run holds no second copy of the weights
        if env.main:
            log.info("model.init_from: backbone initialised from %s (weights %s)", source.path,
                     source.digest[:12])
    if cfg.train.freeze and env.main:
        total = sum(p.numel() for p in task.backbone.parameters())
        log.info("train.freeze: %d of the backbone's %d parameter values frozen (%s)",
                 task.frozen_parameters, total, ", ".join(cfg.train.freeze))
        if cfg.model.init_from is None:
            log.warning("train.freeze without model.init_from: the frozen parts keep their "
                        "random initial weights")
    task = task.to(env.device)
    if cfg.train.channels_last:
        task = task.to(memory_format=torch.channels_last)
    task.wrap_backbone(lambda backbone: _train_backbone(backbone, cfg, env))
    optimizer = build_optimizer(cfg.optim, task)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.steps, cfg.optim.lr)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.train.amp == "fp16")
    sampler = build_sampler(cfg, dataset, env.rank, env.world_size)
    plots, bad = None, list(getattr(dataset, "bad_images", None) or [])
    if cfg.distill.name != "none":  # easy and hard images of the same identities per batch
        dataset, sampler, plots = distill_data(dataset, cfg, env)
    state = TrainState(task, optimizer, scheduler, scaler, sampler)
    init_from = None if source is None else source.record()
    return _Run(cfg, folder, env, state, dataset, val_sets, plots, bad, changes, init_from)


def _train_backbone(backbone: nn.Module, cfg: Config, env: dist_env.DistEnv) -> nn.Module:
    """The backbone as the training forward runs it: DDP-wrapped and/or torch.compiled."""
    module = dist_env.wrap_backbone(backbone, env)
    return torch.compile(module) if cfg.train.compile else module


def _open_run(cfg: Config, resume: bool, env: dist_env.DistEnv) -> tuple[Path, RunLock | None]:
    """The run folder, checked writable and locked by rank 0; fresh or resumable as asked."""
    run = Path(cfg.output)

    def lock() -> RunLock:
        check_writable(run, "run folder")
        held = RunLock(run).acquire()
        has_checkpoint = (run / CHECKPOINT_NAME).exists()
        if has_checkpoint != resume:
            held.release()
            if has_checkpoint:
                raise FacelabError(f"{run}: holds a run already; pass --resume to continue it, or "
                                   "choose another output")
            raise FacelabError(f"{run}: nothing to resume (no {CHECKPOINT_NAME})")
        return held

    return run, dist_env.on_main(env, lock)


def _write_records(run: Path, cfg: Config, changes: list[dict], bad: list[tuple[str, str]]) -> None:
    """config.yaml (what runs), the bad images left out; a finished run's old summary goes."""
    remove_stale_temps(run)  # of a writer killed mid-write (write_atomic)
    write_config(run, cfg, changes)
    (run / METRICS_NAME).unlink(missing_ok=True)  # rewritten when this run ends
    if bad:
        write_table(run / BAD_IMAGES_NAME, ["image", "reason"], bad)
        log.warning("data: trained without %d bad images (data.skip_bad), listed in %s", len(bad),
                    run / BAD_IMAGES_NAME)


def _loop(run: _Run, logger: RunLogger | dist_env.NullLogger, progress: Progress, end: int) -> None:
    """Steps state.step+1 .. end, adding their time and images to run.seconds and run.images."""
    cfg, state, env = run.cfg, run.state, run.env
    per_epoch = len(state.sampler)  # batches per epoch (a new sampler starts at batch 0)
    if run.plots and state.step == 0 and env.main:
        run.plots.before(state.task, run.folder, env.device)
    state.task.train()
    loader = make_loader(run.dataset, state.sampler, cfg.data.workers, env.device, seed=cfg.seed)
    pending: list[torch.Tensor] = []  # losses not yet checked for NaN/inf (no per-step sync)
    while state.step < end:
        state.sampler.set_position(*divmod(state.step, per_epoch))
        tick = time.perf_counter()
        for batch in loader:  # images, labels and optionally an extras dict (facelab.train.task)
            losses, size = _step(run, list(batch), per_epoch)
            pending.append(losses["loss"].detach())
            state.step += 1
            step = state.step
            run.images += size
            progress.update(size)
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                _check_finite(pending, step)
                values = {f"loss/{k}": v.item() for k, v in losses.items()}
                values["lr"] = state.scheduler.get_last_lr()[0]
                logger.log(step, values)
                progress.set_loss(values["loss/loss"])
            run.seconds += time.perf_counter() - tick
            every = cfg.train.eval_every
            if run.val_sets and every and step % every == 0 and step < cfg.train.steps:
                _check_finite(pending, step)
                _validate(run, logger, step)
            if step % cfg.train.checkpoint_every == 0 or step == end:
                _check_finite(pending, step)
                _checkpoint(run)
            if step >= end:
                break
            tick = time.perf_counter()


def _step(run: _Run, batch: list, per_epoch: int) -> tuple[dict[str, torch.Tensor], int]:
    """One optimisation step on `batch`; (its losses, images over every rank)."""
    cfg, state, device = run.cfg, run.state, run.env.device
    task, optimizer, scaler = state.task, state.optimizer, state.scaler
    images, labels, *rest = to_device(batch, device)
    task.set_step(state.step)  # DAIL's GRL schedule and the crossing-dropout draw
    with _autocast(device, cfg.train.amp):
        out = task(images, labels, **(rest[0] if rest else {}))
    if state.sampler.wants_feedback:  # Adaptive Data Sampling: hard images drawn more often
        state.sampler.feedback(state.step % per_epoch, out.correct.cpu().numpy())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out.losses["loss"]).backward()
    if cfg.train.clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        classifier = None if task.head is None else task.head.classifier
        dist_env.clip_grad_norm(task.parameters(), cfg.train.clip_grad_norm, classifier)
    scaler.step(optimizer)
    scaler.update()
    task.after_step()
    state.scheduler.step()
    return out.losses, len(labels) * run.env.world_size


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _check_finite(pending: list[torch.Tensor], step: int) -> None:
    """Raise if any loss of the steps ending at `step` is NaN/inf, naming the first; empties
    `pending`.

    One device sync for all of them, at log, eval and checkpoint steps only, instead of one per
    step: a diverged run still stops before its weights are evaluated or checkpointed.
    """
    if not pending:
        return
    losses = torch.stack(pending)  # [n] the losses of steps step-n+1 .. step
    pending.clear()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        first = int(bad[0, 0])
        bad_step = step - len(losses) + first
        raise FacelabError(f"step {bad_step}: loss is {losses[first].item()} "
                           "(lower optim.lr or enable clipping)")


def _evaluate(run: _Run) -> tuple[dict, dict]:
    """(verification results, deployment thresholds) per pair set from one embedding pass; in a
    multi-process run every rank embeds its share of the images."""
    embed = embed_images if run.env.world_size == 1 else embed_images_sharded
    task = run.state.task
    kw = {"batch_size": 2 * run.cfg.data.batch_size, "preprocess": task.preprocess,
          "device": run.env.device}
    evaluate = PROTOCOLS["pairs"]
    results = evaluate(task.backbone, run.val_sets, embed=embed, operating_points=True, **kw)
    return results, {name: r.pop("operating_points") for name, r in results.items()}


def _validate(run: _Run, logger: RunLogger | dist_env.NullLogger, step: int) -> None:
    """Verification accuracy of every validation set, logged at `step`."""
    started = time.perf_counter()
    results = _evaluate(run)[0]
    values = {f"val/{name}/accuracy": r["accuracy"] for name, r in results.items()}
    logger.log(step, {**values, "val/seconds": time.perf_counter() - started})


def _checkpoint(run: _Run) -> None:
    """The training state and the run's records, written atomically by rank 0."""
    task = run.state.task
    run.state.save(run.folder / CHECKPOINT_NAME, {
        "config": config_to_dict(run.cfg),
        "config_changes": run.changes,  # what resumes changed, with the step (facelab.train.run)
        "timing": {"seconds": run.seconds, "images": run.images},
        "preprocess": task.preprocess,
        "num_classes": run.dataset.num_classes,
        "init_from": run.init_from,  # the source model of a fine-tuned run (model.init_from)
    }, run.env.main)
    dist_env.barrier(run.env)


def _finish(run: _Run, logger: RunLogger | dist_env.NullLogger) -> dict:
    """The final 10-fold evaluation, deployed thresholds, plots and metrics.json of a completed
    run."""
    cfg, env, folder = run.cfg, run.env, run.folder
    results, thresholds = _evaluate(run)  # 10-fold accuracy + thresholds
    if results:
        accuracies = {f"val/{n}/accuracy": r["accuracy"] for n, r in results.items()}
        logger.log(cfg.train.steps, accuracies)
        if env.main:
            plot_roc(results, folder / "roc.png")
            store_thresholds(folder / CHECKPOINT_NAME, thresholds)  # the deployed operating points
    if run.plots and env.main:
        run.plots.after(run.state.task, folder, env.device)
    logger.close()
    train = {
        "steps": cfg.train.steps,
        # over every session of the run; None only for a checkpoint without timing
        "images_per_second": run.images / run.seconds if run.seconds > 0 else None,
        "num_classes": run.dataset.num_classes,
        "num_images": len(run.dataset),
        "bad_images_skipped": len(run.bad_images),
        "config_changes": run.changes,
        "init_from": run.init_from,  # {"path", "weights_digest"} of model.init_from; None
        "frozen_parameters": run.state.task.frozen_parameters,  # values train.freeze held fixed
    }
    summary = {"pairs": without_curves(results), "thresholds": thresholds, "train": train}
    if env.main:
        write_json_atomic(folder / METRICS_NAME, summary)
    return summary
