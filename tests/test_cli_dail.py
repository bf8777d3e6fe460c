"""CLI of the DAIL tools: `synth --datasets`, `overlap`; bad input is one line and exit 2."""

from facelab.cli import main


def test_synth_multi_and_overlap_errors(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "m"), "--datasets", "2", "--identities", "3", "--images-per-identity",
                 "1", "--overlap", "0.34", "--pairs", "0", "--workers", "1"]) == 0
    assert (tmp_path / "m" / "overlap.csv").read_text().count("\n") == 2  # header + one shared identity
    assert main(["synth", str(tmp_path / "x"), "--datasets", "2", "--overlap", "2"]) == 2
    assert "overlap must be a fraction" in capsys.readouterr().err
    code = main(["overlap", str(tmp_path / "m" / "A"), str(tmp_path / "m" / "B"), "--model", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and capsys.readouterr().err.startswith("facelab: error: ")
