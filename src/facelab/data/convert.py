"""Convert a training set between an image folder, an insightface RecordIO folder and a file list.

Formats:
  - "folder": `root/<identity>/<image>`; labels are the sorted identity names (facelab.data.folder).
  - "rec":    `train.rec` + `train.idx` + `property` (facelab.data.recordio), or a named `X.rec` with `X.idx`.
  - "list":   `list.txt` of "relative/path label" lines, paths relative to the list's folder.
Encoded image bytes are copied, never re-encoded, so every conversion is lossless. Every output gets a
`property` file ("num_classes,height,width"); the size is read from the source's `property` or, failing
that, from its first image (images are not all decoded). Outputs are never written over existing data.
Damaged RecordIO records are left out, counted (`skipped`, `damaged` in the result) and listed in
`skipped.csv` (offset,reason) beside the output's `property`.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from facelab.data.folder import scan_folder
from facelab.data.recordio import Damaged, RecordIODataset, read_property, write_rec_files
from facelab.errors import FacelabError
from facelab.io import decode_image, write_skipped

log = logging.getLogger(__name__)

FORMATS = ("folder", "rec", "list")
_SIGNATURES = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png", b"BM": ".bmp"}


class _Source(NamedTuple):
    format: str
    classes: list[str]  # identity names, index = label
    count: int
    items: Iterator[tuple[int, bytes, str]]  # (label, encoded bytes, file name to use)
    size: tuple[int, int] | None  # (H, W) if the source states it
    damaged: list[Damaged]  # records left out; complete once `items` is exhausted


def _label_names(num_classes: int) -> list[str]:
    """Zero-padded names, so that sorting them (scan_folder) gives back the labels."""
    width = len(str(max(num_classes - 1, 0)))
    return [f"{c:0{width}d}" for c in range(num_classes)]


def _suffix(data: bytes, where: str) -> str:
    for sig, ext in _SIGNATURES.items():
        if data.startswith(sig):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    raise FacelabError(f"{where}: unknown image encoding (not JPEG, PNG, BMP or WebP)")


def _read_bytes(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise FacelabError(f"{where}: cannot read {path} ({e.strerror})") from None


# ---------------------------------------------------------------- sources


def detect_format(path: Path) -> str:
    """Format of an existing training set at `path`."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".rec":
            return "rec"
        if path.suffix == ".txt":
            return "list"
    elif path.is_dir():
        if (path / "train.rec").is_file():
            return "rec"
        if (path / "list.txt").is_file():
            return "list"
        if any(p.is_dir() for p in path.iterdir()):
            return "folder"
    elif not path.exists():
        raise FacelabError(f"{path}: does not exist")
    raise FacelabError(f"{path}: not a training set (expected a folder of identity folders, a folder holding "
                       "train.rec or list.txt, a .rec or a .txt list)")


def _open_folder(root: Path) -> _Source:
    classes, samples = scan_folder(root)
    items = ((label, _read_bytes(p, str(root)), p.name) for p, label in samples)
    return _Source("folder", classes, len(samples), items, _stated_size(root / "property"), [])


def _open_rec(path: Path) -> _Source:
    ds = RecordIODataset(path)
    where = str(ds.rec_path)

    def items() -> Iterator[tuple[int, bytes, str]]:
        for i, data, label in ds.readable():
            yield label, data, f"{i:08d}{_suffix(data, f'{where} image {i}')}"

    return _Source("rec", _label_names(ds.num_classes), len(ds), items(), ds.size, ds.damaged)


def _open_list(path: Path) -> _Source:
    list_path = path / "list.txt" if path.is_dir() else path
    entries = _parse_list(list_path)
    prop = list_path.parent / "property"
    num_classes = max(label for _, label in entries) + 1
    if prop.is_file():
        stated = read_property(prop)[0]
        if stated < num_classes:
            raise FacelabError(f"{prop}: {stated} classes, but {list_path} uses label {num_classes - 1}")
        num_classes = stated
    items = ((label, _read_bytes(list_path.parent / rel, f"{list_path} line {n}"),
              f"{i:08d}{Path(rel).suffix}")
             for i, (n, (rel, label)) in enumerate(zip(_line_numbers(list_path), entries, strict=True)))
    return _Source("list", _label_names(num_classes), len(entries), items, _stated_size(prop), [])


def _line_numbers(list_path: Path) -> list[int]:
    return [n for n, line in enumerate(list_path.read_text().splitlines(), 1) if line.strip()]


def _parse_list(list_path: Path) -> list[tuple[str, int]]:
    """"relative/path label" lines -> [(path, label)]; the label is the last field (paths may hold spaces)."""
    try:
        lines = list_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FacelabError(f"{list_path}: cannot read file list ({e})") from None
    entries = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise FacelabError(f"{list_path} line {n}: expected 'relative/path label', got {line.strip()!r}")
        if Path(parts[0]).is_absolute() or ".." in Path(parts[0]).parts:
            raise FacelabError(f"{list_path} line {n}: path {parts[0]!r} must be relative, "
                               "inside the list's folder")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise FacelabError(f"{list_path}: the file list is empty")
    return entries


