"""`run_synth(label_noise=P)`: round(P·N) training photos filed under another identity, every file
consistent with the move, ground truth in label_noise.csv, and P = 0 the noise-free output."""

import csv
import json

import numpy as np
import pytest

from facelab.data.synthetic import run_synth
from facelab.data.synthetic.noise import noisy_assignment
from facelab.errors import FacelabError

N_ID, PER_ID, SEED = 6, 5, 3


def rows(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def clean_and_noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    run_synth(root / "clean", N_ID, PER_ID, SEED, pairs=0, workers=1)
    run_synth(root / "noisy", N_ID, PER_ID, SEED, pairs=0, workers=1, label_noise=0.25)
    return root / "clean", root / "noisy"


def test_fraction_is_exact_and_every_move_is_consistent(clean_and_noisy):
    clean, noisy = clean_and_noisy
    truth = rows(noisy / "label_noise.csv")
    assert truth[0] == ["image", "true_identity", "assigned_identity"]
    moved = {r[0]: (int(r[1]), int(r[2])) for r in truth[1:]}
    assert len(moved) == round(0.25 * N_ID * PER_ID) == 8
    clean_lm = {r[0]: r[1:] for r in rows(clean / "landmarks.csv")[1:]}
    noisy_lm = {r[0]: r[1:] for r in rows(noisy / "landmarks.csv")[1:]}
    attrs = {r[0]: r for r in rows(noisy / "attributes.csv")[1:]}
    id_col = rows(noisy / "attributes.csv")[0].index("identity")
    assert len(noisy_lm) == len(clean_lm) == N_ID * PER_ID
    for image, (true_id, assigned) in moved.items():
        folder, name = image.split("/")
        assert assigned != true_id and int(folder) == assigned
        # <assigned>/<true>-<n>.jpg came from <true>/<n>.jpg
        original = f"{true_id:05d}/{name.split('-')[1]}"
        assert not (noisy / "images" / original).exists() and original not in noisy_lm
        assert (noisy / "images" / image).read_bytes() == (clean / "images" / original).read_bytes()
        assert noisy_lm[image] == clean_lm[original]
        assert int(attrs[image][id_col]) == assigned
    untouched = set(noisy_lm) - set(moved)
    assert all(noisy_lm[i] == clean_lm[i] for i in untouched)
    on_disk = {p.relative_to(noisy / "images").as_posix()
               for p in (noisy / "images").rglob("*.jpg")}
    assert on_disk == set(noisy_lm)
    params = json.loads((noisy / "synth.json").read_text())["params"]
    assert params["label_noise"] == 0.25


def test_zero_noise_is_the_noise_free_output(clean_and_noisy):
    clean, _ = clean_and_noisy
    assert not (clean / "label_noise.csv").exists()
    params = json.loads((clean / "synth.json").read_text())["params"]
    assert set(params) == {"version", "identities", "images_per_identity", "seed", "pairs", "frame"}
    again = run_synth(clean, N_ID, PER_ID, SEED, pairs=0, workers=1, label_noise=0.0)
    assert again["reused"]  # the same parameters as a run without the flag


def test_choice_is_deterministic_and_another_fraction_regenerates(tmp_path):
    truth = np.repeat(np.arange(10), 7)
    a, b = noisy_assignment(1, 70, 10, truth, 0.1), noisy_assignment(1, 70, 10, truth, 0.1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and len(a[0]) == 7
    assert np.all(a[1] != truth[a[0]]) and a[1].min() >= 0 and a[1].max() < 10
    run_synth(tmp_path, 3, 2, 0, pairs=0, workers=1, label_noise=0.5)
    out = run_synth(tmp_path, 3, 2, 0, pairs=0, workers=1, label_noise=0.2)
    assert not out["reused"] and len(rows(tmp_path / "label_noise.csv")) == 1 + round(0.2 * 6)


@pytest.mark.parametrize("p", [-0.1, 1.0, "0.1", True])
def test_bad_fraction_is_refused(tmp_path, p):
    with pytest.raises(FacelabError, match="label_noise"):
        run_synth(tmp_path, 3, 2, 0, pairs=0, label_noise=p)


def test_cli_flag_reaches_the_generator(tmp_path, capsys):
    from facelab.cli import main

    assert main(["synth", str(tmp_path / "x"), "--identities", "3", "--pairs", "0",
                 "--label-noise", "1.5"]) == 2
    assert "label_noise" in capsys.readouterr().err
