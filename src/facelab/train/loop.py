"""`train(cfg)`: the whole training run, short enough to read in one go (in the spirit of nanoGPT)."""

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from facelab.config import Config, check_choice, config_to_dict
from facelab.data.multi import dataset_sampler, open_training_data
from facelab.data.pairsets import load_bin
from facelab.data.samplers import AdaptiveBatchSampler, EpochBatchSampler
from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.errors import FacelabError
from facelab.eval.embed import evaluate_pairsets
from facelab.eval.report import plot_roc, without_curves, write_json_atomic
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


def _evaluate(task: FaceTask, val_sets: dict, cfg: Config, device: torch.device) -> dict[str, dict]:
    return evaluate_pairsets(
        task.backbone, val_sets, batch_size=2 * cfg.data.batch_size, preprocess=task.preprocess, device=device
    )


def _sampler(num_samples: int, cfg: Config) -> EpochBatchSampler | AdaptiveBatchSampler:
    """Uniform epochs, or AdaptiveFace's Adaptive Data Sampling when data.adaptive_sampling.enabled."""
    ads, bs = cfg.data.adaptive_sampling, cfg.data.batch_size
    try:
        if ads.enabled:
            bounds = ads.min_weight, ads.max_weight
            return AdaptiveBatchSampler(num_samples, bs, cfg.seed, cfg.data.flip, ads.up, ads.down, *bounds)
        return EpochBatchSampler(num_samples, bs, cfg.seed, cfg.data.flip)
    except ValueError as e:
        raise FacelabError(f"config data.batch_size: {e}") from None


def _checkpoint(run: Path, task, optimizer, scheduler, scaler, step: int, cfg: Config, num_classes: int,
                sampler) -> None:
    save_checkpoint(
        run / CHECKPOINT_NAME,
        {
            "model": task.backbone.state_dict(),
            "head": task.head.state_dict(),
            "objectives": task.objectives.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "rng": rng_state(),
            "config": config_to_dict(cfg),
            "preprocess": task.preprocess,
            "num_classes": num_classes,
            "sampler": sampler.state_dict() if isinstance(sampler, AdaptiveBatchSampler) else {},
        },
    )


def _prepare_run(cfg: Config, resume: bool) -> Path:
    run = Path(cfg.output)
    if (run / CHECKPOINT_NAME).exists() and not resume:
        raise FacelabError(f"{run}: holds a run already; pass --resume to continue it, or choose another output")
    if resume and not (run / CHECKPOINT_NAME).exists():
        raise FacelabError(f"{run}: nothing to resume (no {CHECKPOINT_NAME})")
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").unlink(missing_ok=True)  # a finished run's summary is rewritten at its end only
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    write_atomic(run / "config.yaml", lambda tmp: tmp.write_text(text))
    return run


def train(cfg: Config, resume: bool = False, stop_at: int | None = None) -> dict:
    """Train `cfg`; returns the summary also written to `<output>/metrics.json`.

    stop_at: leave after this step with a checkpoint, as a pre-empted job would (continue with resume=True);
    such a partial run writes no metrics.json.
    """
    run = _prepare_run(cfg, resume)
    device = torch.device(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)

    dataset = open_training_data(cfg.data, preload=cfg.data.preload)  # data.train, or data.datasets (DAIL)
    val_sets = {Path(p).stem: load_bin(p) for p in cfg.data.val_pairs}
    preprocess = {**PREPROCESS_DEFAULT, "size": int(dataset[0][0].shape[-1])}
    task = FaceTask(cfg, dataset.num_classes, preprocess, offsets=getattr(dataset, "offsets", None)).to(device)
    if cfg.train.channels_last:
        task = task.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, task)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.steps, cfg.optim.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    sampler = dataset_sampler(dataset, cfg.data, cfg.seed) if cfg.data.datasets else _sampler(len(dataset), cfg)

    step = 0
    if resume:
        ckpt = load_checkpoint(run)
        task.backbone.load_state_dict(ckpt["model"])
        task.head.load_state_dict(ckpt["head"])
        task.objectives.load_state_dict(ckpt.get("objectives", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        if isinstance(sampler, AdaptiveBatchSampler):
            sampler.load_state_dict(ckpt["sampler"])
        step = ckpt["step"]
        log.info("resumed %s at step %d", run, step)
    logger = RunLogger(run, cfg.train.tensorboard, resume_step=step if resume else None)
    per_epoch = len(sampler)  # batches per epoch (a new sampler starts at batch 0)
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not cfg.train.progress or None, desc=cfg.name)
    train_seconds, train_images = 0.0, 0

    end = min(cfg.train.steps, stop_at) if stop_at else cfg.train.steps
    task.train()
    while step < end:
        sampler.set_position(*divmod(step, per_epoch))
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.workers)
        tick = time.perf_counter()
        for images, labels, *rest in loader:  # rest: [] or [extras dict] (see facelab.train.task)
            images, labels = images.to(device), labels.to(device)
            extras = {k: v.to(device) for k, v in rest[0].items()} if rest else {}
            task.set_step(step)  # step-scheduled objectives (DAIL's GRL) and the crossing-dropout draw
            with _autocast(device, cfg.train.amp):
                losses = task(images, labels, **extras)
            if not torch.isfinite(losses["loss"]):
                raise FacelabError(f"step {step}: loss is {losses['loss'].item()} (lower optim.lr or enable clipping)")
            if isinstance(sampler, AdaptiveBatchSampler):  # per-sample feedback: hard images drawn more often
                sampler.feedback(step % per_epoch, task.correct.cpu().numpy())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            if cfg.train.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.train.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            train_images += len(labels)
            bar.update(1)

            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                values = {f"loss/{k}": v.item() for k, v in losses.items()}
                values["lr"] = scheduler.get_last_lr()[0]
                logger.log(step, values)
                bar.set_postfix(loss=f"{values['loss/loss']:.3f}")
            train_seconds += time.perf_counter() - tick
            if val_sets and cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                results = _evaluate(task, val_sets, cfg, device)
                logger.log(step, {f"val/{name}/accuracy": r["accuracy"] for name, r in results.items()})
            if step % cfg.train.checkpoint_every == 0 or step == end:
                _checkpoint(run, task, optimizer, scheduler, scaler, step, cfg, dataset.num_classes, sampler)
            if step >= end:
                break
            tick = time.perf_counter()
    bar.close()
    if step < cfg.train.steps:
        logger.close()
        return {"train": {"steps": step, "complete": False}}

    results = _evaluate(task, val_sets, cfg, device) if val_sets else {}
    if results:
        logger.log(step, {f"val/{name}/accuracy": r["accuracy"] for name, r in results.items()})
        plot_roc(results, run / "roc.png")
    logger.close()
    summary = {
        "pairs": without_curves(results),
        "train": {
            "steps": step,
            "images_per_second": train_images / train_seconds if train_seconds > 0 else math.nan,
            "num_classes": dataset.num_classes,
            "num_images": len(dataset),
        },
    }
    write_json_atomic(run / "metrics.json", summary)
    return summary

