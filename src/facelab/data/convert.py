"""Convert a training set between the formats of facelab.data.formats (image folder, insightface
RecordIO, file list).

Encoded image bytes are copied, never re-encoded, so every conversion is lossless. Every output gets
a `property` file ("num_classes,height,width"); the size is read from the source's `property` or,
failing that, from its first good image. Outputs are never written over existing data.

Every image is checked to decode cleanly (facelab.data.check, in a process pool) before it is
written: damaged RecordIO records and images that do not decode (empty, undecodable, repaired by the
decoder) are left out, counted (`skipped`; `damaged` and `undecodable` in the result) and listed in
`skipped.csv` (source,offset,reason: the file, the record's byte offset in a `.rec`, why) beside the
output's `property`.

Nothing half-written ever carries the output's name (see facelab.data.formats). The temporaries of a
killed conversion are removed by the next one writing beside them (facelab.io.remove_stale_temps),
never those of a live one.
"""

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from facelab.data.check import screen_stream
from facelab.data.formats import FORMATS, Item, Source, detect_format, output_dir, output_format
from facelab.errors import FacelabError
from facelab.io import check_writable, decode_image, remove_stale_temps, write_table

log = logging.getLogger(__name__)


class Skipped(NamedTuple):
    """An image left out of the output: its source file, its byte offset in a `.rec` (else None),
    and why."""

    source: str
    offset: int | None
    reason: str


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


def _good(source: Source, undecodable: list[Skipped], named: bool) -> Iterator[Item]:
    """The source's items that decode cleanly; the others are appended to `undecodable`. `named`:
    the output stores every image as a file, whose name needs a known image suffix."""
    for item, reason in screen_stream(source.items, lambda it: it.data):
        if reason is not None:
            log.info("%s%s: %s; left out", item.source,
                     "" if item.offset is None else f" (byte offset {item.offset})", reason)
            undecodable.append(Skipped(item.source, item.offset, reason))
            continue
        if named and not Path(item.name).suffix:  # decodes, in a format a folder cannot name
            raise FacelabError(f"{item.source} (byte offset {item.offset}): unknown image "
                               "encoding (not JPEG, PNG, BMP or WebP)")
        yield item


def convert(src: Path, dst: Path, fmt: str | None = None) -> dict:
    """Convert the training set at `src` (format detected) to `dst` (format `fmt`, else from dst's
    name: `.rec` -> rec, `.txt` -> list, otherwise folder). Returns counts and formats: `images`
    counts the images written, `skipped` those left out, `damaged` the damaged source records
    [(offset, reason)] and `undecodable` the images that do not decode cleanly [Skipped(source,
    offset, reason)]; all skipped ones are listed in `skipped.csv` in the output folder, if any.
    The output folder is checked writable before any work."""
    src, dst = Path(src), Path(dst)
    src_fmt, dst_fmt = detect_format(src), output_format(dst, fmt)
    reader, writer = FORMATS[src_fmt], FORMATS[dst_fmt]
    src_root = src if src.is_dir() else src.parent
    if not reader.packed and dst.resolve().is_relative_to(src_root.resolve()):
        raise FacelabError(f"{dst}: output must not lie inside the source folder {src_root}")
    work = check_writable(writer.check_output(dst))
    remove_stale_temps(work)  # what a killed conversion left beside the output
    source = reader.read(src)
    undecodable: list[Skipped] = []
    good = _good(source, undecodable, named=not writer.packed)
    first = next(good, None)
    if first is None:
        raise FacelabError(f"{src}: no images to convert" + _first_skipped(undecodable))
    size = source.size or decode_image(first.data, first.source).shape[:2]
    tally = _Tally(_prepend(first, good))
    source = source._replace(items=tally)
    writer.write(dst, source, size, lambda folder: _write_skipped(folder, source, undecodable))
    skipped = _skipped_rows(source, undecodable)
    log.info("converted %s (%s) -> %s (%s): %d images, %d identities, %d skipped", src, src_fmt,
             dst, dst_fmt, tally.count, len(source.classes), len(skipped))
    return {"src_format": src_fmt, "dst_format": dst_fmt, "images": tally.count,
            "classes": len(source.classes), "height": int(size[0]), "width": int(size[1]),
            "skipped": len(skipped), "damaged": sorted(source.damaged), "undecodable": undecodable}


def _skipped_rows(source: Source, undecodable: list[Skipped]) -> list[Skipped]:
    damaged = [Skipped(source.path, d.offset, d.reason) for d in sorted(source.damaged)]
    return damaged + undecodable


def _write_skipped(folder: Path, source: Source, undecodable: list[Skipped]) -> None:
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


def _prepend(first: Item, rest: Iterator[Item]) -> Iterator[Item]:
    yield first
    yield from rest
