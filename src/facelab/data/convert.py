"""Convert a training set between an image folder, an insightface RecordIO folder and a file list.

Formats:
  - "folder": `root/<identity>/<image>`; labels are the sorted identity names (facelab.data.folder).
  - "rec":    `train.rec` + `train.idx` + `property` (facelab.data.recordio), or a named `X.rec` with `X.idx`.
  - "list":   `list.txt` of "relative/path label" lines, paths relative to the list's folder.
Encoded image bytes are copied, never re-encoded, so every conversion is lossless. Every output gets a
`property` file ("num_classes,height,width"); the size is read from the source's `property` or, failing
that, from its first good image. Outputs are never written over existing data.

Every image is checked to decode cleanly (facelab.data.check, in a process pool) before it is
written: damaged RecordIO records and images that do not decode (empty, undecodable, repaired by the
decoder) are left out, counted (`skipped`; `damaged` and `undecodable` in the result) and listed in
`skipped.csv` (source,offset,reason: the file, the record's byte offset in a `.rec`, why) beside the
output's `property`.

Nothing half-written ever carries the output's name: a folder output (image folder, list, RecordIO
folder) is built in a temporary folder beside it and renamed into place whole; a named `X.rec` gets
its files renamed into place, `property` last. The temporaries of a killed conversion are removed by
the next one writing beside them (facelab.io.remove_stale_temps), never those of a live one.
"""

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from facelab.data.check import screen_stream
from facelab.data.filelist import label_names, list_classes, list_path, parse_list
from facelab.data.folder import scan_folder
from facelab.data.recordio import Damaged, RecordIODataset, read_property, write_rec_files
from facelab.errors import FacelabError
from facelab.io import (
    check_writable,
    decode_image,
    follow_umask,
    remove_stale_temps,
    temp_beside,
    write_table,
)

log = logging.getLogger(__name__)

FORMATS = ("folder", "rec", "list")
_SIGNATURES = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png", b"BM": ".bmp"}


class _Item(NamedTuple):
    label: int
    data: bytes  # encoded image
    name: str  # file name to use in a folder output
    source: str  # where it comes from: an image file, or the `.rec` file
    offset: int | None  # the record's byte offset in a `.rec`


class Skipped(NamedTuple):
    """An image left out of the output: its source file, its byte offset in a `.rec` (else None),
    and why."""

    source: str
    offset: int | None
    reason: str


class _Source(NamedTuple):
    format: str
    classes: list[str]  # identity names, index = label
    count: int
    items: Iterator[_Item]
    size: tuple[int, int] | None  # (H, W) if the source states it
    damaged: list[Damaged]  # records left out; complete once `items` is exhausted
    path: str  # the `.rec` file the damaged offsets refer to, else the source


def _suffix(data: bytes) -> str:
    """File suffix of encoded image bytes, or "" if their encoding is not JPEG, PNG, BMP or WebP."""
    for sig, ext in _SIGNATURES.items():
        if data.startswith(sig):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ""


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
    items = (_Item(label, _read_bytes(p, str(root)), p.name, str(p), None) for p, label in samples)
    size = _stated_size(root / "property")
    return _Source("folder", classes, len(samples), items, size, [], str(root))


def _open_rec(path: Path) -> _Source:
    ds = RecordIODataset(path)
    where = str(ds.rec_path)

    def items() -> Iterator[_Item]:
        for i, data, label in ds.readable():
            offset = ds.file.offset(int(ds.image_keys[i]))
            yield _Item(label, data, f"{i:08d}{_suffix(data)}", where, offset)

    return _Source("rec", label_names(ds.num_classes), len(ds), items(), ds.size, ds.damaged, where)


def _open_list(path: Path) -> _Source:
    lst = list_path(path)
    entries = parse_list(lst)
    num_classes = list_classes(lst, entries)
    items = (_Item(label, _read_bytes(lst.parent / rel, f"{lst} line {n}"),
                   f"{i:08d}{Path(rel).suffix}", str(lst.parent / rel), None)
             for i, (n, rel, label) in enumerate(entries))
    size = _stated_size(lst.parent / "property")
    return _Source("list", label_names(num_classes), len(entries), items, size, [], str(lst))


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


