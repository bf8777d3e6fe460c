"""Data checks: descriptions (sidecar, align.json, assumed default), refusals, overrides."""

import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import facelab.eval.run as run
from facelab.align.folder import align_folder
from facelab.cli import main
from facelab.data.pairsets import load_bin, write_bin
from facelab.data.synthetic.pairs import _write_set, plan_pairs
from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.errors import FacelabError
from facelab.eval.checks import metadata as M

# one value per field that differs from PREPROCESS_DEFAULT
OTHER = {
    "template": "arcface96x112",
    "size": 128,
    "colour": "BGR",
    "mean": [0.485, 0.456, 0.406],
    "std": 0.25,
}


def _bin(path, n=20, size=112, meta=None):
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 255, (2 * n, size, size, 3), dtype=np.uint8))
    write_bin(path, images, [True, False] * (n // 2), meta=meta)
    return path


def test_sidecar_round_trip_and_bare_default(tmp_path):
    meta = {"template": "arcface112", "size": 112, "colour": "BGR", "source": "test"}
    _bin(tmp_path / "s.bin", meta=meta)
    assert json.loads((tmp_path / "s.json").read_text()) == meta
    desc = M.describe_bin(tmp_path / "s.bin")
    assert {k: v["value"] for k, v in desc.items()} == {
        "template": "arcface112",
        "size": 112,
        "colour": "BGR",
    }
    assert {v["source"] for v in desc.values()} == {"s.json"}
    bare = M.describe_bin(_bin(tmp_path / "bare.bin"))
    assert {k: v["value"] for k, v in bare.items()} == PREPROCESS_DEFAULT
    assert all(v["source"].startswith("assumed") for v in bare.values())
    with pytest.raises(
        FacelabError, match=r"x\.json: preprocess\.colour must be 'RGB' or 'BGR', got 'RBG'"
    ):
        _bin(tmp_path / "x.bin", meta={"colour": "RBG"})


def test_matching_passes_and_scalar_equals_three_numbers():
    data = {k: {"value": v, "source": "s"} for k, v in PREPROCESS_DEFAULT.items()}
    data["mean"]["value"] = [0.5, 0.5, 0.5]
    record = M.check_data("set", PREPROCESS_DEFAULT, data)
    assert {r["status"] for r in record.values()} == {"match"}
    undeclared = M.check_data(
        "set", PREPROCESS_DEFAULT, {"size": {"value": 112, "source": "align.json"}}
    )
    assert (
        undeclared["size"]["status"] == "match" and undeclared["colour"]["status"] == "not declared"
    )


@pytest.mark.parametrize("field", M.FIELDS)
def test_each_field_mismatch_is_refused_then_overridden(tmp_path, field):
    _bin(tmp_path / "s.bin", meta={field: OTHER[field]})
    desc = M.describe_bin(tmp_path / "s.bin")
    expected = f"{field}: model {PREPROCESS_DEFAULT[field]!r}, data {OTHER[field]!r} (s.json)"
    with pytest.raises(FacelabError) as err:
        M.check_data("s", PREPROCESS_DEFAULT, desc)
    assert expected in str(err.value) and f"--allow-mismatch {field}" in str(err.value)
    assert "--allow-mismatch all" in str(err.value)
    for allow in ([field], ["all"]):
        record = M.check_data("s", PREPROCESS_DEFAULT, desc, allow)
        assert record[field] == {
            "model": PREPROCESS_DEFAULT[field],
            "data": OTHER[field],
            "source": "s.json",
            "status": "overridden",
        }
    others = [f for f in M.FIELDS if f != field]
    with pytest.raises(FacelabError, match=f"--allow-mismatch {field}"):
        M.check_data("s", PREPROCESS_DEFAULT, desc, others)


def test_unknown_allow_field_is_an_error():
    with pytest.raises(FacelabError, match=r"unknown field\(s\) \['colour_order'\]"):
        M.check_all(PREPROCESS_DEFAULT, {}, ["colour_order"])


def test_align_json_from_facelab_align(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "src" / "a").mkdir(parents=True)
    cv2.imwrite(
        str(tmp_path / "src" / "a" / "0.png"), rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    )
    pts = [60, 80, 140, 80, 100, 115, 70, 150, 130, 150]
    (tmp_path / "lm.csv").write_text(
        "image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\na/0.png," + ",".join(map(str, pts)) + "\n"
    )
    align_folder(tmp_path / "src", tmp_path / "al", tmp_path / "lm.csv", size=96, workers=1)
    desc = M.describe_folder(tmp_path / "al")
    assert (
        desc["size"] == {"value": 96, "source": "align.json"}
        and desc["template"]["value"] == "arcface112"
    )
    with pytest.raises(FacelabError, match="size: model 112, data 96 \\(align.json\\)"):
        M.check_data("al", PREPROCESS_DEFAULT, desc)
    # not aligned by facelab: only the size, measured on the first image (200 px photos)
    src = M.describe_folder(tmp_path / "src")
    assert list(src) == ["size"] and src["size"]["value"] == 200
    assert src["size"]["source"] == "measured (height of a/0.png; no align.json)"
    with pytest.raises(FacelabError, match=r"size: model 112, data 200 .*Photos rather than "
                                           r"aligned crops\? `facelab align SRC OUT --detector"):
        M.check_data("src", PREPROCESS_DEFAULT, src)
    (tmp_path / "empty").mkdir()
    assert M.describe_folder(tmp_path / "empty") == {}  # no image: nothing to measure


def test_synthetic_pair_sets_write_sidecars(tmp_path):
    plan = plan_pairs("synth-lfw", 20, seed=0)
    keys = {key for _, _, a, b in plan for key in (a, b)}
    photos = {key: np.full((112, 112, 3), 100, np.uint8) for key in keys}
    attrs = {key: {"yaw_deg": 0.0, "resolution": 1.0, "occlusion": "none"} for key in keys}
    _write_set(tmp_path, "synth-lfw", plan, photos, attrs)
    desc = M.describe_bin(tmp_path / "synth-lfw.bin")
    assert {k: v["value"] for k, v in desc.items()} == {
        "template": "arcface112",
        "size": 112,
        "colour": "RGB",
    }
    assert len(load_bin(tmp_path / "synth-lfw.bin")[1]) == len(plan)


class _Mean(nn.Module):
    def forward(self, x):  # [B, 3, H, W] -> [B, 4]
        m = x.mean(dim=(2, 3))
        return torch.cat([m, torch.full_like(m[:, :1], 0.1)], 1)


def _patch_model(monkeypatch, tmp_path):
    ckpt = tmp_path / "ck.pt"
    monkeypatch.setattr(run, "resolve_checkpoint", lambda c: ckpt)
    monkeypatch.setattr(run, "load_model", lambda p: (_Mean(), dict(PREPROCESS_DEFAULT)))


def test_evaluate_checkpoint_refuses_then_records_override(tmp_path, monkeypatch):
    _patch_model(monkeypatch, tmp_path)
    _bin(tmp_path / "bgr.bin", meta={"colour": "BGR"})
    _bin(tmp_path / "small.bin", size=96)  # bare .bin: its image height is measured
    bins = [tmp_path / "bgr.bin", tmp_path / "small.bin"]
    sets, data = run.load_pair_sets(bins), M.describe_pair_sets(bins)
    with pytest.raises(FacelabError, match="'bgr'.*colour: model 'RGB', data 'BGR'"):
        run.evaluate_checkpoint("ck.pt", sets, tmp_path / "ev", data=data)
    assert not (tmp_path / "ev").exists()  # refused before anything is computed or written
    run.evaluate_checkpoint(
        "ck.pt", sets, tmp_path / "ev", data=data, allow_mismatch=("colour", "size")
    )
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())["data_checks"]
    assert saved["allow_mismatch"] == ["colour", "size"]
    bgr = saved["sets"]["bgr"]
    assert bgr["colour"]["status"] == "overridden" and bgr["size"]["status"] == "match"
    assert saved["sets"]["small"]["size"] == {
        "model": 112,
        "data": 96,
        "source": "measured (image height)",
        "status": "overridden",
    }
    assert all(
        (tmp_path / "ev" / f).stat().st_size > 0 for f in ("roc.png", "scores.png", "index.html")
    )


def test_cli_mismatch_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    _patch_model(monkeypatch, tmp_path)
    _bin(tmp_path / "v.bin", meta={"template": "arcface96x112"})
    argv = ["eval", "ck.pt", "--pairs", str(tmp_path / "v.bin"), "--out", str(tmp_path / "ev")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-mismatch template" in err
    assert main([*argv, "--allow-mismatch", "template"]) == 0
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())["data_checks"]
    assert saved["sets"]["v"]["template"]["status"] == "overridden"
