"""`facelab convert` and `facelab align` killed mid-write (SIGKILL): nothing half-written is ever
visible under the output's name, and the same command run again completes with the output of an
uninterrupted run, byte for byte, removing what the killed run left beside it
(facelab.io.remove_stale_temps) but never a live process's temporaries."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelab.align import ARCFACE_112
from facelab.cli import main
from facelab.images import image_problem
from facelab.io import remove_stale_temps, temp_beside

LANDMARKS = ARCFACE_112 * 1.2 + 10  # in a 160x160 photo


def _noisy(rng, base, hw):
    image = cv2.resize(base, hw[::-1]) + rng.normal(0, 12, (*hw, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """20 identities x 100 JPEGs of 64x64: a conversion is still writing when it is killed."""
    root = tmp_path_factory.mktemp("faces") / "src"
    rng = np.random.default_rng(0)
    bases = [rng.uniform(0, 255, (4, 4, 3)) for _ in range(20)]
    for c, base in enumerate(bases):
        (root / f"id{c:02d}").mkdir(parents=True)
        for k in range(100):
            data = cv2.imencode(".jpg", _noisy(rng, base, (64, 64)))[1].tobytes()
            (root / f"id{c:02d}" / f"{k:03d}.jpg").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """800 photos of 160x160 (JPEG) with their landmarks file."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    rows = ["image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"]
    for c in range(8):
        base = rng.uniform(0, 255, (5, 5, 3))
        (root / "src" / f"p{c:02d}").mkdir(parents=True)
        for k in range(100):
            name = f"p{c:02d}/{k:03d}.jpg"
            photo = _noisy(rng, base, (160, 160))
            (root / "src" / name).write_bytes(cv2.imencode(".jpg", photo)[1].tobytes())
            rows.append(name + "," + ",".join(f"{v:.3f}" for v in LANDMARKS.ravel()))
    (root / "lm.csv").write_text("\n".join(rows) + "\n")
    return root / "src", root / "lm.csv"


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def _kill_mid_way(args: list[str], ready: Callable[[], bool], watch: Callable[[], None],
                  timeout: float = 30.0) -> int:
    """Run `facelab ARGS` in a subprocess; call watch() (invariants) while it runs, SIGKILL it once
    ready() holds. Returns its pid (dead and reaped)."""
    proc = subprocess.Popen([sys.executable, "-m", "facelab", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            watch()
            if proc.poll() is not None:
                pytest.fail(f"facelab {args[0]} ended (rc {proc.returncode}) before it could be "
                            f"killed mid-way: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"facelab {args[0]} never reached the point to kill it at")
            time.sleep(0.002)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                 text=True).stdout.split()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    watch()
    _assert_gone(workers)
    return proc.pid


def _assert_gone(pids: list[str], timeout: float = 10.0) -> None:
    """The killed command's pool workers end with it (facelab.io.die_with_parent): no orphans left
    running (a zombie waiting to be reaped counts as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                running.append(pid)
        if not running:
            return
        if time.monotonic() > deadline:
            for pid in running:
                os.kill(int(pid), signal.SIGKILL)
            pytest.fail(f"pool workers {running} outlived the killed command")
        time.sleep(0.05)


@pytest.mark.parametrize("to", ["rec", "folder"])
def test_convert_killed_mid_write_then_run_again(faces, tmp_path, to):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["convert", str(faces), str(ref), "--to", to]) == 0  # uninterrupted
    expected = _files(ref)

    def temporaries() -> list[Path]:
        return list(tmp_path.glob(".out.*.tmp"))

    def writing() -> bool:  # the killed run's temporary output holds part of the data
        sizes = [sum(f.stat().st_size for f in t.rglob("*") if f.is_file()) for t in temporaries()]
        return any(size > 100_000 for size in sizes)

    def never_visible() -> None:
        assert not out.exists(), "a partial output carries the final name"

    pid = _kill_mid_way(["convert", str(faces), str(out), "--to", to], writing, never_visible)
    assert [t.name.split(".")[3] for t in temporaries()] == [str(pid)]  # leftovers, named by pid
    live = temp_beside(out, directory=True)  # a live conversion's work in progress (this process's)
    assert main(["convert", str(faces), str(out), "--to", to]) == 0
    assert _files(out) == expected  # same files, same bytes (so same labels, identities and order)
    assert temporaries() == [live]  # the killed run's temporary is gone, the live one's is not


def test_align_killed_mid_write_then_run_again(photos, tmp_path):
    src, landmarks = photos
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["--landmarks", str(landmarks), "--workers", "1"]
    assert main(["align", str(src), str(ref), *args]) == 0
    expected = _files(ref)
    assert len(expected) == 802  # 800 crops, skipped.csv, align.json

    def crops() -> list[Path]:
        return [p for p in out.rglob("*.jpg") if not p.name.startswith(".")] if out.is_dir() else []

    def incomplete() -> None:  # align.json (written last) marks a complete output: not before
        assert not (out / "align.json").exists()

    pid = _kill_mid_way(["align", str(src), str(out), *args], lambda: len(crops()) >= 100,
                        incomplete)
    visible = crops()
    assert 100 <= len(visible) < 800
    for crop in visible:  # every crop under its final name is whole: the uninterrupted run's bytes
        rel = crop.relative_to(out).as_posix()
        assert crop.read_bytes() == expected[rel] and image_problem(expected[rel]) is None
    stale = temp_beside(out / "p00" / "000.jpg")  # as the killed run could have left one mid-write
    stale.write_bytes(b"half")
    stale.rename(stale.with_name(stale.name.replace(f".{os.getpid()}.", f".{pid}.")))
    live = temp_beside(out / "p01" / "000.jpg")  # a live writer's (this process's)
    assert main(["align", str(src), str(out), *args]) == 0
    got = _files(out)
    assert got.pop(live.relative_to(out).as_posix()) == b""  # the live one stays
    assert got == expected  # the stale temporary is gone


def test_stale_temporaries_are_those_of_dead_processes_only(tmp_path):
    out = tmp_path / "out.rec"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine, theirs = temp_beside(out), temp_beside(out, directory=True, tag=".blob")
        for path in (mine, theirs):
            path.rename(path.with_name(path.name.replace(f".{os.getpid()}.", f".{sleeper.pid}.")))
        other = tmp_path / ".notes.tmp"  # not a facelab temporary: never touched
        other.write_text("x")
        assert remove_stale_temps(tmp_path) == []  # the sleeper lives: its temporaries stay
    finally:
        sleeper.kill()
        sleeper.wait()
    removed = remove_stale_temps(tmp_path)
    assert len(removed) == 2 and sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp"]
