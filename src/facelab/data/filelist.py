"""File-list training sets: `list.txt` of "relative/path label" lines, paths relative to the list's
folder, optionally with a `property` file ("num_classes,height,width") beside it (`facelab convert`
writes both). Labels are the list's own; identities are named by zero-padded label numbers."""

from pathlib import Path

from facelab.data.folder import ImageFolderDataset
from facelab.data.property import label_names, read_property
from facelab.errors import FacelabError


def list_path(path: Path) -> Path:
    """The list file of a file-list set given as its folder or as the file itself."""
    path = Path(path)
    return path / "list.txt" if path.is_dir() else path


def parse_list(path: Path) -> list[tuple[int, str, int]]:
    """"relative/path label" lines -> [(line number, path, label)]; the label is the last field
    (paths may hold spaces); blank lines are skipped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FacelabError(f"{path}: cannot read file list ({e})") from None
    entries = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise FacelabError(f"{path} line {n}: expected 'relative/path label', "
                               f"got {line.strip()!r}")
        if Path(parts[0]).is_absolute() or ".." in Path(parts[0]).parts:
            raise FacelabError(f"{path} line {n}: path {parts[0]!r} must be relative, inside the "
                               "list's folder")
        entries.append((n, parts[0], int(parts[1])))
    if not entries:
        raise FacelabError(f"{path}: the file list is empty")
    return entries


def list_classes(path: Path, entries: list[tuple[int, str, int]]) -> int:
    """Number of classes: the `property` file's beside the list (checked against the labels), else
    the largest label + 1."""
    num_classes = max(label for _, _, label in entries) + 1
    prop = path.parent / "property"
    if prop.is_file():
        stated = read_property(prop)[0]
        if stated < num_classes:
            raise FacelabError(f"{prop}: {stated} classes, but {path} uses label {num_classes - 1}")
        num_classes = stated
    return num_classes


class FileListDataset(ImageFolderDataset):
    """The images of a file list, with its labels; otherwise an ImageFolderDataset (same items)."""

    def __init__(self, path: str | Path, preload: bool = False) -> None:
        self.list_file = list_path(Path(path))
        super().__init__(self.list_file.parent, preload=preload)

    def _scan(self) -> tuple[list[str], list[tuple[Path, int]]]:
        entries = parse_list(self.list_file)
        classes = label_names(list_classes(self.list_file, entries))
        return classes, [(self.root / rel, label) for _, rel, label in entries]
