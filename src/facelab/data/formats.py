"""FORMATS: the training-set formats facelab reads and writes, one entry each.

  folder  `root/<identity>/<image>`; labels are the sorted identity names (facelab.data.folder)
  rec     MXNet RecordIO as insightface ships it: a folder holding `train.rec` + `train.idx` +
          `property`, or a named `X.rec` with `X.idx` beside it (facelab.data.recordio)
  list    `list.txt` of "relative/path label" lines, paths relative to the list's folder, or a
          named `X.txt` (facelab.data.filelist)

An entry says how to recognise a set (`detect`; at most one format claims a path), open it as a
training dataset (`open`: items (index, flip)), stream its encoded images in order (`read`, for a
lossless conversion) and write such a stream (`write`, None for a format that cannot be written).
`facelab convert` (facelab.data.convert) and facelab.data.open_training_set use this table only.

Writers never leave anything half-written under the output's name: a folder output (image folder,
list, RecordIO folder) is built in a temporary folder beside it and renamed into place whole; a
named `X.rec` gets its files renamed into place, `property` last (facelab.data.recordio.writer).
"""

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from torch.utils.data import Dataset

from facelab.data.filelist import FileListDataset, list_classes, list_path, parse_list
from facelab.data.folder import ImageFolderDataset, scan_folder
from facelab.data.property import label_names, property_text, stated_size
from facelab.data.recordio import Damaged, RecordIODataset, write_rec_files
from facelab.errors import FacelabError
from facelab.io import follow_umask, temp_beside

_SIGNATURES = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png", b"BM": ".bmp"}


class Item(NamedTuple):
    """One image of a set being converted."""

    label: int
    data: bytes  # encoded image
    name: str  # file name to use in a folder output
    source: str  # where it comes from: an image file, or the `.rec` file
    offset: int | None  # the record's byte offset in a `.rec`


class Source(NamedTuple):
    """A set's images as a stream, in order, with what a writer needs to know beforehand."""

    format: str
    classes: list[str]  # identity names, index = label
    count: int
    items: Iterator[Item]
    size: tuple[int, int] | None  # (H, W) if the source states it
    damaged: list[Damaged]  # records left out; complete once `items` is exhausted
    path: str  # the `.rec` file the damaged offsets refer to, else the source


Finish = Callable[[Path], None]  # called with the output's folder before it gets its name


def _check_free(path: Path) -> None:
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise FacelabError(f"{path}: already exists and is not empty; choose a new output path")


def _free_folder(root: Path) -> Path:
    """A folder output: `root` must be free; its temporaries go beside it."""
    _check_free(root)
    return root.parent


class Format(NamedTuple):
    """How facelab recognises, opens, streams and writes one training-set format. A format that
    is only read needs the first three."""

    detect: Callable[[Path], bool]  # whether `path` holds a set of this format
    open: Callable[..., Dataset]  # (path) -> the training dataset, items (index, flip)
    read: Callable[[Path], Source]  # (path) -> its encoded images in order
    # (dst, source, (H, W), finish) -> None; None where the format cannot be written
    write: Callable[[Path, Source, tuple[int, int], Finish], None] | None = None
    # (dst) -> the folder the writer's temporaries go to; FacelabError if dst holds data
    check_output: Callable[[Path], Path] = _free_folder
    suffix: str = ""  # an output named *<suffix> is written in this format ("": any other name)
    # images packed in one memory-mapped file: nothing to preload, and an output may lie
    # inside the set's folder; else every image is a file under the set's folder
    packed: bool = False
    aliases: tuple[str, ...] = ()  # other names `facelab convert --format` accepts


# ---------------------------------------------------------------- detect


def _is_rec(path: Path) -> bool:
    return path.suffix == ".rec" if path.is_file() else (path / "train.rec").is_file()


