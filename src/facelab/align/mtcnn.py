"""MTCNN face detector with 5 landmarks (Zhang et al. 2016, "Joint Face Detection and Alignment
using Multi-task Cascaded Convolutional Networks", IEEE SPL 23(10)).

Three networks run as a cascade: P-Net (fully convolutional, 12×12 receptive field, stride 2)
proposes boxes on an image pyramid; R-Net (24×24 crops) rejects and refines them; O-Net (48×48
crops) refines them again and outputs the 5 landmarks. Each stage: face probability threshold, box
regression (offsets in units of box size), non-maximum suppression, squaring of the boxes.

The network definitions are facelab's own; the weights are the original MTCNN weights as shipped in
the `facenet-pytorch` wheel (plain state dicts, loaded with weights_only=True; the package itself is
never imported). In that conversion the images go in untransposed (RGB, [N, 3, H, W]) and the dense
layers read the flattened features in (W, H, C) order (a trace of the original Caffe/Matlab layout).
Checked on real photos: swapping x and y, or flattening in (C, H, W) order, breaks the detections
and landmarks.

Resizing (pyramid and crops) averages over areas, in float; crops reaching outside the image are
padded with black, as in the original code.
"""

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from facelab.errors import FacelabError

WEIGHTS_PACKAGE = "facenet_pytorch"
INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0"
THRESHOLDS = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net face probability
NMS_IOU = (0.5, 0.7, 0.7, 0.7)  # P-Net per scale, P-Net all scales, R-Net, O-Net (min-area mode)
MIN_FACE = 20  # pixels
FACTOR = 0.709  # pyramid scale step (≈ 1/sqrt(2))


# ---------------------------------------------------------------- networks


def _flatten_whc(x: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, W*H*C] in the order the converted weights expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net: 12×12 window -> face probability and 4 box offsets, at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets dx1, dy1, dx2, dy2

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 3, H, W] normalised -> (prob [N, h, w], offsets [N, 4, h, w]),
        h = ceil((H - 2) / 2) - 4."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))  # [N, 32, h, w]
        return self.conv4_1(x).softmax(1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refine net: 24×24 crop -> face probability and 4 box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 3, 24, 24] -> (prob [N], offsets [N, 4])."""
        x = self.pool1(self.prelu1(self.conv1(x)))  # [N, 28, 11, 11]
        x = self.pool2(self.prelu2(self.conv2(x)))  # [N, 48, 4, 4]
        x = self.prelu3(self.conv3(x))  # [N, 64, 3, 3]
        x = self.prelu4(self.dense4(_flatten_whc(x)))  # [N, 128]
        return self.dense5_1(x).softmax(1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net: 48×48 crop -> face probability, 4 box offsets, 5 landmarks (x1..x5, y1..y5 in
    box units)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [N, 3, 48, 48] -> (prob [N], offsets [N, 4], landmarks [N, 10])."""
        x = self.pool1(self.prelu1(self.conv1(x)))  # [N, 32, 23, 23]
        x = self.pool2(self.prelu2(self.conv2(x)))  # [N, 64, 10, 10]
        x = self.pool3(self.prelu3(self.conv3(x)))  # [N, 64, 4, 4]
        x = self.prelu4(self.conv4(x))  # [N, 128, 3, 3]
        x = self.prelu5(self.dense5(_flatten_whc(x)))  # [N, 256]
        return self.dense6_1(x).softmax(1)[:, 1], self.dense6_2(x), self.dense6_3(x)


