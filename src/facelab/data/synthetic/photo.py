"""Render one synthetic photo: identity x nuisance -> RGB frame and 5 landmarks.

Pipeline: background clutter and clothes -> head quadrics cast per pixel into a depth buffer
(geometry.py), painted with the albedo map (facemap.py) and shaded (ambient + Lambert + a little
specular, coloured light; the neck stays under the clothes) -> image-space occluder (bar, hand) ->
optical blur -> down-sampling to the target face resolution and back -> sensor noise. `encode_jpeg`
stores the photo at its own `nuisance.jpeg` quality (the writers call it: dataset.py, pairs.py,
multi.py).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from facelab.data.synthetic import facemap
from facelab.data.synthetic.geometry import (
    Part,
    bbox,
    cast,
    hair_allowed,
    head_parts,
    landmarks_3d,
    normals,
    points,
    rotation,
)
from facelab.data.synthetic.identity import Identity
from facelab.data.synthetic.nuisance import FRAME, Nuisance
from facelab.errors import FacelabError

_PSF = 0.5  # optical blur every photo has (pixels), also hides the aliasing of the cast silhouettes


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient plus random rectangles, discs, bars and triangles, maybe out of focus.
    [size, size, 3] uint8"""
    # two colours, vertical or horizontal ramp
    ends = rng.integers(0, 256, (2, 1, 3)).astype(np.uint8)
    if rng.random() < 0.5:
        ends = ends.transpose(1, 0, 2)
    img = cv2.resize(ends, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(3, 13))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(-20, size + 20, 2))
        kind = rng.integers(4)
        if kind == 0:
            w, h = (int(v) for v in rng.integers(8, 80, 2))
            cv2.rectangle(img, (x, y), (x + w, y + h), col, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(4, 40)), col, -1, cv2.LINE_AA)
        elif kind == 2:
            x2, y2 = (int(v) for v in rng.integers(-20, size + 20, 2))
            cv2.line(img, (x, y), (x2, y2), col, int(rng.integers(1, 10)), cv2.LINE_AA)
        else:
            pts = (np.array([x, y]) + rng.integers(-40, 40, (3, 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], col, cv2.LINE_AA)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 3.0)))
    return img


def _light_dir(n: Nuisance) -> np.ndarray:
    """Unit vector towards the light in camera coordinates (y down: positive elevation = from
    above)."""
    ce = math.cos(n.light_el)
    return np.array([math.sin(n.light_az) * ce, -math.sin(n.light_el), math.cos(n.light_az) * ce],
                    np.float32)


_KINDS = ("map", "ear", "neck", "hair")
_SPEC = np.array([0.07, 0.07, 0.05, 0.10], np.float32)


def _albedo(span: dict[int, slice], p: np.ndarray, ident: Identity, fmap: np.ndarray) -> np.ndarray:
    """Albedo in [0, 1] at head points p [3, N], whose parts of kind k occupy p[:, span[k]].
    [N, 3]"""
    alb = np.empty((p.shape[1], 3), np.float32)
    x, y, z = p[:, span[0]]
    if len(x):
        mx, my = facemap.to_map(x, y)
        a = cv2.remap(fmap, mx[:, None].astype(np.float32), my[:, None].astype(np.float32),
                      cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
                      ).reshape(-1, 3).astype(np.float32) * (1 / 255.0)
        if ident.hair_style != "bald":  # back of the head
            a[(z < 0) & (y < ident.ear_y + 0.1)] = ident.hair
        alb[span[0]] = a
    skin = np.asarray(ident.skin, np.float32)
    alb[span[1]] = skin * 0.9
    alb[span[2]] = skin * 0.82
    x, y, z = p[:, span[3]]
    if len(x):
        phase = (ident.texture_seed % 997) / 997 * 6.28
        ang = np.arctan2(x, z)
        strands = 1 + 0.13 * np.sin(ang * 37 + y * 3 + phase) * np.sin(ang * 11 + phase)
        alb[span[3]] = np.asarray(ident.hair, np.float32) * strands[:, None]
    return alb


