"""`train(cfg)`: the whole training run, short enough to read in one go (in the spirit of nanoGPT)."""

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from facelab.config import Config, check_choice, config_to_dict
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
from facelab.eval.report import plot_roc, without_curves, write_json_atomic
from facelab.eval.thresholds import evaluate_with_thresholds, store_thresholds
from facelab.io import write_atomic
from facelab.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from facelab.train.logging import RunLogger
from facelab.train.optim import build_optimizer, build_scheduler
from facelab.train.task import FaceTask

log = logging.getLogger(__name__)
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    dtype = AMP_DTYPES[check_choice(amp, AMP_DTYPES, "train.amp")]
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


def _checkpoint(run: Path, task, optimizer, scheduler, scaler, step: int, cfg: Config, num_classes: int,
                sampler, env: dist_env.DistEnv) -> None:
    head, opt = full_state(task.head, optimizer)  # the whole classifier, gathered from every rank
    if env.main:
        _save(run, task, head, opt, scheduler, scaler, step, cfg, num_classes, sampler)
    dist_env.barrier(env)


def _save(run: Path, task, head: dict, opt: dict, scheduler, scaler, step: int, cfg: Config, num_classes: int,
          sampler) -> None:
    save_checkpoint(
        run / CHECKPOINT_NAME,
        {
            "model": task.backbone.state_dict(),
            "head": head,
            "objectives": task.objectives.state_dict(),  # learnable loss parameters (MarginLoss beta)
            "optimizer": opt,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "rng": rng_state(next(task.parameters()).device),  # with the CUDA generator's on a GPU
            "config": config_to_dict(cfg),
            "preprocess": task.preprocess,
            "num_classes": num_classes,
            "sampler": sampler.state_dict() if isinstance(sampler, AdaptiveBatchSampler) else {},
        },
    )


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


def _prepare_run(cfg: Config, resume: bool, env: dist_env.DistEnv) -> Path:
    run = Path(cfg.output)
    if (run / CHECKPOINT_NAME).exists() and not resume:
        raise FacelabError(f"{run}: holds a run already; pass --resume to continue it, or choose another output")
    if resume and not (run / CHECKPOINT_NAME).exists():
        raise FacelabError(f"{run}: nothing to resume (no {CHECKPOINT_NAME})")
    dist_env.barrier(env)  # every rank has checked before rank 0 writes
    if env.main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.json").unlink(missing_ok=True)  # a finished run's summary is rewritten at its end only
        text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
        write_atomic(run / "config.yaml", lambda tmp: tmp.write_text(text))
    dist_env.barrier(env)
    return run


def train(cfg: Config, resume: bool = False, stop_at: int | None = None) -> dict:
    """Train `cfg`; returns the summary also written to `<output>/metrics.json`.

    stop_at: leave after this step with a checkpoint, as a pre-empted job would (continue with resume=True);
    such a partial run writes no metrics.json.
    """
    env = dist_env.setup(cfg.train.device)  # one process, or one of torchrun's (see facelab.distributed)
    finished = False
    try:
        summary = _train(cfg, resume, stop_at, env)
        finished = True
        return summary
    finally:
        dist_env.teardown(env, finished)


