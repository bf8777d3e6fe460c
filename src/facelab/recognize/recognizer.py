"""From a photo to an answer: detect, align, embed and compare faces with any facelab model.

`Recognizer.load(model)` takes a run folder, a checkpoint or a facelab `.onnx` export; the crop
geometry (alignment template and size), colour order and normalisation come from the model's own
preprocessing record, and the decision threshold from the operating points the run stored on its
validation sets (facelab.eval.protocols.thresholds). Each face is found by MTCNN (Zhang et al.
2016), aligned by the 5-point similarity of evaluation (facelab.align) and embedded as evaluation
embeds: f(crop) + f(mirrored crop), L2-normalised (facelab.eval.embed). Two faces are the same
person when the squared L2 distance of their embeddings, 2 - 2 cos, is below the threshold (the
convention of protocols/verification.py).
"""

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from facelab.align.detect import Face, detect_faces
from facelab.align.template import template_for
from facelab.align.warp import align_face
from facelab.data.transforms import check_preprocess
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.model import load_checkpoint, model_from_checkpoint, resolve_checkpoint, weights_digest
from facelab.onnx_model import OnnxEmbedder, load_onnx
from facelab.recognize.photos import Photo, load_photo, photo_name
from facelab.recognize.runtime import prepare

log = logging.getLogger(__name__)
DETECTORS = ("mtcnn",)
RULE = "accuracy"  # which stored operating point decides: the best-accuracy threshold


@dataclass(frozen=True)
class Match:
    """The answer to "same person?" for the main faces of two photos."""

    score: float  # cosine of the two embeddings, in [-1, 1]
    distance: float  # squared L2 distance of the L2-normalised embeddings = 2 - 2 score
    threshold: float  # same when distance < threshold
    same: bool
    threshold_set: str | None  # the validation set the threshold was chosen on; None: given
    faces: tuple[Face, Face]

    def __str__(self) -> str:
        """The decision in one line, e.g. `same person: cosine 0.6123, distance 0.7754 <
        threshold 1.1000 (best accuracy on synth-lfw)`."""
        verdict, sign = ("same person", "<") if self.same else ("different people", ">=")
        where = (f"best accuracy on {self.threshold_set}" if self.threshold_set is not None
                 else "given")
        return (f"{verdict}: cosine {self.score:.4f}, distance {self.distance:.4f} {sign} "
                f"threshold {self.threshold:.4f} ({where})")


@dataclass(frozen=True)
class _Loaded:
    """What a model file gives: the network and everything recorded with it."""

    net: nn.Module
    preprocess: dict
    thresholds: dict  # {validation set: select_thresholds result}; empty when none stored
    fingerprint: dict  # backbone, embedding_size, preprocess, weights_sha256


