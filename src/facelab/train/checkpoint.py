"""The training state a resumed run restores (TrainState), saved in the model's checkpoint file
(facelab.model) beside the weights."""

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facelab.data.batch_sampler import ResumableBatchSampler
from facelab.distributed.checkpoint import full_state, slice_state
from facelab.model import save_checkpoint
from facelab.train.task import FaceTask


def rng_state(device: torch.device | None = None) -> dict:
    """Global RNG states as tensors and plain values, so checkpoints load with weights_only=True; on
    a CUDA `device` also its generator's (ElasticFace's margins and PML's random miners draw
    there)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    # this process's device only: every rank seeds alike
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore `rng_state`'s states; the CUDA one when both the checkpoint and `device` are CUDA (a
    run resumed on another kind of device draws its device numbers afresh)."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class TrainState:
    """What a resumed run restores: the task (model, head, objectives), optimiser, schedule, loss
    scaler, batch sampler, RNG states and step. The classifier is saved whole whatever the world
    size (facelab.distributed.checkpoint), so a run resumes on any number of processes."""

    task: FaceTask
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: ResumableBatchSampler
    step: int = 0

    def save(self, path: Path, records: dict, main: bool) -> None:
        """Write the state and `records` (config, preprocessing, timing, ...) atomically to `path`
        from the main process; every process takes part in gathering the classifier."""
        task = self.task
        # the whole classifier, every rank's rows
        head, opt = full_state(_head(task), self.optimizer)
        if not main:
            return
        save_checkpoint(path, {
            "model": task.backbone.state_dict(),
            "head": head,
            "objectives": task.objectives.state_dict(),  # learnable loss parameters (MarginLoss β)
            "optimizer": opt,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": rng_state(next(task.parameters()).device),  # with the CUDA generator on a GPU
            "sampler": self.sampler.state_dict(),
            **records,
        })

    def restore(self, ckpt: dict, device: torch.device) -> None:
        """Load a checkpoint's training state (this rank's classes of the classifier)."""
        task = self.task
        task.backbone.load_state_dict(ckpt["model"])
        head, opt = slice_state(_head(task), self.optimizer, ckpt["head"], ckpt["optimizer"])
        _head(task).load_state_dict(head)
        self.optimizer.load_state_dict(opt)
        task.objectives.load_state_dict(ckpt.get("objectives", {}))
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], device)
        self.sampler.load_state_dict(ckpt.get("sampler", {}))
        self.step = int(ckpt["step"])


def _head(task: FaceTask) -> nn.Module:
    """The task's head, or an empty module for a pair-loss run (its checkpoint entry is {})."""
    return task.head if task.head is not None else nn.Module()
