"""Small file helpers shared by every writer: atomic writes, temporaries, image decode/encode."""

import csv
import ctypes
import io
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import cv2
import numpy as np

from facelab.errors import FacelabError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`.

    A crash leaves the old file (or none), never a half-written one. The file gets the permissions
    an ordinary new file would (0666 minus the umask; mkstemp alone would leave it private, 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        write(Path(tmp))
        fsync_file(tmp)  # the data reaches the disk before the rename makes it visible
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def check_writable(folder: Path, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove that files can be created in it, before any work starts.

    FacelabError naming the folder otherwise (permissions, a file in the way, a read-only disk), so
    a command fails in a second instead of after its work, when writing its results.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".facelab-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FacelabError(f"{folder}: {what} is not writable ({e.strerror or e})") from None
    return folder


def check_output_folder(folder: Path, what: str = "output folder") -> Path:
    """Prove that files can be written in `folder` before a command's work starts
    (check_writable: FacelabError naming it otherwise). Folders made only for the probe are
    removed again: a command refused later (bad data, a failed check) leaves no empty folder
    behind; its writers make the folders when they write."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    check_writable(folder, what)
    for p in made:
        with suppress(OSError):  # someone else put something there meanwhile: keep it
            p.rmdir()
    return folder


def write_skipped(path: Path, key: str, rows: list[tuple[object, str]]) -> None:
    """`skipped.csv`: a `<key>,reason` header and one row per skipped item, commas in reasons
    turned into ';' (atomic, like every file facelab writes). Shared by `facelab align` (key image)
    and `convert` (offset)."""
    text = "".join(f"{k},{reason.replace(',', ';')}\n" for k, reason in rows)
    write_atomic(path, lambda tmp: tmp.write_text(f"{key},reason\n" + text))


def write_table(path: Path, header: list[str], rows: list[tuple]) -> None:
    """A CSV file, written atomically; fields are quoted where they need it (so file names and
    reasons holding commas survive), None is an empty field."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    write_atomic(path, lambda tmp: tmp.write_text(buf.getvalue()))


# ---------------------------------------------------------------- temporaries and permissions
#
# Every temporary file or folder beside an output is named `.<name>.<host>.<pid>.<random>.tmp`, so
# that a later run can tell the leftovers of a killed process (its pid no longer alive on this host)
# from the work in progress of a live one, and remove only the former (remove_stale_temps).

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"
_STALE = re.compile(rf"^\..+\.{re.escape(_HOST)}\.(\d+)\.[a-z0-9_]{{8}}\.tmp$")


def temp_beside(path: Path, directory: bool = False, tag: str = "") -> Path:
    """Create an empty temporary file (or folder) beside `path`, named after it, this host and this
    process (see above); `tag` tells several temporaries of one output apart. The caller renames or
    removes it."""
    path = Path(path)
    prefix = f".{path.name}{tag}.{_HOST}.{os.getpid()}."
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def remove_stale_temps(folder: Path, recursive: bool = False) -> list[Path]:
    """Remove the temporaries (see temp_beside) in `folder` (and its sub-folders if `recursive`)
    left by processes of this host that are gone, e.g. killed with SIGKILL mid-write. A live
    process's temporaries (another run writing now) are left alone. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        match = _STALE.match(entry.name)
        if match is None or pid_alive(int(match.group(1))) or not entry.exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def die_with_parent() -> None:
    """For pool workers: end when the process that started them ends, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), instead of lingering as orphans holding the pool's pipes; elsewhere a
    no-op."""
    if not sys.platform.startswith("linux") or multiprocessing.parent_process() is None:
        return  # never the main process: it would die with the shell that started it
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


@contextmanager
def fork_safe_cv2() -> Iterator[None]:
    """While a pool forks its workers: OpenCV's thread pool stopped in this process (one thread),
    restored afterwards. A forked child inherits the pool's condition variables with their waiters
    but not the threads; its cv2.setNumThreads(1) then blocks for ever in pthread_cond_destroy
    (seen: a synthetic-faces worker hung in the test suite)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (/proc, Linux; None elsewhere), which tells
    a recycled pid from the process that held it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, started: str | None = None) -> bool:
    """Whether process `pid` of this host runs, and (given `started`, from process_start) is still
    the same process, not a later one that got its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return started is None or process_start(pid) in (None, started)


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk (before a rename publishes it)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def follow_umask(path: Path, directory: bool = False) -> None:
    """Give `path` the permissions an ordinary new file (0666) or folder (0777) gets under the
    user's umask: mkstemp and mkdtemp create them private (0600, 0700), which a rename would carry
    into place."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it while
    reading it, which a thread creating a file at that instant would see)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes (JPEG/PNG/...) -> RGB uint8 [H, W, 3]; FacelabError naming `where` if
    undecodable.

    The training loader's fast path (OpenCV): a damaged JPEG that libjpeg recovers from decodes here
    without complaint; facelab.data.check finds those before training.
    """
    if len(data) == 0:
        raise FacelabError(f"{where}: empty file (0 bytes), not an image")
    rgb = opencv_rgb(data)
    if rgb is None:
        raise FacelabError(f"{where}: cannot decode image bytes")
    return rgb


def opencv_rgb(data: bytes) -> np.ndarray | None:
    """OpenCV's decode of encoded bytes as RGB uint8 [H, W, 3], or None where it cannot decode them
    (the loader's pixels; facelab.images uses them after its strict checks)."""
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_bytes(path: Path) -> bytes:
    """An image file's bytes as stored; FacelabError naming it if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise FacelabError(f"{path}: cannot read image ({e.strerror})") from None


def read_image(path: Path) -> np.ndarray:
    """Image file -> RGB uint8 [H, W, 3]."""
    return decode_image(read_image_bytes(path), str(path))


def encode_image(image: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """RGB uint8 [H, W, 3] -> encoded bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise FacelabError(f"cannot encode image of shape {image.shape} as {ext}")
    return buf.tobytes()