class Recognizer:
    """Faces of photos -> embeddings -> decisions, with one model (see the module docstring)."""

    def __init__(self, loaded: _Loaded, source: str, device: torch.device, precision: str,
                 threshold: float | None, threshold_set: str | None, min_face: float = 20.0,
                 max_side: int = 1280) -> None:
        self.source, self.device, self.precision = source, device, precision
        self.net, self.preprocess = loaded.net, loaded.preprocess
        self.fingerprint, self.thresholds = loaded.fingerprint, loaded.thresholds
        self.threshold, self.threshold_set = _pick_threshold(
            loaded.thresholds, threshold, threshold_set, source)
        self.min_face, self.max_side = float(min_face), int(max_side)

    @classmethod
    def load(cls, model: str | Path, detector: str = "mtcnn", device: str | None = None,
             threshold: float | None = None, threshold_set: str | None = None,
             precision: str = "auto", min_face: float = 20.0) -> "Recognizer":
        """A Recognizer on a run folder, checkpoint or facelab `.onnx` model.

        device: None -> CPU (an exported model always runs on CPU). precision: "auto" picks the
        fastest path of this CPU (facelab.recognize.runtime), "fp32" or "bf16" force one.
        threshold: a squared-L2 distance that overrides the stored one; threshold_set: which stored
        validation set's best-accuracy threshold to use (default: the first the run validated on).
        min_face: the smallest face to look for, in pixels of the detection image.
        """
        if detector not in DETECTORS:
            raise FacelabError(f"detector {detector!r} is not available; choose one of "
                               f"{list(DETECTORS)}")
        loaded = _load(model)
        dev = torch.device(device or "cpu")
        if dev.type != "cpu" and isinstance(loaded.net, OnnxEmbedder):
            raise FacelabError(f"{model}: an exported ONNX model runs on the CPU only")
        if dev.type == "cpu":  # "auto" may export the model: at its own crop size
            _, (w, h) = template_for(loaded.preprocess["template"], int(loaded.preprocess["size"]))
            net, used = prepare(loaded.net, precision, input_size=(h, w),
                                digest=loaded.fingerprint["weights_sha256"])
        else:
            net, used = loaded.net.to(dev), "fp32"
        loaded = dataclasses.replace(loaded, net=net)
        log.info("%s: %s on %s, %s", model, loaded.fingerprint["backbone"], dev, used)
        return cls(loaded, str(model), dev, used, threshold, threshold_set, min_face)

    def detect(self, photo: Photo) -> list[Face]:
        """Every face of a photo (box, 5 landmarks, score), the main face first; [] for none."""
        return self._detect(load_photo(photo))

    def embed(self, photo: Photo) -> list[Face]:
        """detect() with each face's aligned crop and embedding filled in."""
        return self.embed_many([photo])[0]

    def embed_many(self, photos: Iterable[Photo], batch_size: int = 32) -> list[list[Face]]:
        """embed() of many photos, their crops embedded `batch_size` at a time; the first photo
        that cannot be read raises (embed_stream reports it and goes on)."""
        out = []
        for _, faces in self.embed_stream(photos, batch_size):
            if isinstance(faces, FacelabError):
                raise faces
            out.append(faces)
        return out

    def embed_stream(self, photos: Iterable[Photo], batch_size: int = 32
                     ) -> Iterator[tuple[str, list[Face] | FacelabError]]:
        """(photo name, its faces) per photo in order, or (name, the FacelabError saying why it
        cannot be read). Photos are decoded and searched one by one and their crops gathered until
        `batch_size` are waiting, which then go through the model in one call: memory stays
        bounded however many photos stream through."""
        if batch_size < 1:
            raise FacelabError(f"batch_size must be >= 1, got {batch_size}")
        waiting: list[tuple[str, list[Face] | FacelabError]] = []
        crops = 0
        for index, photo in enumerate(photos):
            name = photo_name(photo, index)
            try:
                faces = self._with_crops(load_photo(photo, name))
            except FacelabError as e:
                faces = e
            waiting.append((name, faces))
            crops += 0 if isinstance(faces, FacelabError) else len(faces)
            if crops >= batch_size:
                yield from self._embedded(waiting, batch_size)
                waiting, crops = [], 0
        yield from self._embedded(waiting, batch_size)

    def compare(self, a: Photo, b: Photo) -> Match:
        """Same person? The main faces of two photos, decided by the threshold (module docstring).
        A photo without a face, or a model without a threshold, is a FacelabError."""
        threshold = self.require_threshold()
        faces = self.embed_many([a, b], batch_size=2)
        for i, (photo, found) in enumerate(zip((a, b), faces, strict=True)):
            if not found:
                raise FacelabError(f"{photo_name(photo, i)}: no face found")
        fa, fb = faces[0][0], faces[1][0]
        ea, eb = fa.embedding.astype(np.float64), fb.embedding.astype(np.float64)  # [d]
        distance = float(np.sum(np.square(ea - eb)))
        return Match(score=float(ea @ eb), distance=distance, threshold=threshold,
                     same=distance < threshold, threshold_set=self.threshold_set, faces=(fa, fb))

    def require_threshold(self) -> float:
        """The decision threshold (squared L2 distance), or a FacelabError saying how to give
        one."""
        if self.threshold is None:
            raise FacelabError(
                f"{self.source}: the model stores no verification threshold (it was trained "
                "without validation pair sets); give one (threshold=..., --threshold T)")
        return self.threshold

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        """detect_faces on the photo shrunk to at most `max_side` pixels (MTCNN's image pyramid
        costs grow with the pixel count), coordinates mapped back to the full photo."""
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale == 1.0:
            return detect_faces(rgb, min_face=self.min_face)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        back = np.array([w / size[0], h / size[1]])  # [2] x and y factors
        return [dataclasses.replace(f, box=f.box * np.tile(back, 2), landmarks=f.landmarks * back)
                for f in detect_faces(small, min_face=self.min_face)]

    def _with_crops(self, rgb: np.ndarray) -> list[Face]:
        """The faces of a photo with their aligned crops, from the full-resolution pixels."""
        pre = self.preprocess
        return [dataclasses.replace(f, crop=align_face(rgb, f.landmarks, int(pre["size"]),
                                                        pre["template"]))
                for f in self._detect(rgb)]

    def _embedded(self, waiting: list, batch_size: int) -> Iterator[tuple]:
        """The waiting photos with their faces' embeddings, computed in one batched pass."""
        faces = [f for _, fs in waiting if not isinstance(fs, FacelabError) for f in fs]
        if faces:
            crops = np.stack([f.crop for f in faces])  # uint8 [N, h, w, 3]
            emb = embed_images(self.net, crops, batch_size=batch_size, flip=True,
                               preprocess=self.preprocess, device=self.device)  # [N, d]
            done = iter(dataclasses.replace(f, embedding=e) for f, e in zip(faces, emb,
                                                                            strict=True))
        for name, fs in waiting:
            yield name, fs if isinstance(fs, FacelabError) else [next(done) for _ in fs]


