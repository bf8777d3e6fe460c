"""Procedural synthetic faces: the embedded default dataset for the demo, the tests and the benchmarks.

identity.py   identity parameters, a pure function of (seed, index)
nuisance.py   per-photo pose, expression, light, framing and degradations
facemap.py    the face's albedo map in face coordinates (features, hair line, beard, glasses, texture)
geometry.py   2.5-D head of quadrics, rotated and ray-cast orthographically; the 5 landmarks
photo.py      render: identity x nuisance -> RGB photo + landmarks
dataset.py    run_synth: photos, landmarks.csv, attributes.csv, synth.json
pairs.py      aligned verification sets synth-lfw / synth-cfp / synth-lowres (.bin + .csv)

Calibration (seed 0, 400 training identities x 20 photos, 3000 pairs per set; identity.SPREAD = 1.0,
identity.TEXTURE = 1.5, nuisance yaw sd 20 deg, occlusion 8%, lowres face width 5-9 px):
  raw aligned pixels (mean-centred cosine, 10-fold)   synth-lfw 61.5%  cfp 55.7%  lowres 59.3%
  `tiny` backbone, ArcFace s=32 m=0.5, 600 steps      synth-lfw 97.7/97.3%  cfp 80.2/82.6%  lowres 86.6/86.4%
  (batch 128, SGD 0.1 cosine, flip; about 150 s on 2 CPU cores; two training seeds)
Changing the generator changes these: re-measure them (and bump dataset.VERSION).
"""

from facelab.data.synthetic.dataset import FIRST_VERIFICATION_ID, run_synth
from facelab.data.synthetic.identity import Identity, make_identity
from facelab.data.synthetic.nuisance import FRAME, KINDS, Nuisance, sample_nuisance
from facelab.data.synthetic.pairs import PAIR_SETS
from facelab.data.synthetic.photo import render

__all__ = ["FIRST_VERIFICATION_ID", "FRAME", "KINDS", "PAIR_SETS", "Identity", "Nuisance", "make_identity", "render",
           "run_synth", "sample_nuisance"]
