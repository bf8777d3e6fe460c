"""`facelab demo --quick`: the whole pipeline (synth -> align -> train -> eval) on a tiny plan."""

import json

from facelab.cli import main


def test_quick_demo_end_to_end(tmp_path, capsys):
    out, data = tmp_path / "runs" / "demo", tmp_path / "data"
    assert main(["demo", "--quick", "--out", str(out), "--data", str(data)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["pairs"]) == {"synth-lfw", "synth-cfp", "synth-lowres"}
    assert metrics["train"]["steps"] == 4 and metrics["wall_seconds"] > 0
    assert 0.0 <= metrics["baseline"]["raw_pixels"]["synth-lfw"] <= 1.0
    assert (out / "roc.png").exists() and (data / "aligned" / "align.json").exists()
    assert "synth-lfw" in capsys.readouterr().out
    # a second demo reuses the data and trains afresh
    assert main(["demo", "--quick", "--out", str(out), "--data", str(data)]) == 0