def _load(model: str | Path) -> _Loaded:
    """The network, preprocessing, stored thresholds and fingerprint of a model file or run."""
    path = resolve_checkpoint(model)
    if path.suffix.lower() == ".onnx":
        net, preprocess = load_onnx(path, spin=False)  # the detector runs between its calls
        meta = net.metadata
        digest = meta.get("weights_sha256") or hashlib.sha256(path.read_bytes()).hexdigest()
        thresholds = _parse_thresholds(meta.get("thresholds"), path)
        backbone, size = meta.get("backbone", ""), int(meta["embedding_size"])
    else:
        ckpt = load_checkpoint(path)
        net, preprocess = model_from_checkpoint(ckpt)
        digest, thresholds = weights_digest(ckpt["model"]), ckpt.get("thresholds") or {}
        model_cfg = ckpt["config"]["model"]
        backbone, size = model_cfg["backbone"], int(model_cfg["embedding_size"])
    preprocess = check_preprocess(preprocess)
    fingerprint = {"backbone": backbone, "embedding_size": size, "preprocess": preprocess,
                   "weights_sha256": digest}
    return _Loaded(net, preprocess, thresholds, fingerprint)


def _parse_thresholds(text: str | None, path: Path) -> dict:
    if not text:
        return {}
    try:
        thresholds = json.loads(text)
    except json.JSONDecodeError as e:
        raise FacelabError(f"{path}: metadata field 'thresholds' is not JSON ({e.msg})") from None
    if not isinstance(thresholds, dict):
        raise FacelabError(f"{path}: metadata field 'thresholds' must be a JSON object")
    return thresholds


def _pick_threshold(stored: dict, threshold: float | None, threshold_set: str | None,
                    source: str) -> tuple[float | None, str | None]:
    """(threshold, the validation set it comes from or None when given)."""
    if threshold is not None:
        if threshold_set is not None:
            raise FacelabError("give a threshold or a threshold set, not both")
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
                and 0 <= threshold <= 4):
            raise FacelabError(f"threshold must be a squared L2 distance in [0, 4] (2 - 2 cos), "
                               f"got {threshold!r}")
        return float(threshold), None
    if threshold_set is not None and threshold_set not in stored:
        raise FacelabError(f"{source}: no stored threshold for validation set {threshold_set!r}; "
                           f"stored: {sorted(stored) or 'none'}")
    name = threshold_set if threshold_set is not None else next(iter(stored), None)
    if name is None:
        return None, None
    try:
        value = float(stored[name][RULE]["threshold"])
    except (KeyError, TypeError, ValueError):
        raise FacelabError(f"{source}: stored thresholds of {name!r} have no "
                           f"{RULE}.threshold") from None
    return value, name