def _zmerge(depth: np.ndarray, winner: np.ndarray, box: tuple[int, int, int, int], t: np.ndarray,
            k: int) -> None:
    x0, y0, x1, y1 = box
    d = depth[y0:y1, x0:x1]
    np.copyto(winner[y0:y1, x0:x1], k, where=t > d)
    np.maximum(d, t, out=d)


def _carve(ident: Identity, R: np.ndarray, n: Nuisance, box, t: np.ndarray,
           skip: np.ndarray | None) -> None:
    """Remove (set -inf) the hair-volume hits that lie outside the hair style's extent, in place."""
    sel = np.isfinite(t) if skip is None else np.isfinite(t) & ~skip
    rows, cols = np.nonzero(sel)
    s = n.face_px / 2
    X = ((cols + box[0] - n.cx) / s).astype(np.float32)
    Y = ((rows + box[1] - n.cy) / s).astype(np.float32)
    ok = hair_allowed(ident, *points(R, X, Y, t[rows, cols]))
    t[~sel] = -np.inf
    t[rows[~ok], cols[~ok]] = -np.inf


def _cast_all(ident: Identity, n: Nuisance, R: np.ndarray, size: int):
    """Cast every part into a depth buffer: (layers [(part, inward)], depth [H, W], winner [H, W],
    -1 = none)."""
    s = n.face_px / 2
    depth = np.full((size, size), -np.inf, np.float32)
    winner = np.full((size, size), -1, np.int16)
    layers: list[tuple[Part, bool]] = []
    # _paint relies on this order
    for part in sorted(head_parts(ident), key=lambda q: _KINDS.index(q.kind)):
        box = bbox(part, R, s, n.cx, n.cy, size)
        if box is None:
            continue
        if part.kind != "hair":
            _zmerge(depth, winner, box, cast(part, R, s, n.cx, n.cy, box)[0], len(layers))
            layers.append((part, False))
            continue
        # where the front is carved, the inside shows
        front, back = cast(part, R, s, n.cx, n.cy, box, back=True)
        _carve(ident, R, n, box, front, None)
        _carve(ident, R, n, box, back, np.isfinite(front))
        for t, inward in ((front, False), (back, True)):
            _zmerge(depth, winner, box, t, len(layers))
            layers.append((part, inward))
    return layers, depth, winner


def _paint(ident: Identity, n: Nuisance, R: np.ndarray, layers, depth: np.ndarray,
           winner: np.ndarray, fmap: np.ndarray, img: np.ndarray, under: np.ndarray) -> np.ndarray:
    """Shade every visible pixel into img (uint8 [H, W, 3], in place), except neck pixels where
    `under` is set.

    Pixels are sorted by winning layer; layers come in _KINDS order, so every layer and every kind
    is a contiguous slice. Returns the kind index per pixel ([H, W] int8, -1 = background).
    """
    rows, cols = np.nonzero(winner >= 0)
    w = winner[rows, cols]
    order = np.argsort(w, kind="stable")
    rows, cols, w = rows[order], cols[order], w[order]
    s = n.face_px / 2
    X, Y = ((cols - n.cx) / s).astype(np.float32), ((rows - n.cy) / s).astype(np.float32)
    p = points(R, X, Y, depth[rows, cols])  # [3, N]
    nrm = np.empty_like(p)
    cuts = np.searchsorted(w, np.arange(len(layers) + 1))
    for k, (part, inward) in enumerate(layers):
        if cuts[k + 1] > cuts[k]:
            nrm[:, cuts[k]:cuts[k + 1]] = normals(part, R, p[:, cuts[k]:cuts[k + 1]], inward)
    kind_of = np.array([_KINDS.index(part.kind) for part, _ in layers], np.int8)
    kind = kind_of[w]
    kc = np.searchsorted(kind, np.arange(len(_KINDS) + 1))
    span = {k: slice(kc[k], kc[k + 1]) for k in range(len(_KINDS))}
    L = _light_dir(n)
    diff = (n.ambient + n.light * np.maximum(L @ nrm, 0)) * (0.72 + 0.28 * np.clip(nrm[2], 0, 1))
    hv = L + np.array([0.0, 0.0, 1.0], np.float32)
    spec = _SPEC[kind] * n.light * np.maximum((hv / np.linalg.norm(hv)) @ nrm, 0) ** 24
    col = (_albedo(span, p, ident, fmap) * (diff[:, None] * np.asarray(n.light_rgb, np.float32))
           + spec[:, None])
    keep = np.ones(len(w), bool)
    keep[span[2]] = ~under[rows[span[2]], cols[span[2]]]
    img[rows[keep], cols[keep]] = (np.clip(col[keep], 0, 1) * 255).astype(np.uint8)
    kinds = np.full(winner.shape, -1, np.int8)
    kinds[rows, cols] = kind
    return kinds


