"""Every JSON file facelab writes is strict JSON: NaN/Infinity become null, explained in "nulls"."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import facelab
from facelab.jsonfile import strict_json, write_json_atomic


def _strict_loads(text):
    """json.loads that refuses NaN, Infinity and -Infinity (Python's own reader accepts them)."""

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_explained_nulls(tmp_path):
    record = {
        "acc": np.float32(0.5),
        "std": float("nan"),
        "rates": [0.25, np.float64("inf"), -math.inf],
        "per_set": {"lfw": {"val": np.array([1.0, np.nan])}},
        "n": np.int64(3),
        "ok": np.bool_(True),
    }
    write_json_atomic(tmp_path / "m.json", record)
    got = _strict_loads((tmp_path / "m.json").read_text("utf-8"))
    assert got == {
        "acc": 0.5,
        "std": None,
        "rates": [0.25, None, None],
        "per_set": {"lfw": {"val": [1.0, None]}},
        "n": 3,
        "ok": True,
        "nulls": {
            "std": "was NaN",
            "rates[1]": "was Infinity",
            "rates[2]": "was -Infinity",
            "per_set.lfw.val[1]": "was NaN",
        },
    }
    # the caller's record itself is left as it was
    assert math.isnan(record["std"]) and np.isnan(record["per_set"]["lfw"]["val"][1])


def test_caller_reasons_cover_a_value_or_a_subtree_and_merge_with_given_nulls():
    record = {
        "train": {"images_per_second": float("nan"), "steps": 0},
        "curve": {"rate": [float("nan")] * 3, "ranks": [1, 2, 3]},
        "tpir": None,
        "nulls": {"tpir": "no non-mated search"},
        "other": float("nan"),
    }
    reasons = {"train.images_per_second": "no step was timed", "curve": "no mated search"}
    got = _strict_loads(strict_json(record, reasons))
    assert got["train"] == {"images_per_second": None, "steps": 0}
    assert got["curve"] == {"rate": [None, None, None], "ranks": [1, 2, 3]}
    assert got["nulls"] == {
        "tpir": "no non-mated search",
        "train.images_per_second": "no step was timed",
        "curve": "no mated search",  # once, for the subtree
        "other": "was NaN",
    }


def test_finite_records_are_written_as_before():
    record = {"a": [1, 2.5, "é"], "b": {"c": None, "d": True}}
    text = strict_json(record)
    assert text == json.dumps(record, indent=2, ensure_ascii=False) and "nulls" not in text


def test_a_record_that_is_not_an_object_refuses_non_finite_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"non-finite number at \[1\]\.score \(was NaN\)"):
        write_json_atomic(tmp_path / "c.json", [{"score": 1.0}, {"score": float("nan")}])
    assert not (tmp_path / "c.json").exists()
    write_json_atomic(tmp_path / "c.json", [{"score": 1.0}])
    assert _strict_loads((tmp_path / "c.json").read_text()) == [{"score": 1.0}]
    with pytest.raises(ValueError, match="'nulls' must be an object"):
        strict_json({"x": float("nan"), "nulls": ["x"]})


# jsonfile.py is the writer; eval/reports/html.py shows values as text in the page, no JSON file.
# Every other module calls facelab.jsonfile.write_json_atomic / strict_json.
NOT_ROUTED = {"jsonfile.py", "eval/reports/html.py"}


def test_no_other_module_writes_json_itself():
    src = Path(facelab.__file__).parent
    calls = {
        p.relative_to(src).as_posix()
        for p in src.rglob("*.py")
        if re.search(r"\bjson\.dumps?\(", p.read_text(encoding="utf-8"))
    }
    assert calls <= NOT_ROUTED, sorted(calls - NOT_ROUTED)