def _is_list(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".txt"
    return (path / "list.txt").is_file() and not (path / "train.rec").is_file()


def _is_folder(path: Path) -> bool:
    """A folder of identity folders that is neither a RecordIO folder nor a list's folder."""
    return (path.is_dir() and not _is_rec(path) and not _is_list(path)
            and any(p.is_dir() for p in path.iterdir()))


# ---------------------------------------------------------------- read


def _read_bytes(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise FacelabError(f"{where}: cannot read {path} ({e.strerror})") from None


def _suffix(data: bytes) -> str:
    """File suffix of encoded image bytes, or "" if their encoding is not JPEG, PNG, BMP or
    WebP."""
    for sig, ext in _SIGNATURES.items():
        if data.startswith(sig):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ""


def _read_folder(root: Path) -> Source:
    classes, samples = scan_folder(root)
    items = (Item(label, _read_bytes(p, str(root)), p.name, str(p), None) for p, label in samples)
    size = stated_size(root / "property")
    return Source("folder", classes, len(samples), items, size, [], str(root))


def _read_rec(path: Path) -> Source:
    ds = RecordIODataset(path)
    where = str(ds.rec_path)

    def items() -> Iterator[Item]:
        for i, data, label in ds.readable():
            offset = ds.file.offset(int(ds.image_keys[i]))
            yield Item(label, data, f"{i:08d}{_suffix(data)}", where, offset)

    return Source("rec", ds.classes, len(ds), items(), ds.size, ds.damaged, where)


def _read_list(path: Path) -> Source:
    lst = list_path(path)
    entries = parse_list(lst)
    num_classes = list_classes(lst, entries)
    items = (Item(label, _read_bytes(lst.parent / rel, f"{lst} line {n}"),
                  f"{i:08d}{Path(rel).suffix}", str(lst.parent / rel), None)
             for i, (n, rel, label) in enumerate(entries))
    size = stated_size(lst.parent / "property")
    return Source("list", label_names(num_classes), len(entries), items, size, [], str(lst))


# ---------------------------------------------------------------- write


def _build_folder(root: Path, build: Finish, finish: Finish) -> None:
    """build(tmp) then finish(tmp) in a temporary folder beside `root` (which must be free), then
    rename it into place whole, with the user's umask: `root` names a complete output or
    nothing."""
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


def _tree_writer(source: Source, size: tuple[int, int], list_name: str | None) -> Finish:
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
        (tmp / "property").write_text(property_text(len(source.classes), size))

    return build


def _write_folder(dst: Path, source: Source, size: tuple[int, int], finish: Finish) -> None:
    _build_folder(dst, _tree_writer(source, size, None), finish)


def _list_root(dst: Path) -> tuple[Path, str]:
    """(folder, list file name) of a list output: a named `X.txt`, or a folder with `list.txt`."""
    return (dst.parent, dst.name) if dst.suffix == ".txt" else (dst, "list.txt")


def _write_list(dst: Path, source: Source, size: tuple[int, int], finish: Finish) -> None:
    root, name = _list_root(dst)
    _build_folder(root, _tree_writer(source, size, name), finish)


def _check_list_output(dst: Path) -> Path:
    return _free_folder(_list_root(dst)[0])


def _write_rec(dst: Path, source: Source, size: tuple[int, int], finish: Finish) -> None:
    """A named `X.rec` gets X.idx and `property` beside it; any other name is a folder holding
    train.rec, train.idx and property."""

    def write(rec: Path) -> None:
        samples = ((item.label, item.data) for item in source.items)
        write_rec_files(rec, rec.with_suffix(".idx"), rec.parent / "property", samples,
                        len(source.classes), size)

    if dst.suffix == ".rec":
        write(dst)
        finish(dst.parent)
    else:
        _build_folder(dst, lambda tmp: write(tmp / "train.rec"), finish)


def _check_rec_output(dst: Path) -> Path:
    """A named `X.rec` is written file by file beside other files: none of its files may exist."""
    if dst.suffix != ".rec":
        return _free_folder(dst)
    beside = (dst.with_suffix(".idx"), dst.parent / "property", dst.parent / "skipped.csv")
    for path in (dst, *beside):
        if path.exists():
            raise FacelabError(f"{path}: already exists; choose a new output path")
    return dst.parent


# ---------------------------------------------------------------- the table


FORMATS: dict[str, Format] = {
    "folder": Format(_is_folder, ImageFolderDataset, _read_folder, _write_folder,
                     aliases=("images",)),
    "rec": Format(_is_rec, RecordIODataset, _read_rec, _write_rec, _check_rec_output,
                  suffix=".rec", packed=True, aliases=("recordio",)),
    "list": Format(_is_list, FileListDataset, _read_list, _write_list, _check_list_output,
                   suffix=".txt", aliases=("txt",)),
}


def detect_format(path: Path) -> str:
    """Name of the format of an existing training set at `path` (the FORMATS entry claiming
    it)."""
    path = Path(path)
    for name, fmt in FORMATS.items():
        if fmt.detect(path):
            return name
    if not path.exists():
        raise FacelabError(f"{path}: does not exist")
    raise FacelabError(f"{path}: not a training set (expected a folder of identity folders, a "
                       "folder holding train.rec or list.txt, a .rec or a .txt list)")


def output_format(dst: Path, fmt: str | None) -> str:
    """The format to write `dst` in: `fmt` (a FORMATS name or one of its aliases), else the one
    whose suffix `dst` has (`.rec` -> rec, `.txt` -> list, any other name -> folder)."""
    if fmt is not None:
        fmt = next((name for name, f in FORMATS.items() if fmt in f.aliases), fmt)
        writable = ", ".join(name for name, f in FORMATS.items() if f.write is not None)
        if fmt not in FORMATS:
            raise FacelabError(f"unknown output format {fmt!r}; choose one of {writable}")
        if FORMATS[fmt].write is None:
            raise FacelabError(f"output format {fmt!r} cannot be written; choose one of {writable}")
        return fmt
    by_suffix = {f.suffix: name for name, f in FORMATS.items() if f.write is not None}
    return by_suffix.get(Path(dst).suffix, by_suffix[""])


def output_dir(dst: Path, fmt: str) -> Path:
    """The folder that receives the output's `property` (and `skipped.csv`)."""
    suffix = FORMATS[fmt].suffix
    return dst.parent if suffix and dst.suffix == suffix else dst