def _build_folder(root: Path, build: Callable[[Path], None],
                  finish: Callable[[Path], None]) -> None:
    """build(tmp) then finish(tmp) in a temporary folder beside `root` (which must be free), then
    rename it into place whole, with the user's umask: `root` names a complete output or nothing."""
    _check_free(root)
    tmp = temp_beside(root, directory=True)
    try:
        build(tmp)
        finish(tmp)
        follow_umask(tmp, directory=True)  # mkdtemp made it private
        if root.is_dir():
            root.rmdir()  # empty, checked above
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _tree_writer(source: _Source, size: tuple[int, int],
                 list_name: str | None) -> Callable[[Path], None]:
    """Images under <folder>/<identity>/, optionally a list file, then `property`."""

    def build(tmp: Path) -> None:
        for name in source.classes:
            (tmp / name).mkdir()
        lines = []
        for item in source.items:
            rel = f"{source.classes[item.label]}/{item.name}"
            (tmp / rel).write_bytes(item.data)
            lines.append(f"{rel} {item.label}\n")
        if list_name is not None:
            (tmp / list_name).write_text("".join(lines))
        (tmp / "property").write_text(f"{len(source.classes)},{size[0]},{size[1]}\n")

    return build


def _rec_writer(source: _Source, size: tuple[int, int]) -> Callable[[Path], None]:
    """train.rec, train.idx, property in a folder."""

    def build(tmp: Path) -> None:
        samples = ((item.label, item.data) for item in source.items)
        write_rec_files(tmp / "train.rec", tmp / "train.idx", tmp / "property", samples,
                        len(source.classes), size)

    return build


def output_dir(dst: Path, fmt: str) -> Path:
    """The folder that receives the output's `property` (and `skipped.csv`)."""
    return dst.parent if (fmt, dst.suffix) in (("rec", ".rec"), ("list", ".txt")) else dst


def _named_rec(dst: Path, fmt: str) -> bool:
    """Whether the output is a named `X.rec` (files written beside it), not a folder built whole."""
    return fmt == "rec" and dst.suffix == ".rec"


def _check_output(dst: Path, fmt: str) -> Path:
    """Refuse an output that would write over data; returns the folder its temporaries go to."""
    if _named_rec(dst, fmt):
        beside = (dst.with_suffix(".idx"), dst.parent / "property", dst.parent / "skipped.csv")
        for path in (dst, *beside):
            if path.exists():
                raise FacelabError(f"{path}: already exists; choose a new output path")
        return dst.parent
    root = output_dir(dst, fmt)
    _check_free(root)
    return root.parent


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


def _good(source: _Source, undecodable: list[Skipped], named: bool) -> Iterator[_Item]:
    """The source's items that decode cleanly; the others are appended to `undecodable`. `named`:
    the output is a folder, whose files need a known image suffix."""
    for item, reason in screen_stream(source.items, lambda it: it.data):
        if reason is not None:
            log.info("%s%s: %s; left out", item.source,
                     "" if item.offset is None else f" (byte offset {item.offset})", reason)
            undecodable.append(Skipped(item.source, item.offset, reason))
            continue
        if named and not Path(item.name).suffix:  # decodes, in a format a folder cannot name
            raise FacelabError(f"{item.source} (byte offset {item.offset}): unknown image encoding "
                               "(not JPEG, PNG, BMP or WebP)")
        yield item


