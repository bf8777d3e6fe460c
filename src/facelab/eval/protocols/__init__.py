"""Evaluation protocols, each reachable through one function of one shape in PROTOCOLS:

    evaluate(model, data, *, preprocess, device, batch_size, ...) -> dict of results

- "pairs": data = {set name: (images [2N, H, W, 3], same [N])}, pair sets such as insightface's
  `.bin` files (LFW, CFP-FP, AgeDB-30, ...); 10-fold accuracy and VAL@FAR per set
  (evaluate_pair_sets, pairs.py). `facelab eval` and the training loop's validation use it.
- "lfw_pairs": data = (pairs.txt, aligned image folder), the original LFW View 2 protocol with its
  own folds (evaluate_lfw_pairs, lfw_pairs.py).
- "ijb": data = an IJB-B / IJB-C folder (insightface `IJB_release`); 1:1 TAR@FAR per mode and 1:N
  search (evaluate_ijb, ijb/). `facelab ijb` uses it.

preprocess is the model's recorded preprocessing (facelab.model.load_model), device the one the
model lives on. The building blocks beside them: verification.py (insightface's 10-fold
protocol), thresholds.py (a deployed verifier's operating points), identification.py (1:N CMC and
TPIR@FPIR), gallery_index.py and search.py (1:N search through a FAISS index), quality.py
(error-versus-reject curves of a quality score).
"""

from facelab.eval.protocols.ijb import evaluate_ijb
from facelab.eval.protocols.lfw_pairs import evaluate_lfw_pairs
from facelab.eval.protocols.pairs import evaluate_pair_sets

PROTOCOLS = {"pairs": evaluate_pair_sets, "lfw_pairs": evaluate_lfw_pairs, "ijb": evaluate_ijb}

__all__ = ["PROTOCOLS", "evaluate_ijb", "evaluate_lfw_pairs", "evaluate_pair_sets"]
