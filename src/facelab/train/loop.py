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

from facelab.config import AMP_MODES, Config, config_to_dict
from facelab.data.loader import make_loader, to_device
from facelab.data.multi import dataset_sampler, open_training_data
from facelab.data.pairsets import load_bin
from facelab.data.pk_sampler import build_label_sampler
from facelab.data.samplers import AdaptiveBatchSampler, EpochBatchSampler
from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.distill.setup import distill_data
from facelab.distributed import env as dist_env
from facelab.distributed.checkpoint import full_state, slice_state
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.report import plot_roc, without_curves
from facelab.eval.thresholds import evaluate_with_thresholds, store_thresholds
from facelab.io import check_writable, remove_stale_temps, write_table
from facelab.jsonfile import write_json_atomic
from facelab.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from facelab.train.logging import RunLogger
from facelab.train.optim import build_optimizer, build_scheduler
from facelab.train.progress import Progress
from facelab.train.run import METRICS_NAME, RunLock, finished_summary, resume_changes, write_config
from facelab.train.task import FaceTask, check_names

log = logging.getLogger(__name__)
AMP_DTYPES = dict(zip(AMP_MODES, (None, torch.bfloat16, torch.float16), strict=True))
BAD_IMAGES_NAME = "bad_images.csv"


@dataclass
class _Parts:
    """What a run trains with, built before the run folder is touched."""

    dataset: torch.utils.data.Dataset
    val_sets: dict
    task: FaceTask
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: object  # a batch sampler with set_position (facelab.data.samplers, pk_sampler, multi, distill)
    plots: object  # DistillPlots or None
    bad_images: list[tuple[str, str]]  # (image, reason) left out of the set (data.skip_bad)


@dataclass
class _Session:
    """One process's run: its config, folder, parts and records."""

    cfg: Config
    run: Path
    env: dist_env.DistEnv
    parts: _Parts
    changes: list[dict]  # config changes made by resumes (facelab.train.run)
    logger: RunLogger | dist_env.NullLogger
    progress: Progress
    seconds: float = 0.0  # time spent in training steps, over every session of the run (images/s)
    images: int = 0  # images trained on, over every session


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _evaluate(task: FaceTask, val_sets: dict, cfg: Config, env: dist_env.DistEnv) -> tuple[dict, dict]:
    """(verification results, deployment thresholds) per pair set from one embedding pass; in a
    multi-process run every rank embeds its share of the images."""
    embed = embed_images
    if env.world_size > 1:
        from facelab.distributed.evaluate import embed_images_sharded as embed
    kw = {"batch_size": 2 * cfg.data.batch_size, "preprocess": task.preprocess, "device": env.device}
    return evaluate_with_thresholds(task.backbone, val_sets, embed=embed, **kw)


def _sampler(num_samples: int, cfg: Config, env: dist_env.DistEnv) -> EpochBatchSampler | AdaptiveBatchSampler:
    """Uniform epochs, or AdaptiveFace's Adaptive Data Sampling when data.adaptive_sampling.enabled;
    each rank gets its share of every global batch."""
    ads, bs, shard = cfg.data.adaptive_sampling, cfg.data.batch_size, {"rank": env.rank, "world_size": env.world_size}
    try:
        if ads.enabled:
            bounds = ads.min_weight, ads.max_weight
            return AdaptiveBatchSampler(num_samples, bs, cfg.seed, cfg.data.flip, ads.up, ads.down, *bounds, **shard)
        return EpochBatchSampler(num_samples, bs, cfg.seed, cfg.data.flip, **shard)
    except ValueError as e:
        raise FacelabError(f"config data.batch_size: {e}") from None


def _checkpoint(s: _Session, step: int) -> None:
    parts = s.parts
    task, sampler = parts.task, parts.sampler
    head, opt = full_state(task.head, parts.optimizer)  # the whole classifier, gathered from every rank
    if s.env.main:
        save_checkpoint(s.run / CHECKPOINT_NAME, {
            "model": task.backbone.state_dict(),
            "head": head,
            "objectives": task.objectives.state_dict(),  # learnable loss parameters (MarginLoss beta)
            "optimizer": opt,
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "step": step,
            "rng": rng_state(next(task.parameters()).device),  # with the CUDA generator's on a GPU
            "config": config_to_dict(s.cfg),
            "config_changes": s.changes,  # what resumes changed, with the step (facelab.train.run)
            "timing": {"seconds": s.seconds, "images": s.images},
            "preprocess": task.preprocess,
            "num_classes": parts.dataset.num_classes,
            "sampler": sampler.state_dict() if isinstance(sampler, AdaptiveBatchSampler) else {},
        })
    dist_env.barrier(s.env)


