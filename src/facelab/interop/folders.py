"""Where an importer may write its run folder: new, empty, or its own earlier import.

An import writes `out/checkpoint.pt` (facelab.model.save_checkpoint) with an "imported" record
naming the tool it came from. Writing over an earlier import of the same tool replaces its
checkpoint atomically; anything else (a training run, other files beside an earlier import, which
would no longer match it) is refused, so nothing of the user's is overwritten.
"""

from pathlib import Path

import torch

from facelab.errors import FacelabError
from facelab.io import remove_stale_temps
from facelab.model import CHECKPOINT_NAME


def _earlier_import(checkpoint: Path, tool: str) -> bool:
    """Whether `checkpoint` was written by the importer of `tool` ("insightface", "dlib")."""
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: not ours to replace
        return False
    imported = ckpt.get("imported") if isinstance(ckpt, dict) else None
    return isinstance(imported, dict) and imported.get("from") == tool


def check_import_folder(out: Path, tool: str) -> None:
    """FacelabError unless `out` is new, empty, or holds only an earlier `tool` import's
    checkpoint.pt (module docstring)."""
    if not out.is_dir():
        return
    remove_stale_temps(out)  # a killed earlier import's temporary file
    entries = sorted(p.name for p in out.iterdir())
    earlier = CHECKPOINT_NAME in entries and _earlier_import(out / CHECKPOINT_NAME, tool)
    if not entries or (entries == [CHECKPOINT_NAME] and earlier):
        return
    if earlier:
        others = [e for e in entries if e != CHECKPOINT_NAME]
        raise FacelabError(f"{out}: holds an earlier {tool} import and other files "
                           f"({', '.join(others[:3])}) that would no longer match it; give a "
                           "new folder or remove them")
    raise FacelabError(f"{out}: folder is not empty (and not an earlier {tool} import); give a "
                       "new or empty folder")