def _train(cfg: Config, resume: bool, stop_at: int | None, env: dist_env.DistEnv) -> dict:
    run = _prepare_run(cfg, resume, env)
    device = env.device
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":  # fixed 112×112 batches: the fastest algorithm found once serves the whole run
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
    torch.manual_seed(cfg.seed)

    dataset = open_training_data(cfg.data, preload=cfg.data.preload)  # data.train, or data.datasets (DAIL)
    val_sets = {Path(p).stem: load_bin(p) for p in cfg.data.val_pairs}
    preprocess = {**PREPROCESS_DEFAULT, "size": int(dataset[0][0].shape[-1])}
    offsets = getattr(dataset, "offsets", None)  # multi-dataset class offsets (DAIL); None for one dataset
    task = FaceTask(cfg, dataset.num_classes, preprocess, shard=(env.rank, env.world_size), offsets=offsets)
    task = task.to(device)
    if cfg.train.channels_last:
        task = task.to(memory_format=torch.channels_last)
    task.parallel = dist_env.wrap_backbone(task.backbone, env)
    if cfg.train.compile:  # the training forward only: evaluation and checkpoints use the plain module (same weights)
        task.parallel = (torch.compile((task.parallel or (task.backbone,))[0]),)
    optimizer = build_optimizer(cfg.optim, task)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.steps, cfg.optim.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    if cfg.data.datasets:  # a fixed share of every batch per dataset (DAIL)
        sampler = dataset_sampler(dataset, cfg.data, cfg.seed, env.rank, env.world_size)
    else:  # data.sampler pk | siamese, else uniform / adaptive
        sampler = build_label_sampler(dataset.labels, cfg, env.rank, env.world_size) or _sampler(len(dataset), cfg, env)
    plots = None
    if cfg.distill.name != "none":  # easy and hard images of the same identities per batch (facelab.distill)
        dataset, sampler, plots = distill_data(dataset, cfg, env)

    step = 0
    if resume:
        ckpt = load_checkpoint(run)
        task.backbone.load_state_dict(ckpt["model"])
        head, opt = slice_state(task.head, optimizer, ckpt["head"], ckpt["optimizer"])  # this rank's classes
        task.head.load_state_dict(head)
        optimizer.load_state_dict(opt)
        task.objectives.load_state_dict(ckpt.get("objectives", {}))
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], device)
        if isinstance(sampler, AdaptiveBatchSampler):
            sampler.load_state_dict(ckpt["sampler"])
        step = ckpt["step"]
        log.info("resumed %s at step %d", run, step)
    resume_step = step if resume else None
    logger = RunLogger(run, cfg.train.tensorboard, resume_step) if env.main else dist_env.NullLogger()
    per_epoch = len(sampler)  # batches per epoch (a new sampler starts at batch 0)
    quiet = not (cfg.train.progress and env.main) or None
    bar = tqdm(total=cfg.train.steps, initial=step, disable=quiet, desc=cfg.name)
    train_seconds, train_images = 0.0, 0

    end = min(cfg.train.steps, stop_at) if stop_at else cfg.train.steps
    if plots and step == 0 and env.main:
        plots.before(task, run, device)
    task.train()
    loader = make_loader(dataset, sampler, cfg.data.workers, device, seed=cfg.seed)  # once: persistent workers
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
            train_images += len(labels) * env.world_size
            bar.update(1)

            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                _check_finite(pending, step)
                values = {f"loss/{k}": v.item() for k, v in losses.items()}
                values["lr"] = scheduler.get_last_lr()[0]
                logger.log(step, values)
                bar.set_postfix(loss=f"{values['loss/loss']:.3f}")
            train_seconds += time.perf_counter() - tick
            if val_sets and cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                _check_finite(pending, step)
                started = time.perf_counter()
                results = _evaluate(task, val_sets, cfg, env)[0]
                values = {f"val/{name}/accuracy": r["accuracy"] for name, r in results.items()}
                logger.log(step, {**values, "val/seconds": time.perf_counter() - started})
            if step % cfg.train.checkpoint_every == 0 or step == end:
                _check_finite(pending, step)
                _checkpoint(run, task, optimizer, scheduler, scaler, step, cfg, dataset.num_classes, sampler, env)
            if step >= end:
                break
            tick = time.perf_counter()
    bar.close()
    if step < cfg.train.steps:
        logger.close()
        return {"train": {"steps": step, "complete": False}}

    results, thresholds = _evaluate(task, val_sets, cfg, env)  # 10-fold accuracy + deployed thresholds
    if results:
        logger.log(step, {f"val/{name}/accuracy": r["accuracy"] for name, r in results.items()})
        if env.main:
            plot_roc(results, run / "roc.png")
            store_thresholds(run / CHECKPOINT_NAME, thresholds)  # the deployed verifier's operating points
    if plots and env.main:
        plots.after(task, run, device)
    logger.close()
    summary = {
        "pairs": without_curves(results),
        "thresholds": thresholds,
        "train": {
            "steps": step,
            "images_per_second": train_images / train_seconds if train_seconds > 0 else math.nan,
            "num_classes": dataset.num_classes,
            "num_images": len(dataset),
        },
    }
    if env.main:
        write_json_atomic(run / "metrics.json", summary)
    return summary

