"""Run logs: one JSON object per line (metrics.jsonl) and, optionally, TensorBoard scalars."""

import json
from pathlib import Path

from facelab.io import write_atomic
from facelab.jsonfile import strict_json

LOG_NAME = "log.jsonl"


class RunLogger:
    """Appends `{"step": s, **values}` lines. On resume, lines past the resumed step (written after
    the last checkpoint by the interrupted run) are dropped, so the log matches the restored
    state."""

    def __init__(
        self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        self.path = Path(run_dir) / LOG_NAME
        if resume_step is not None and self.path.exists():
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln)["step"] <= resume_step
            ]
            write_atomic(self.path, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in keep)))
        elif resume_step is None:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow import

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        self._file.write(strict_json({"step": step, **values}, indent=None) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
