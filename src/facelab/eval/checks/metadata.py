"""Data checks: does the evaluation data match the model's preprocessing (data.transforms)?

A checkpoint records `preprocess` (template, size, colour, mean, std). Evaluation data declare the
same fields, each with where the value came from:

- an aligned folder (`facelab align`): `align.json` gives the size; the template is `arcface112`
  (the only one `facelab align` writes; a "template" key in align.json wins). Colour/normalisation:
  not declared. A folder without align.json: the height of its first image, measured (photos that
  were never aligned are refused here, with the way to align them, not deep in the model).
- a `.bin` pair set: a sidecar `<set>.json` next to it (written by `write_bin(..., meta=...)` and by
  the synthetic generator) declares any of the fields; a bare `.bin` is taken as the documented
  insightface convention (112x112 RGB, ArcFace template, (x/255 - 0.5)/0.5), recorded with source
  "assumed".
- IJB loose crops are aligned by facelab with the model's own template and size; colour and
  normalisation are the insightface convention, "assumed".

Meaning of the fields on the data side: template and size, the alignment of the crops; colour, the
channel order of the pixels once decoded; mean and std, the normalisation the set is published with.
When the image array is at hand its height is the size ("measured"). A field the data do not declare
is not compared.

`check_data` compares, field by field, and refuses a mismatch with one FacelabError naming each
field, the model's value and the data's value, unless the field is allowed (`allow_mismatch`: field
names or "all"). The record it returns goes to metrics.json under "data_checks".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from facelab.align.folder import MANIFEST as ALIGN_MANIFEST
from facelab.data.pairsets import FIELDS, check_declared, sidecar_path
from facelab.data.transforms import PREPROCESS_DEFAULT, check_preprocess
from facelab.errors import FacelabError
from facelab.io import IMAGE_SUFFIXES

ASSUMED = "assumed (insightface default for a bare .bin)"


def _field(value: object, source: str) -> dict:
    return {"value": value, "source": source}


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise FacelabError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise FacelabError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(obj, dict):
        raise FacelabError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def describe_bin(path: Path) -> dict:
    """{field: {"value", "source"}} of a `.bin` set: its sidecar, else the insightface default."""
    path = Path(path)
    side = sidecar_path(path)
    if side.exists():
        desc = {
            k: _field(v, side.name) for k, v in check_declared(_read_json(side), str(side)).items()
        }
    else:
        desc = {k: _field(PREPROCESS_DEFAULT[k], ASSUMED) for k in FIELDS}
    return desc


def describe_array(images: np.ndarray, declared: Mapping | None = None) -> dict:
    """Description of an image array [N, H, W, 3]: `declared` (or the bare .bin default), size
    measured (the image height is the truth, whatever a sidecar says)."""
    desc = (
        dict(declared)
        if declared is not None
        else {k: _field(PREPROCESS_DEFAULT[k], ASSUMED) for k in FIELDS}
    )
    desc["size"] = _field(int(np.asarray(images).shape[1]), "measured (image height)")
    return desc


def describe_folder(folder: Path) -> dict:
    """Description of an aligned image folder from its align.json; without one, the height of its
    first image (sorted) as the measured size (empty for a folder without images)."""
    manifest = Path(folder) / ALIGN_MANIFEST
    if not manifest.exists():
        return _measured_size(Path(folder))
    declared = check_declared(_read_json(manifest), str(manifest))
    desc = {k: _field(v, ALIGN_MANIFEST) for k, v in declared.items()}
    desc.setdefault(
        "template", _field("arcface112", f"{ALIGN_MANIFEST} (facelab align's only template)")
    )
    return desc


def _measured_size(folder: Path) -> dict:
    """{"size": the first image's height} of a folder without align.json (Pillow reads the header
    only); {} when it holds no image or the first cannot be read (the loader then says why)."""
    first = next(iter(sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                             and p.is_file())), None)
    if first is None:
        return {}
    try:
        with Image.open(first) as image:
            height = image.size[1]
    except (OSError, ValueError):
        return {}
    return {"size": _field(height, f"measured (height of {first.relative_to(folder)}; no "
                                   f"{ALIGN_MANIFEST})")}


def describe_ijb(preprocess: Mapping | None) -> dict:
    """IJB loose crops: aligned here with the model's template and size; colour and normalisation
    are insightface's."""
    pre = check_preprocess(dict(preprocess or {}))
    desc = {
        k: _field(pre[k], "aligned by facelab from the 5 landmarks") for k in ("template", "size")
    }
    for k in ("colour", "mean", "std"):
        desc[k] = _field(PREPROCESS_DEFAULT[k], "assumed (insightface IJB release)")
    return desc