def _stated_size(prop: Path) -> tuple[int, int] | None:
    return read_property(prop)[1:] if prop.is_file() else None


_OPENERS = {"folder": _open_folder, "rec": _open_rec, "list": _open_list}


# ---------------------------------------------------------------- destinations


def _output_format(dst: Path, fmt: str | None) -> str:
    if fmt is not None:
        fmt = {"recordio": "rec", "images": "folder", "txt": "list"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise FacelabError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    return {".rec": "rec", ".txt": "list"}.get(dst.suffix, "folder")


def _check_free(path: Path) -> None:
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise FacelabError(f"{path}: already exists and is not empty; choose a new output path")


def _write_tree(root: Path, source: _Source, size: tuple[int, int], list_name: str | None) -> None:
    """Images under root/<identity>/, optionally a list file, then `property`; built in a temporary folder
    beside `root` and renamed into place."""
    _check_free(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for name in source.classes:
            (tmp / name).mkdir()
        lines = []
        for label, data, name in source.items:
            rel = f"{source.classes[label]}/{name}"
            (tmp / rel).write_bytes(data)
            lines.append(f"{rel} {label}\n")
        if list_name is not None:
            (tmp / list_name).write_text("".join(lines))
        (tmp / "property").write_text(f"{len(source.classes)},{size[0]},{size[1]}\n")
        if root.is_dir():
            root.rmdir()  # empty, checked above
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def output_dir(dst: Path, fmt: str) -> Path:
    """The folder that receives the output's `property` (and `skipped.csv`)."""
    return dst.parent if (fmt, dst.suffix) in (("rec", ".rec"), ("list", ".txt")) else dst


def _write_rec(dst: Path, source: _Source, size: tuple[int, int]) -> None:
    if dst.suffix == ".rec":
        rec, idx, prop = dst, dst.with_suffix(".idx"), dst.parent / "property"
    else:
        _check_free(dst)
        rec, idx, prop = dst / "train.rec", dst / "train.idx", dst / "property"
    for path in (rec, idx, prop, prop.with_name("skipped.csv")):
        if path.exists():
            raise FacelabError(f"{path}: already exists; choose a new output path")
    samples = ((label, data) for label, data, _ in source.items)
    write_rec_files(rec, idx, prop, samples, len(source.classes), size)


# ---------------------------------------------------------------- entry point


class _Tally:
    """Iterator wrapper counting the items that pass through it."""

    def __init__(self, items: Iterator) -> None:
        self.items, self.count = items, 0

    def __iter__(self) -> "_Tally":
        return self

    def __next__(self) -> tuple:
        item = next(self.items)
        self.count += 1
        return item


def convert(src: Path, dst: Path, fmt: str | None = None) -> dict:
    """Convert the training set at `src` (format detected) to `dst` (format `fmt`, else from dst's name:
    `.rec` -> rec, `.txt` -> list, otherwise folder). Returns counts and formats; `images` counts the images
    written, `skipped` the damaged source records left out, `damaged` their [(offset, reason)], also written
    to `skipped.csv` in the output folder when there are any."""
    src, dst = Path(src), Path(dst)
    src_fmt, dst_fmt = detect_format(src), _output_format(dst, fmt)
    src_root = src if src.is_dir() else src.parent
    if src_fmt != "rec" and dst.resolve().is_relative_to(src_root.resolve()):
        raise FacelabError(f"{dst}: output must not lie inside the source folder {src_root}")
    source = _OPENERS[src_fmt](src)
    first = next(source.items, None)
    if first is None:
        raise FacelabError(f"{src}: no images to convert")
    size = source.size or decode_image(first[1], f"{src} ({first[2]})").shape[:2]
    tally = _Tally(_prepend(first, source.items))
    source = source._replace(items=tally)
    if dst_fmt == "rec":
        _write_rec(dst, source, size)
    elif dst_fmt == "list":
        root, name = (dst.parent, dst.name) if dst.suffix == ".txt" else (dst, "list.txt")
        _write_tree(root, source, size, name)
    else:
        _write_tree(dst, source, size, None)
    damaged = sorted(source.damaged)
    if damaged:
        write_skipped(output_dir(dst, dst_fmt) / "skipped.csv", "offset", damaged)
    log.info("converted %s (%s) -> %s (%s): %d images, %d identities, %d damaged records skipped", src, src_fmt,
             dst, dst_fmt, tally.count, len(source.classes), len(damaged))
    return {"src_format": src_fmt, "dst_format": dst_fmt, "images": tally.count,
            "classes": len(source.classes), "height": int(size[0]), "width": int(size[1]),
            "skipped": len(damaged), "damaged": damaged}


def _prepend(first: tuple, rest: Iterator) -> Iterator:
    yield first
    yield from rest