def _clothes(img: np.ndarray, rng: np.random.Generator, n: Nuisance, R: np.ndarray) -> np.ndarray:
    """Shoulders: an ellipse under the neck in a random colour (uint8 RGB, in place). Returns its
    mask."""
    s = n.face_px / 2
    base = R @ np.array([0.0, 2.0, -0.2])
    centre = (int(n.cx + s * base[0]), int(n.cy + s * base[1] + 0.9 * s))
    axes = (int(s * rng.uniform(1.9, 2.6)), int(s * rng.uniform(1.0, 1.4)))
    col = tuple(int(v) for v in rng.integers(10, 240, 3))
    ang = float(np.degrees(n.roll) * 0.5)
    cv2.ellipse(img, centre, axes, ang, 0, 360, col, -1, cv2.LINE_AA)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(mask, centre, axes, ang, 0, 360, 1, -1)
    return mask.astype(bool)


def _occluder(img: np.ndarray, rng: np.random.Generator, n: Nuisance, kind: str) -> np.ndarray:
    """Draw a bar or a hand over the face (uint8 RGB in place); returns its mask."""
    s, size = n.face_px / 2, img.shape[0]
    mask = np.zeros(img.shape[:2], np.uint8)
    sh = 4
    f = 1 << sh
    if kind == "bar":
        ang = rng.uniform(0, math.pi)
        cx, cy = n.cx + rng.uniform(-0.5, 0.5) * s, n.cy + rng.uniform(-0.4, 0.9) * s
        d = np.array([math.cos(ang), math.sin(ang)]) * size
        p0, p1 = np.array([cx, cy]) - d, np.array([cx, cy]) + d
        cv2.line(mask, tuple(int(v * f) for v in p0), tuple(int(v * f) for v in p1), 255,
                 int(rng.uniform(0.3, 0.6) * s), cv2.LINE_AA, sh)
        col = rng.uniform(0, 255, 3)
    else:
        skin = np.array([0.9, 0.68, 0.52]) * rng.uniform(0.35, 1.05)
        col = np.clip(skin * 255, 0, 255)
        side = rng.choice([-1, 1])
        px, py = n.cx + side * rng.uniform(0.2, 0.9) * s, n.cy + rng.uniform(0.5, 1.4) * s
        cv2.ellipse(mask, (int(px * f), int(py * f)), (int(0.55 * s * f), int(0.65 * s * f)), 0,
                    0, 360, 255, -1, cv2.LINE_AA, sh)
        for k in range(4):
            a = -math.pi / 2 + side * (k - 1.5) * 0.28 + rng.normal(0, 0.05)
            tip = (px + math.cos(a) * 1.3 * s, py + math.sin(a) * 1.3 * s)
            cv2.line(mask, (int(px * f), int(py * f)), (int(tip[0] * f), int(tip[1] * f)), 255,
                     max(1, int(0.22 * s)), cv2.LINE_AA, sh)
    a = (mask.astype(np.float32) / 255.0)[..., None]
    shade = 0.75 + 0.25 * np.linspace(1, 0, img.shape[0], dtype=np.float32)[:, None, None]
    img[:] = (img * (1 - a) + col.astype(np.float32) * shade * a).astype(np.uint8)
    return mask