def describe_pair_sets(
    bins: Iterable[Path], lfw: tuple[Path, Path] | None = None
) -> dict[str, dict]:
    """{set name: description} of `facelab eval`'s inputs, named as eval.run.load_pair_sets does."""
    out = {Path(p).stem: describe_bin(p) for p in bins}
    if lfw is not None:
        out[Path(lfw[0]).stem] = describe_folder(Path(lfw[1]))
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # 1 equals [1, 1, 1]
    return bool(np.allclose(a, b, rtol=0, atol=1e-6))


def check_allow(allow_mismatch: Iterable[str]) -> set[str]:
    """The allowed fields: names from FIELDS, or "all" for every field."""
    allow = set(allow_mismatch or ())
    unknown = allow - set(FIELDS) - {"all"}
    if unknown:
        raise FacelabError(
            f"--allow-mismatch: unknown field(s) {sorted(unknown)}; "
            f"choose from {list(FIELDS)} or all"
        )
    return set(FIELDS) if "all" in allow else allow


def check_data(
    name: str, preprocess: Mapping | None, data: Mapping, allow_mismatch: Iterable[str] = ()
) -> dict:
    """Compare the model's preprocessing with one data description; raise on a mismatch that is not
    allowed.

    Returns {field: {"model", "data", "source", "status"}}, status "match", "overridden" (a mismatch
    let through by allow_mismatch) or "not declared" (the data say nothing about the field).
    """
    allow = check_allow(allow_mismatch)
    pre = check_preprocess(dict(preprocess or {}))
    record, refused = {}, []
    for f in FIELDS:
        if f not in data:
            record[f] = {"model": pre[f], "data": None, "source": None, "status": "not declared"}
            continue
        value, source = data[f]["value"], data[f]["source"]
        status = "match" if _same(pre[f], value) else "overridden" if f in allow else "mismatch"
        if status == "mismatch":
            refused.append(f"{f}: model {pre[f]!r}, data {value!r} ({source})")
        record[f] = {"model": pre[f], "data": value, "source": source, "status": status}
    if refused:
        fields = " ".join(f"--allow-mismatch {r.split(':')[0]}" for r in refused)
        photos = (" Photos rather than aligned crops? `facelab align SRC OUT --detector mtcnn` "
                  "aligns them; `facelab embed`, `verify` and `gallery` take photos as they are."
                  if any(r.startswith("size:") for r in refused) else "")
        raise FacelabError(
            f"data check {name!r}: the data do not match the model's preprocessing: "
            + "; ".join(refused)
            + f". Evaluate anyway with {fields} "
            "(or --allow-mismatch all; Python: allow_mismatch=(...))." + photos
        )
    return record


def check_all(
    preprocess: Mapping | None, described: Mapping[str, Mapping], allow_mismatch: Iterable[str] = ()
) -> dict:
    """check_data for every {name: description}; the "data_checks" entry of metrics.json."""
    allow = sorted(check_allow(allow_mismatch))
    sets = {name: check_data(name, preprocess, data, allow) for name, data in described.items()}
    return {"allow_mismatch": allow, "sets": sets}