def _check_finite(pending: list[torch.Tensor], step: int) -> None:
    """Raise if any loss of the steps ending at `step` is NaN/inf, naming the first; empties `pending`.

    One device sync for all of them, at log, eval and checkpoint steps only, instead of one per step:
    a diverged run still stops before its weights are evaluated or checkpointed.
    """
    if not pending:
        return
    losses = torch.stack(pending)  # [n] the losses of steps step-n+1 .. step
    pending.clear()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        first = int(bad[0, 0])
        bad_step = step - len(losses) + first
        raise FacelabError(f"step {bad_step}: loss is {losses[first].item()} (lower optim.lr or enable clipping)")


def _build(cfg: Config, env: dist_env.DistEnv) -> _Parts:
    """Data, model, head, optimiser, schedule and batch sampler of `cfg` on this rank."""
    dataset = open_training_data(cfg.data, preload=cfg.data.preload)  # data.train, or data.datasets (DAIL)
    val_sets = {Path(p).stem: load_bin(p) for p in cfg.data.val_pairs}
    preprocess = {**PREPROCESS_DEFAULT, "size": int(dataset[0][0].shape[-1])}
    offsets = getattr(dataset, "offsets", None)  # multi-dataset class offsets (DAIL); None for one dataset
    task = FaceTask(cfg, dataset.num_classes, preprocess, shard=(env.rank, env.world_size), offsets=offsets)
    task = task.to(env.device)
    if cfg.train.channels_last:
        task = task.to(memory_format=torch.channels_last)
    task.parallel = dist_env.wrap_backbone(task.backbone, env)
    if cfg.train.compile:  # the training forward only: evaluation and checkpoints use the plain module (same weights)
        task.parallel = (torch.compile((task.parallel or (task.backbone,))[0]),)
    optimizer = build_optimizer(cfg.optim, task)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.steps, cfg.optim.lr)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.train.amp == "fp16")
    if cfg.data.datasets:  # a fixed share of every batch per dataset (DAIL)
        sampler = dataset_sampler(dataset, cfg.data, cfg.seed, env.rank, env.world_size)
    else:  # data.sampler pk | siamese, else uniform / adaptive
        sampler = build_label_sampler(dataset.labels, cfg, env.rank, env.world_size) or _sampler(len(dataset), cfg, env)
    plots, bad = None, list(getattr(dataset, "bad_images", None) or [])
    if cfg.distill.name != "none":  # easy and hard images of the same identities per batch (facelab.distill)
        dataset, sampler, plots = distill_data(dataset, cfg, env)
    return _Parts(dataset, val_sets, task, optimizer, scheduler, scaler, sampler, plots, bad)


def _restore(parts: _Parts, ckpt: dict, device: torch.device) -> int:
    """Load a checkpoint's training state into `parts`; returns its step."""
    task, optimizer = parts.task, parts.optimizer
    task.backbone.load_state_dict(ckpt["model"])
    head, opt = slice_state(task.head, optimizer, ckpt["head"], ckpt["optimizer"])  # this rank's classes
    task.head.load_state_dict(head)
    optimizer.load_state_dict(opt)
    task.objectives.load_state_dict(ckpt.get("objectives", {}))
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"], device)
    if isinstance(parts.sampler, AdaptiveBatchSampler):
        parts.sampler.load_state_dict(ckpt["sampler"])
    return int(ckpt["step"])


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
                raise FacelabError(f"{run}: holds a run already; pass --resume to continue it, or choose "
                                   "another output")
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


def train(cfg: Config, resume: bool = False, stop_at: int | None = None) -> dict:
    """Train `cfg`; returns the summary also written to `<output>/metrics.json`.

    resume: continue the run in cfg.output from its checkpoint; cfg may differ from the run's stored
    configuration only in facelab.train.run.RESUMABLE keys. A finished run is left untouched.
    stop_at: leave after this step with a checkpoint, as a pre-empted job would (continue with resume=True);
    such a partial run writes no metrics.json.
    """
    check_names(cfg)  # a misspelt margin or backbone fails here, before data is read or files written
    env = dist_env.setup(cfg.train.device)  # one process, or one of torchrun's (see facelab.distributed)
    finished, lock = False, None
    try:
        run, lock = _open_run(cfg, resume, env)
        summary = _train(cfg, run, resume, stop_at, env)
        finished = True
        return summary
    finally:
        if lock is not None:
            lock.release()
        dist_env.teardown(env, finished)


