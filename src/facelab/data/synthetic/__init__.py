"""Procedural synthetic faces: the embedded default dataset for the demo, the tests and the
benchmarks.

identity.py   identity parameters, a pure function of (seed, index)
nuisance.py   per-photo pose, expression, light, framing and degradations
facemap.py    the face's albedo map in face coordinates (features, hair line, beard, glasses,
              texture)
geometry.py   2.5-D head of quadrics, rotated and ray-cast orthographically; the 5 landmarks
photo.py      render: identity x nuisance -> RGB photo + landmarks; encode_jpeg
pool.py       the one-thread worker processes every generator renders in
dataset.py    run_synth: photos, landmarks.csv, attributes.csv, synth.json
pairs.py      aligned verification sets synth-lfw / synth-cfp / synth-lowres (.bin + .csv)
noise.py      --label-noise: a seeded fraction of training photos filed under a wrong identity
              (label_noise.csv)
multi.py      run_multi_synth: several training sets from one identity pool (DAIL's test bed)

Calibration (seed 0, 400 training identities x 20 photos, 3000 pairs per set; identity.SPREAD =
1.0, identity.TEXTURE = 1.5; mixed yaw sd 18 deg, occlusion 5%; lowres face width 5-9 px), 10-fold
accuracy:
  raw aligned pixels (mean-centred cosine)             synth-lfw 62.7%  cfp 54.9%  lowres 61.7%
  `tiny` backbone, ArcFace s=32 m=0.5, 600 steps       synth-lfw 97.2%  cfp 79.4%  lowres 87.6%
                                                       (`facelab demo`)
  4-stage CNN (stride-2 stem), same head, 500 steps    synth-lfw 95.9%  cfp 83.1%  lowres 87.1%
  (batch 128, SGD 0.1 cosine, flip, flip-fused embeddings; about 150-250 s of training on 2 CPU
  cores)
Speed: 1000 x 20 photos in about 40 s on 2 cores (2 workers), 53 s with the three 3000-pair sets.
Changing the generator changes these: re-measure them (and bump dataset.VERSION).
"""

from facelab.data.synthetic.dataset import FIRST_VERIFICATION_ID, run_synth
from facelab.data.synthetic.identity import Identity, make_identity
from facelab.data.synthetic.nuisance import FRAME, KINDS, Nuisance, sample_nuisance
from facelab.data.synthetic.pairs import PAIR_SETS
from facelab.data.synthetic.photo import render

__all__ = ["FIRST_VERIFICATION_ID", "FRAME", "KINDS", "PAIR_SETS", "Identity", "Nuisance",
           "make_identity", "render", "run_synth", "sample_nuisance"]
