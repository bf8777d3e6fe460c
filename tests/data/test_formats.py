"""Every entry of facelab.data.formats.FORMATS: it recognises sample data of its format (and no
other format does), opens it as a training dataset, and, where writable, writes a stream that reads
back byte for byte."""

import numpy as np
import pytest

from facelab.data.formats import FORMATS, Format, detect_format, output_dir, output_format
from facelab.data.recordio import write_recordio
from facelab.errors import FacelabError
from facelab.io import check_writable, encode_image

COUNTS = [3, 2, 4]  # images per identity


def _images():
    """[(label, encoded bytes, suffix)] in label order, JPEG and PNG mixed."""
    rng = np.random.default_rng(0)
    out = []
    for label, n in enumerate(COUNTS):
        for j in range(n):
            ext = ".jpg" if j % 2 == 0 else ".png"
            image = rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)
            out.append((label, encode_image(image, ext, quality=80), ext))
    return out


def _folder_sample(root):
    for i, (label, data, ext) in enumerate(_images()):
        (root / f"id{label}").mkdir(parents=True, exist_ok=True)
        (root / f"id{label}" / f"{i:03d}{ext}").write_bytes(data)
    return root


def _list_sample(root):
    root.mkdir(parents=True)
    lines = []
    for i, (label, data, ext) in enumerate(_images()):
        (root / f"img{i}{ext}").write_bytes(data)
        lines.append(f"img{i}{ext} {label}\n")
    (root / "list.txt").write_text("".join(lines))
    return root


def _rec_sample(root):
    write_recordio(root, [(label, data) for label, data, _ in _images()], len(COUNTS), (10, 8))
    return root


SAMPLES = {"folder": _folder_sample, "list": _list_sample, "rec": _rec_sample}


def test_every_format_has_a_sample():
    assert set(SAMPLES) == set(FORMATS)


def _check_opens(name, path):
    """`path` is claimed by `name` only, and opens as a training set of the sample's images."""
    assert [other for other, f in FORMATS.items() if f.detect(path)] == [name]
    assert detect_format(path) == name
    ds = FORMATS[name].open(path)
    labels = [label for label, _, _ in _images()]
    assert len(ds) == len(labels) and sorted(ds.labels.tolist()) == labels
    assert ds.num_classes == len(COUNTS)
    image, label = ds[(0, True)]
    assert tuple(image.shape) == (3, 10, 8) and label == ds.labels[0]


def _read_back(name, path):
    source = FORMATS[name].read(path)
    return sorted((item.label, item.data) for item in source.items)


@pytest.mark.parametrize("name", list(FORMATS))
def test_detects_and_opens_its_sample(tmp_path, name):
    path = SAMPLES[name](tmp_path / "set")
    _check_opens(name, path)
    expected = sorted((label, data) for label, data, _ in _images())
    assert _read_back(name, path) == expected


@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if f.write is not None])
def test_round_trip(tmp_path, name):
    fmt = FORMATS[name]
    expected = sorted((label, data) for label, data, _ in _images())
    src = _folder_sample(tmp_path / "src")
    outputs = [tmp_path / "out" / "plain"]
    if fmt.suffix:
        outputs.append(tmp_path / "named" / f"x{fmt.suffix}")
    for dst in outputs:
        assert output_format(dst, None if dst.suffix else name) == name
        check_writable(fmt.check_output(dst))  # makes the folder the writer works in
        mark = lambda folder: (folder / "finished").write_text("")  # noqa: E731
        fmt.write(dst, FORMATS["folder"].read(src), (10, 8), mark)
        assert (output_dir(dst, name) / "finished").is_file()
        assert (output_dir(dst, name) / "property").read_text() == "3,10,8\n"
        _check_opens(name, dst)
        assert _read_back(name, dst) == expected
        with pytest.raises(FacelabError, match="already exists"):
            fmt.check_output(dst)  # never written over


def test_output_format_names_and_aliases(tmp_path):
    assert output_format(tmp_path / "x.rec", None) == "rec"
    assert output_format(tmp_path / "x.txt", None) == "list"
    assert output_format(tmp_path / "x", None) == "folder"
    assert output_format(tmp_path / "x.v2", None) == "folder"
    for name, fmt in FORMATS.items():
        for alias in fmt.aliases:
            assert output_format(tmp_path / "x", alias) == name
    refusal = "unknown output format 'zip'; choose one of folder, rec, list"
    with pytest.raises(FacelabError, match=refusal):
        output_format(tmp_path / "x", "zip")


def test_a_read_only_format_is_never_an_output(tmp_path, monkeypatch):
    read_only = Format(lambda path: False, FORMATS["folder"].open, FORMATS["folder"].read,
                       suffix=".ro")
    monkeypatch.setitem(FORMATS, "ro", read_only)
    assert output_format(tmp_path / "x.ro", None) == "folder"
    with pytest.raises(FacelabError, match="'ro' cannot be written; choose one of folder, rec, "):
        output_format(tmp_path / "x", "ro")


def test_detect_format_refusals(tmp_path):
    with pytest.raises(FacelabError, match="does not exist"):
        detect_format(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacelabError, match="not a training set"):
        detect_format(tmp_path / "empty")
