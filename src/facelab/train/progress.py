"""Training progress: a tqdm bar on a terminal, a status line every few seconds anywhere else.

With stderr redirected to a file (a batch job, `nohup`, CI) a bar draws nothing useful, so the run
reports `step s/N (p%), loss l, r images/s, ETA h:mm:ss` through logging every `every` seconds
and at the end: the user always sees that the run moves and when it should end.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)


class Progress:
    """update(images) once per step; set_loss(value) when the loss is read (log steps)."""

    def __init__(self, name: str, total: int, initial: int, enabled: bool, every: float,
                 terminal: bool | None = None) -> None:
        self.name, self.total, self.step, self.every = name, total, initial, every
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, initial=initial, desc=name) if enabled and terminal else None
        self.lines = enabled and not terminal
        self.loss: float | None = None
        self.start = self.last = time.monotonic()
        self.first, self.images = initial, 0

    def set_loss(self, value: float) -> None:
        self.loss = value
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{value:.3f}")

    def update(self, images: int) -> None:
        self.step += 1
        self.images += images
        if self.bar is not None:
            self.bar.update(1)
        elif self.lines and time.monotonic() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self.last = now
        seconds, done = now - self.start, self.step - self.first
        rate = f"{self.images / seconds:.0f} images/s" if seconds > 0 else "- images/s"
        left = (self.total - self.step) * seconds / done if done else None
        eta = str(datetime.timedelta(seconds=round(left))) if left is not None else "-"
        loss = f"loss {self.loss:.4f}, " if self.loss is not None else ""
        log.info("%s: step %d/%d (%.0f%%), %s%s, ETA %s", self.name, self.step, self.total,
                 100 * self.step / self.total, loss, rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.step > self.first:
            self._line()