def _train(cfg: Config, run: Path, resume: bool, stop_at: int | None, env: dist_env.DistEnv) -> dict:
    ckpt, changes = None, []
    if resume:
        ckpt = load_checkpoint(run)
        changes = [*ckpt.get("config_changes", []), *resume_changes(cfg, ckpt, run)]
        done = finished_summary(run, cfg, ckpt)
        if done is not None:
            asked = len(changes) > len(ckpt.get("config_changes", []))
            log.info("%s: finished at step %d already; nothing to do, the folder is left as it is%s", run,
                     ckpt["step"], " (the changed settings are not applied)" if asked else "")
            return done
    device = env.device
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":  # fixed 112×112 batches: the fastest algorithm found once serves the whole run
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    torch.manual_seed(cfg.seed)
    parts = _build(cfg, env)
    step = _restore(parts, ckpt, device) if ckpt is not None else 0
    timing = (ckpt or {}).get("timing", {"seconds": 0.0, "images": 0})
    if ckpt is not None:
        log.info("resumed %s at step %d", run, step)
    del ckpt
    if env.main:  # the run is set up: only now is the folder written
        _write_records(run, cfg, changes, parts.bad_images)
    dist_env.barrier(env)
    logger = RunLogger(run, cfg.train.tensorboard, step if resume else None) if env.main else dist_env.NullLogger()
    end = min(cfg.train.steps, stop_at) if stop_at else cfg.train.steps
    progress = Progress(cfg.name, cfg.train.steps, step, cfg.train.progress and env.main, cfg.train.status_every)
    session = _Session(cfg, run, env, parts, changes, logger, progress, **timing)
    _loop(session, step, end)
    progress.close()
    if end < cfg.train.steps:
        logger.close()
        return {"train": {"steps": end, "complete": False}}
    return _finish(session)


def _loop(s: _Session, step: int, end: int) -> None:
    """Steps step+1 .. end, adding their time and images to s.seconds and s.images."""
    cfg, parts, env = s.cfg, s.parts, s.env
    task, sampler, optimizer, scheduler, scaler = (
        parts.task, parts.sampler, parts.optimizer, parts.scheduler, parts.scaler)
    device = env.device
    per_epoch = len(sampler)  # batches per epoch (a new sampler starts at batch 0)
    if parts.plots and step == 0 and env.main:
        parts.plots.before(task, s.run, device)
    task.train()
    loader = make_loader(parts.dataset, sampler, cfg.data.workers, device, seed=cfg.seed)  # once: persistent
    pending: list[torch.Tensor] = []  # losses not yet checked for NaN/inf (checked without a per-step sync)
    while step < end:
        sampler.set_position(*divmod(step, per_epoch))
        tick = time.perf_counter()
        for images, labels, *rest in loader:  # rest: [] or [extras dict] (see facelab.train.task)
            images, labels, *rest = to_device([images, labels, *rest], device)
            extras = rest[0] if rest else {}
            task.set_step(step)  # step-scheduled objectives (DAIL's GRL) and the crossing-dropout draw
            with _autocast(device, cfg.train.amp):
                losses = task(images, labels, **extras)
            pending.append(losses["loss"].detach())
            if isinstance(sampler, AdaptiveBatchSampler):  # per-sample feedback: hard images drawn more often
                sampler.feedback(step % per_epoch, task.correct.cpu().numpy())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            if cfg.train.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                classifier = getattr(task.head, "classifier", None)  # None: a pair-loss run has no classifier
                dist_env.clip_grad_norm(task.parameters(), cfg.train.clip_grad_norm, classifier)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            s.images += len(labels) * env.world_size
            s.progress.update(len(labels) * env.world_size)

            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                _check_finite(pending, step)
                values = {f"loss/{k}": v.item() for k, v in losses.items()}
                values["lr"] = scheduler.get_last_lr()[0]
                s.logger.log(step, values)
                s.progress.set_loss(values["loss/loss"])
            s.seconds += time.perf_counter() - tick
            if parts.val_sets and cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                _check_finite(pending, step)
                started = time.perf_counter()
                results = _evaluate(task, parts.val_sets, cfg, env)[0]
                values = {f"val/{name}/accuracy": r["accuracy"] for name, r in results.items()}
                s.logger.log(step, {**values, "val/seconds": time.perf_counter() - started})
            if step % cfg.train.checkpoint_every == 0 or step == end:
                _check_finite(pending, step)
                _checkpoint(s, step)
            if step >= end:
                break
            tick = time.perf_counter()


def _finish(s: _Session) -> dict:
    """The final 10-fold evaluation, deployed thresholds, plots and metrics.json of a completed run."""
    cfg, parts, env, run = s.cfg, s.parts, s.env, s.run
    results, thresholds = _evaluate(parts.task, parts.val_sets, cfg, env)  # 10-fold accuracy + thresholds
    if results:
        s.logger.log(cfg.train.steps, {f"val/{name}/accuracy": r["accuracy"] for name, r in results.items()})
        if env.main:
            plot_roc(results, run / "roc.png")
            store_thresholds(run / CHECKPOINT_NAME, thresholds)  # the deployed verifier's operating points
    if parts.plots and env.main:
        parts.plots.after(parts.task, run, env.device)
    s.logger.close()
    train = {
        "steps": cfg.train.steps,
        # over every session of the run; None only for a checkpoint of an older facelab without timing
        "images_per_second": s.images / s.seconds if s.seconds > 0 else None,
        "num_classes": parts.dataset.num_classes,
        "num_images": len(parts.dataset),
        "bad_images_skipped": len(parts.bad_images),
        "config_changes": s.changes,
    }
    summary = {"pairs": without_curves(results), "thresholds": thresholds, "train": train}
    if env.main:
        write_json_atomic(run / METRICS_NAME, summary)
    return summary
