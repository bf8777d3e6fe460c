"""The run folder's records: one writer at a time, a config.yaml that says what runs, safe resumes.

A run folder is written by one training process (rank 0 of a multi-process run) at a time: `RunLock`
holds `.lock` (pid, host, process start, time). A resume continues with the stored configuration;
only the keys of `RESUMABLE` may differ from it (more steps, other intervals or validation sets,
...), and each such change is kept in the checkpoint's `config_changes` with the step it took
effect, and shown as comments at the top of `config.yaml`. Nothing in the folder is written before
the run has been checked, its data opened and its state restored, so a resume that fails leaves it
as it was.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from facelab.config import Config, config_to_dict
from facelab.errors import FacelabError
from facelab.io import pid_alive, process_start, write_atomic
from facelab.jsonfile import strict_json

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.json"
# Keys a resume may change: when and how often the run evaluates, saves, logs and reports, where its
# validation pairs are, how it loads and on what it runs. Anything else would make the checkpoint's
# state and config.yaml disagree about what trained it.
RESUMABLE = (
    "train.steps", "train.eval_every", "train.checkpoint_every", "train.log_every",
    "train.status_every", "train.progress", "train.threads", "train.device", "data.val_pairs",
    "data.workers", "data.check_images", "name", "output",
)
_SILENT = ("name", "output")  # a moved or renamed folder: not a change of what trains
# Keys that change neither a finished run's model nor its metrics: a run that differs from a request
# only in these may be reused as it is (facelab.experiments.common.train_once).
REUSABLE = (*_SILENT, "train.checkpoint_every", "train.log_every", "train.status_every",
            "train.progress", "train.threads", "train.device", "data.workers",
            "data.check_images", "train.tensorboard")


# ---------------------------------------------------------------- one writer per folder


def _alive(holder: dict) -> bool:
    """Whether the lock's holder, on this host, still runs (same pid and the same process start)."""
    pid = holder.get("pid")
    return isinstance(pid, int) and pid_alive(pid, holder.get("process_start"))


class RunLock:
    """`<run>/.lock` while this process trains in the folder. A second writer is refused naming the
    holder; a lock left by a process that is gone (same host) is taken over with a warning."""

    def __init__(self, run: Path) -> None:
        self.path = Path(run) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "process_start": process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        for _ in range(3):  # a stale lock removed under us by another taker: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                self._handle_existing(me["host"])
                continue
            except OSError as e:
                raise FacelabError(
                    f"{self.path}: cannot create the run's lock ({e.strerror})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(strict_json(me, indent=None))
            self.held = True
            return self
        raise FacelabError(
            f"{self.path}: could not take the run's lock (another process keeps taking it)"
        )

    def _handle_existing(self, host: str) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError):
            holder = {}  # unreadable: a writer killed between creating and filling it
        who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
               if holder else "an unreadable lock")
        if holder.get("host", host) != host or _alive(holder):
            raise FacelabError(
                f"{self.path.parent}: another facelab process writes this run folder ({who}); "
                f"wait for it, or remove {self.path} if that process is gone"
            )
        log.warning("%s: taking over the lock of %s, which is gone", self.path.parent, who)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# ---------------------------------------------------------------- what a resume may change


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key not in ("kwargs", "miner_kwargs"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def resume_changes(cfg: Config, ckpt: dict, where: Path) -> list[dict]:
    """The changes of `cfg` against the checkpoint's stored config, as config_changes entries
    {"step", "key", "from", "to"}; FacelabError naming the key and both values for a change outside
    RESUMABLE, or steps below the checkpoint's."""
    # keys added to facelab since the checkpoint was written ran with their defaults
    stored = {**_flat(config_to_dict(Config())), **_flat(ckpt["config"])}
    new = _flat(config_to_dict(cfg))
    changes = []
    for key in sorted(set(stored) | set(new)):
        old, value = stored.get(key), new.get(key)
        if old == value:
            continue
        if key not in RESUMABLE:
            allowed = ", ".join(k for k in RESUMABLE if k not in _SILENT)
            raise FacelabError(
                f"{where}: config {key} was {old!r} in this run, resume asks for {value!r}; "
                f"a resume may change only {allowed}"
            )
        if key not in _SILENT:
            changes.append({"step": int(ckpt["step"]), "key": key, "from": old, "to": value})
    if cfg.train.steps < ckpt["step"]:
        raise FacelabError(
            f"{where}: config train.steps={cfg.train.steps} is below the step the run has "
            f"reached ({ckpt['step']})"
        )
    return changes


def reuse_differences(run: Path, cfg: Config) -> list[str]:
    """What keeps a finished run in `run` from standing for `cfg`: "key: stored -> asked" for every
    key of its config.yaml that differs from cfg's, outside REUSABLE."""
    path = run / CONFIG_NAME
    try:
        stored_cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise FacelabError(f"{path}: cannot read the finished run's config ({e})") from None
    if not isinstance(stored_cfg, dict):
        raise FacelabError(f"{path}: not a run config (a mapping of sections)")
    stored = {**_flat(config_to_dict(Config())), **_flat(stored_cfg)}
    new = _flat(config_to_dict(cfg))
    return [f"{key}: {stored.get(key)!r} -> {new.get(key)!r}"
            for key in sorted(set(stored) | set(new))
            if key not in REUSABLE and stored.get(key) != new.get(key)]


def write_config(run: Path, cfg: Config, changes: list[dict]) -> None:
    """`config.yaml`: the configuration in effect, the changes resumes made as comments on top."""
    notes = "".join(
        f"# step {c['step']}: {c['key']} changed from {c['from']!r} to {c['to']!r} on resume\n"
        for c in changes
    )
    text = notes + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    write_atomic(run / CONFIG_NAME, lambda tmp: tmp.write_text(text))


def finished_summary(run: Path, cfg: Config, ckpt: dict) -> dict | None:
    """The stored summary when the run already ended at cfg.train.steps (metrics.json written),
    else None."""
    metrics = run / METRICS_NAME
    if ckpt["step"] < cfg.train.steps or not metrics.is_file():
        return None
    try:
        return json.loads(metrics.read_text())
    except (OSError, ValueError) as e:
        raise FacelabError(f"{metrics}: cannot read the finished run's summary ({e})") from None


__all__ = ["CONFIG_NAME", "LOCK_NAME", "METRICS_NAME", "RESUMABLE", "REUSABLE", "RunLock",
           "finished_summary", "resume_changes", "reuse_differences", "write_config"]
