"""The `property` file beside a training set, and the identity names of sets that store none.

insightface's RecordIO layout keeps "num_classes,height,width" in one line of a file named
`property` beside `train.rec`; facelab writes it beside every set it converts (image folder, file
list, RecordIO), so the image size is known without decoding an image. RecordIO and file lists
store labels, not identity names: their identities are named by zero-padded label numbers, which
sort like the labels (scan_folder then gives the same labels back).
"""

from pathlib import Path

from facelab.errors import FacelabError


def read_property(path: Path) -> tuple[int, int, int]:
    """insightface `property` file -> (num_classes, height, width)."""
    try:
        fields = [int(v) for v in path.read_text().strip().split(",")]
    except (OSError, UnicodeDecodeError, ValueError):
        raise FacelabError(f"{path}: expected one line 'num_classes,height,width'") from None
    if len(fields) != 3 or min(fields) < 1:
        raise FacelabError(f"{path}: expected three positive integers 'num_classes,height,width'")
    return fields[0], fields[1], fields[2]


def stated_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the `property` file at `path`, or None when there is none."""
    return read_property(path)[1:] if path.is_file() else None


def property_text(num_classes: int, size: tuple[int, int]) -> str:
    """The `property` file's line for `num_classes` identities of (height, width) images."""
    return f"{num_classes},{size[0]},{size[1]}\n"


def label_names(num_classes: int) -> list[str]:
    """Zero-padded names, so that sorting them (scan_folder) gives back the labels."""
    width = len(str(max(num_classes - 1, 0)))
    return [f"{c:0{width}d}" for c in range(num_classes)]