NETS: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def weights_dir() -> Path:
    """Folder holding pnet.pt, rnet.pt, onet.pt inside the installed facenet-pytorch (not
    imported)."""
    # a top-level package: find_spec locates it without executing it
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FacelabError(f"the MTCNN detector needs the weights package: run `{INSTALL_HINT}`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [n for n in NETS if not (folder / f"{n}.pt").is_file()]
    if missing:
        raise FacelabError(f"{folder}: MTCNN weights {missing} missing; reinstall with "
                           f"`{INSTALL_HINT}`")
    return folder


@lru_cache(maxsize=1)
def load_nets() -> tuple[PNet, RNet, ONet]:
    """The three networks with the pretrained weights, in eval mode (cached per process)."""
    folder = weights_dir()
    nets = []
    for name, cls in NETS.items():
        net = cls()
        state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        nets.append(net.eval().requires_grad_(False))
    return tuple(nets)  # type: ignore[return-value]


# ---------------------------------------------------------------- box utilities
# (numpy, [N, 4] x1 y1 x2 y2)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, by decreasing score.

    Overlap = intersection / union ("union") or intersection / smaller area ("min", used after
    O-Net). A box is dropped when its overlap with an already kept box is > `iou`.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)  # [N]
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])  # [R, 2]
        hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])  # [R, 2]
        inter = (hi - lo).clip(0).prod(1)  # [R]
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        overlap = inter / np.maximum(denom, 1e-12)
        order = rest[overlap <= iou]
    return np.array(keep, dtype=np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply box regression: each corner moves by its offset × box width/height.
    [N, 4], [N, 4] -> [N, 4]."""
    size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)  # [N, 4] w, h, w, h
    return boxes + offsets * size


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square of side max(w, h) around the same centre. [N, 4] -> [N, 4]."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdims=True) / 2  # [N, 1]
    return np.hstack([centre - half, centre + half])


def crops(image: np.ndarray, boxes: np.ndarray, size: int) -> Tensor:
    """Cut each box (rounded to whole pixels, zero outside the image, as in the paper's code) and
    resize by area averaging: RGB uint8 [H, W, 3], [N, 4] -> normalised [N, 3, size, size].

    Boxes of one pixel size are resized together, one call per size: a photo gives hundreds of
    candidate boxes in a few dozen sizes, and the per-call cost dominated the resize."""
    h, w = image.shape[:2]
    rounded = np.round(boxes).astype(np.int64)  # [N, 4]
    out = torch.empty(len(boxes), 3, size, size)
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, (x1, y1, x2, y2) in enumerate(rounded):
        by_size.setdefault((int(y2 - y1), int(x2 - x1)), []).append(k)
    for (ph, pw), members in by_size.items():
        patches = np.zeros((len(members), ph, pw, 3), dtype=np.uint8)  # [n, ph, pw, 3]
        for patch, (x1, y1, x2, y2) in zip(patches, rounded[members], strict=True):
            sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            if sx2 > sx1 and sy2 > sy1:
                patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
        out[members] = resize(to_tensor(patches), size, size)
    return out


def resize(x: Tensor, h: int, w: int) -> Tensor:
    """Area-averaging resize of [N, C, H', W'] to [N, C, h, w] (kept in float, no
    re-quantisation)."""
    return F.interpolate(x, size=(h, w), mode="area")


def to_tensor(images: np.ndarray) -> Tensor:
    """RGB uint8 [N, H, W, 3] -> [N, 3, H, W] float in about [-1, 1] ((x - 127.5) / 128, as
    trained)."""
    if not images.flags.writeable:  # torch warns on (and may not share) read-only memory
        images = images.copy()
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.5) / 128.0


# ---------------------------------------------------------------- the cascade


def pyramid_scales(h: int, w: int, min_face: float = MIN_FACE,
                   factor: float = FACTOR) -> list[float]:
    """Scales s = (12 / min_face)·factor^k at which the 12-px P-Net window covers faces of
    min_face/factor^k px, down to the scale where the shorter image side is 12 px."""
    scale, scales = 12.0 / min_face, []
    while min(h, w) * scale >= 12:
        scales.append(scale)
        scale *= factor
    return scales


def _candidates(rows: list[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate(rows) if rows else np.zeros((0, width))


def propose(image: np.ndarray, pnet: PNet, threshold: float, min_face: float,
            factor: float) -> np.ndarray:
    """Stage 1: P-Net on every pyramid level -> square candidate boxes [N, 5]
    (x1, y1, x2, y2, score)."""
    h, w = image.shape[:2]
    full, rows = to_tensor(image[None]), []  # [1, 3, H, W]
    for s in pyramid_scales(h, w, min_face, factor):
        # [1, h', w'], [1, 4, h', w']
        prob, off = pnet(resize(full, int(np.ceil(h * s)), int(np.ceil(w * s))))
        prob, off = prob[0].numpy(), off[0].numpy()
        ys, xs = np.nonzero(prob >= threshold)
        # the output cell (y, x) sees the 12×12 window at (2x, 2y) of the scaled image
        boxes = (np.stack([xs, ys, xs, ys], 1) * 2.0 + [0, 0, 12, 12]) / s  # [K, 4] original pixels
        # [K, 9] box, score, offsets
        cand = np.hstack([boxes, prob[ys, xs, None], off[:, ys, xs].T])
        rows.append(cand[nms(cand[:, :4], cand[:, 4], NMS_IOU[0])])
    cand = _candidates(rows, 9)
    cand = cand[nms(cand[:, :4], cand[:, 4], NMS_IOU[1])]
    return np.hstack([np.round(square(regress(cand[:, :4], cand[:, 5:9]))), cand[:, 4:5]])


def _valid(cand: np.ndarray) -> np.ndarray:
    return cand[((cand[:, 2] - cand[:, 0]) >= 1) & ((cand[:, 3] - cand[:, 1]) >= 1)]


def refine(image: np.ndarray, cand: np.ndarray, rnet: RNet, threshold: float) -> np.ndarray:
    """Stage 2: R-Net on 24×24 crops -> kept, regressed, square boxes [M, 5]."""
    cand = _valid(cand)
    if not len(cand):
        return cand
    prob, off = (t.numpy() for t in rnet(crops(image, cand[:, :4], 24)))  # [N], [N, 4]
    keep = prob >= threshold
    boxes, prob, off = cand[keep, :4], prob[keep], off[keep]
    order = nms(boxes, prob, NMS_IOU[2])
    boxes = np.round(square(regress(boxes[order], off[order])))
    return np.hstack([boxes, prob[order, None]])


def output(
    image: np.ndarray, cand: np.ndarray, onet: ONet, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 3: O-Net on 48×48 crops -> boxes [F, 4], scores [F], landmarks [F, 5, 2] (image
    pixels)."""
    cand = _valid(cand)
    if not len(cand):
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    prob, off, marks = (t.numpy().astype(np.float64) for t in onet(crops(image, cand[:, :4], 48)))
    keep = prob >= threshold
    boxes, prob, off, marks = cand[keep, :4], prob[keep], off[keep], marks[keep]
    size = boxes[:, 2:] - boxes[:, :2]  # [F, 2] w, h
    marks_xy = np.stack([marks[:, :5], marks[:, 5:]], 2)  # [F, 5, 2] in box units
    points = boxes[:, None, :2] + marks_xy * size[:, None]  # [F, 5, 2]
    boxes = regress(boxes, off)
    order = nms(boxes, prob, NMS_IOU[3], mode="min")
    return boxes[order], prob[order], points[order]


@torch.inference_mode()
def cascade(
    image: np.ndarray,
    thresholds: tuple[float, float, float] = THRESHOLDS,
    min_face: float = MIN_FACE,
    factor: float = FACTOR,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 [H, W, 3] -> boxes [F, 4] (x1, y1, x2, y2), scores [F], landmarks [F, 5, 2],
    best first.

    Landmarks: left eye, right eye, nose tip, left and right mouth corner (left = smaller x in the
    image).
    """
    pnet, rnet, onet = load_nets()
    cand = propose(image, pnet, thresholds[0], min_face, factor)
    cand = refine(image, cand, rnet, thresholds[1])
    return output(image, cand, onet, thresholds[2])