def convert(src: Path, dst: Path, fmt: str | None = None) -> dict:
    """Convert the training set at `src` (format detected) to `dst` (format `fmt`, else from dst's
    name: `.rec` -> rec, `.txt` -> list, otherwise folder). Returns counts and formats: `images`
    counts the images written, `skipped` those left out, `damaged` the damaged source records
    [(offset, reason)] and `undecodable` the images that do not decode cleanly [Skipped(source,
    offset, reason)]; all skipped ones are listed in `skipped.csv` in the output folder, if any.
    The output folder is checked writable before any work."""
    src, dst = Path(src), Path(dst)
    src_fmt, dst_fmt = detect_format(src), _output_format(dst, fmt)
    src_root = src if src.is_dir() else src.parent
    if src_fmt != "rec" and dst.resolve().is_relative_to(src_root.resolve()):
        raise FacelabError(f"{dst}: output must not lie inside the source folder {src_root}")
    work = check_writable(_check_output(dst, dst_fmt))
    remove_stale_temps(work)  # what a killed conversion left beside the output
    source = _OPENERS[src_fmt](src)
    undecodable: list[Skipped] = []
    good = _good(source, undecodable, named=dst_fmt != "rec")
    first = next(good, None)
    if first is None:
        raise FacelabError(f"{src}: no images to convert" + _first_skipped(undecodable))
    size = source.size or decode_image(first.data, first.source).shape[:2]
    tally = _Tally(_prepend(first, good))
    source = source._replace(items=tally)
    _write(dst, dst_fmt, source, size, lambda folder: _write_skipped(folder, source, undecodable))
    skipped = _skipped_rows(source, undecodable)
    log.info("converted %s (%s) -> %s (%s): %d images, %d identities, %d skipped", src, src_fmt,
             dst, dst_fmt, tally.count, len(source.classes), len(skipped))
    return {"src_format": src_fmt, "dst_format": dst_fmt, "images": tally.count,
            "classes": len(source.classes), "height": int(size[0]), "width": int(size[1]),
            "skipped": len(skipped), "damaged": sorted(source.damaged), "undecodable": undecodable}


def _write(dst: Path, fmt: str, source: _Source, size: tuple[int, int],
           finish: Callable[[Path], None]) -> None:
    if _named_rec(dst, fmt):
        samples = ((item.label, item.data) for item in source.items)
        write_rec_files(dst, dst.with_suffix(".idx"), dst.parent / "property", samples,
                        len(source.classes), size)
        finish(dst.parent)
    elif fmt == "rec":
        _build_folder(dst, _rec_writer(source, size), finish)
    elif fmt == "list":
        root, name = (dst.parent, dst.name) if dst.suffix == ".txt" else (dst, "list.txt")
        _build_folder(root, _tree_writer(source, size, name), finish)
    else:
        _build_folder(dst, _tree_writer(source, size, None), finish)


def _skipped_rows(source: _Source, undecodable: list[Skipped]) -> list[Skipped]:
    damaged = [Skipped(source.path, d.offset, d.reason) for d in sorted(source.damaged)]
    return damaged + undecodable


def _write_skipped(folder: Path, source: _Source, undecodable: list[Skipped]) -> None:
    """`skipped.csv` (source,offset,reason) in the output folder, if anything was left out."""
    rows = _skipped_rows(source, undecodable)
    if rows:
        write_table(folder / "skipped.csv", ["source", "offset", "reason"], rows)


def summary_line(summary: dict, dst: Path) -> str:
    """One line for the command line: what was left out, the first one, and where all are listed."""
    damaged, undecodable = summary["damaged"], summary["undecodable"]
    first = (f"{undecodable[0].source}: {undecodable[0].reason}" if not damaged
             else f"the record at byte offset {damaged[0].offset}: {damaged[0].reason}")
    csv = output_dir(Path(dst), summary["dst_format"]) / "skipped.csv"
    return (f"{summary['skipped']} skipped ({len(damaged)} damaged records, {len(undecodable)} "
            f"images that do not decode cleanly), the first: {first} (all listed in {csv})")


def _first_skipped(undecodable: list[Skipped]) -> str:
    if not undecodable:
        return ""
    first = undecodable[0]
    return f" ({len(undecodable)} left out, the first: {first.source}: {first.reason})"


def _prepend(first: _Item, rest: Iterator[_Item]) -> Iterator[_Item]:
    yield first
    yield from rest