_NOISE: list[np.ndarray] = []


def _noise_bank() -> np.ndarray:
    """A fixed field of unit Gaussian noise; photos take random crops of it (cheaper than drawing
    anew)."""
    if not _NOISE:
        rng = np.random.default_rng(12345)
        _NOISE.append(rng.standard_normal((2 * FRAME, 2 * FRAME, 3), dtype=np.float32))
    return _NOISE[0]


def _degrade(img: np.ndarray, n: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Optical blur, down-sampling to the target face resolution and back up, sensor noise."""
    img = cv2.GaussianBlur(img, (0, 0), math.sqrt(_PSF**2 + n.blur**2))
    size = img.shape[0]
    if n.resolution < n.face_px * 0.98:
        small = max(4, int(round(size * n.resolution / n.face_px)))
        small_img = cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small_img, (size, size), interpolation=cv2.INTER_LINEAR)
    if n.noise > 0:
        bank = _noise_bank()
        oy, ox = (int(v) for v in rng.integers(0, bank.shape[0] - size, 2))
        noise = bank[oy:oy + size, ox:ox + size] * n.noise
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return img


def _map_occlusion(ident: Identity, n: Nuisance, R: np.ndarray, depth: np.ndarray,
                   kinds: np.ndarray) -> float:
    """Fraction of the visible face (albedo-map parts and ears) covered by a mask or sunglasses."""
    face = (kinds == 0) | (kinds == 1)
    rows, cols = np.nonzero(kinds == 0)
    if not face.any():
        return 0.0
    s = n.face_px / 2
    p = points(R, ((cols - n.cx) / s).astype(np.float32), ((rows - n.cy) / s).astype(np.float32),
               depth[rows, cols])
    mx, my = facemap.to_map(p[0], p[1])
    cover = facemap.occluder_map(ident, n.occlusion)
    hit = cover[np.clip(np.round(my).astype(int), 0, cover.shape[0] - 1),
                np.clip(np.round(mx).astype(int), 0, cover.shape[1] - 1)] > 127
    return float(hit.sum() / face.sum())


def project(ident: Identity, n: Nuisance) -> np.ndarray:
    """The 5 landmarks in frame pixels (left eye, right eye, nose tip, left/right mouth corner).
    [5, 2]"""
    R = rotation(n.yaw, n.pitch, n.roll)
    pc = landmarks_3d(ident, n.smile) @ R.T
    return np.column_stack([n.cx + n.face_px / 2 * pc[:, 0], n.cy + n.face_px / 2 * pc[:, 1]])


def render(ident: Identity, n: Nuisance) -> tuple[np.ndarray, np.ndarray, float]:
    """(RGB uint8 photo [FRAME, FRAME, 3], landmarks [5, 2] in pixels, occluded fraction of the
    face)."""
    rng, size = np.random.default_rng(n.detail_seed), FRAME
    R = rotation(n.yaw, n.pitch, n.roll)
    fmap = facemap.photo_map(ident, n.smile, n.mouth_open, n.eyes_closed, (n.gaze_x, n.gaze_y),
                             n.occlusion, rng)
    img = _background(rng, size)
    under = _clothes(img, rng, n, R)
    layers, depth, winner = _cast_all(ident, n, R, size)
    kinds = _paint(ident, n, R, layers, depth, winner, fmap, img, under)
    occ = 0.0
    if n.occlusion in ("bar", "hand"):
        face = (kinds == 0) | (kinds == 1)
        m = _occluder(img, rng, n, n.occlusion)
        occ = float((m[face] > 127).mean()) if face.any() else 0.0
    elif n.occlusion in ("mask", "sunglasses"):
        occ = _map_occlusion(ident, n, R, depth, kinds)
    return _degrade(img, n, rng), project(ident, n), occ


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 [H, W, 3] -> JPEG bytes (cv2 wants BGR)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise FacelabError(f"cannot encode a synthetic photo of shape {image.shape} as JPEG")
    return buf.tobytes()
