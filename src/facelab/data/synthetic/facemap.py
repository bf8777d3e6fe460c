"""Albedo map of a synthetic face in face coordinates (the texture the 3-D head is painted with).

The map is the frontal orthographic view of the head's albedo: map pixel (i, j) holds the colour of
the surface point whose head coordinates are x = X0 + (j + 0.5) H, y = Y0 + (i + 0.5) H. Features
drawn here (eyes, brows, lips, hair line, beard, glasses, marks, fine texture) therefore stay fixed
on the face and move with it under any pose. The identity part is drawn once and cached; the
expression, glasses and map-space occluders (mask, sunglasses) are drawn per photo on a copy.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from facelab.data.synthetic.identity import Identity

X0, Y0, H = -1.1, -1.5, 2.2 / 128  # head units of the map's left/top edge and of one pixel
MAP_W, MAP_H = 128, 180
_SHIFT = 4
_AA = cv2.LINE_AA


def to_map(x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Head coordinates -> map pixel coordinates (cv2 convention: pixel centres at integers)."""
    return (np.asarray(x) - X0) / H - 0.5, (np.asarray(y) - Y0) / H - 0.5


def _pts(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    mx, my = to_map(x, y)
    return np.round(np.stack([mx, my], -1) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _c(rgb, k: float = 1.0) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(255 * v * k))) for v in rgb)  # type: ignore[return-value]


def _poly(img: np.ndarray, x: np.ndarray, y: np.ndarray, col) -> None:
    cv2.fillPoly(img, [_pts(x, y)], col, _AA, _SHIFT)


def _line(img: np.ndarray, x: np.ndarray, y: np.ndarray, col, width: float) -> None:
    cv2.polylines(img, [_pts(x, y)], False, col, max(1, int(round(width / H))), _AA, _SHIFT)


def _ellipse(img: np.ndarray, x: float, y: float, rx: float, ry: float, col, angle: float = 0.0,
             thick: float = -1) -> None:
    (mx, my), s = to_map(x, y), 1 << _SHIFT
    t = -1 if thick < 0 else max(1, int(round(thick / H)))
    cv2.ellipse(img, (int(mx * s), int(my * s)), (max(1, int(rx / H * s)), max(1, int(ry / H * s))),
                float(np.degrees(angle)), 0, 360, col, t, _AA, _SHIFT)


def _blend(img: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None]
    return (img * (1 - a) + layer * a).astype(np.uint8)


def _soft(draw, sigma: float) -> np.ndarray:
    """A blurred single-channel alpha drawn by `draw(mask)` (mask uint8, 255 = on)."""
    m = np.zeros((MAP_H, MAP_W), np.uint8)
    draw(m)
    return cv2.GaussianBlur(m, (0, 0), sigma / H).astype(np.float32) / 255.0


def _texture(ident: Identity) -> np.ndarray:
    """Low-amplitude identity texture: smooth blotches at two scales plus faint spots.
    [MAP_H, MAP_W]"""
    rng = np.random.default_rng(ident.texture_seed)
    f = np.zeros((MAP_H, MAP_W), np.float32)
    for (gh, gw), amp in (((9, 7), 0.07), ((26, 19), 0.05)):
        f += amp * cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (MAP_W, MAP_H),
                              interpolation=cv2.INTER_CUBIC)
    spots = np.zeros((MAP_H, MAP_W), np.uint8)
    n = 25 + int(160 * ident.freckles)
    for x, y, r in zip(rng.uniform(-0.9, 0.9, n), rng.uniform(-0.5, 1.2, n),
                       rng.uniform(0.008, 0.022, n), strict=True):
        _ellipse(spots, x, y, r, r, int(rng.uniform(80, 255)))
    f -= (0.10 + 0.25 * ident.freckles) * spots.astype(np.float32) / 255.0
    return 1.0 + ident.texture_amp * f


def _brow(img: np.ndarray, ident: Identity, side: int, col) -> None:
    L = ident.eye_w * ident.brow_len
    t = np.linspace(-1, 1, 15)
    xc, yc = side * ident.eye_x, ident.eye_y - ident.brow_gap
    x = xc + side * L * t
    y = yc - ident.brow_arch * (1 - t**2) - ident.brow_tilt * L * t * 0.5
    th = ident.brow_thick * (1.15 - 0.45 * (t + 1) / 2)
    _poly(img, np.concatenate([x, x[::-1]]), np.concatenate([y - th / 2, (y + th / 2)[::-1]]), col)


def _hair_cap(img: np.ndarray, ident: Identity) -> None:
    style = ident.hair_style
    if style == "bald":
        return
    x = np.linspace(-1.1, 1.1, 41)
    fringe = 0.22 if style in ("bob", "long") and ident.hair_part == 0 else 0.0
    line = ident.hairline + fringe + 0.55 * np.clip(np.abs(x) - 0.45, 0, None) ** 2 * 2
    side = np.abs(x) > 0.86
    line = np.where(side, np.maximum(line, ident.ear_y - 0.1), line)
    cap = np.zeros_like(img)
    _poly(cap, np.concatenate([x, [1.1, -1.1]]), np.concatenate([line, [Y0, Y0]]), _c(ident.hair))
    mask = cap.any(-1).astype(np.float32) * (0.55 if style == "buzz" else 1.0)
    if ident.hair_part != 0:
        xp = 0.38 * ident.hair_part
        _line(cap, np.array([xp, xp * 0.9]), np.array([Y0, ident.hairline + 0.05]),
              _c(ident.skin, 0.9), 0.02)
    rng = np.random.default_rng(ident.texture_seed + 1)
    for _ in range(40):  # strands
        x0 = rng.uniform(-1.0, 1.0)
        _line(cap, np.array([x0, x0 * 1.1]), np.array([Y0, ident.hairline + 0.1]),
              _c(ident.hair, rng.uniform(0.75, 1.3)), 0.015)
    img[:] = _blend(img, cap, mask)


def _beard_alpha(ident: Identity) -> np.ndarray:
    b, mw, my, ny = ident.beard, ident.mouth_w, ident.mouth_y, ident.nose_y
    if b == "none":
        return np.zeros((MAP_H, MAP_W), np.float32)

    def draw(m: np.ndarray) -> None:
        if b in ("stubble", "full"):
            x = np.linspace(-1.0, 1.0, 31)
            _poly(m, np.concatenate([x, x[::-1]]),
                  np.concatenate([np.full_like(x, ny + 0.12) + 0.25 * np.abs(x),
                                  np.full_like(x, 1.7)]), 255)
        if b in ("moustache", "goatee", "full"):
            _ellipse(m, 0, my - ident.lip_up - 0.05, mw * 1.05, 0.055, 255)
        if b == "goatee":
            _ellipse(m, 0, my + 0.30, mw * 0.75, 0.26, 255)
        if b in ("stubble", "full"):  # keep the lips clear
            _ellipse(m, 0, my + 0.01, mw * 0.95, ident.lip_lo + 0.02, 0)

    a = _soft(draw, 0.02)
    dens = {"stubble": 0.35, "full": 0.95, "moustache": 0.9, "goatee": 0.9}[b]
    grain = np.random.default_rng(ident.texture_seed + 2).random((MAP_H, MAP_W)).astype(np.float32)
    return a * dens * (0.75 + 0.25 * grain)


def _beard_rows(alpha: np.ndarray) -> slice:
    rows = np.nonzero(alpha.max(1) > 0.01)[0]
    return slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)


@lru_cache(maxsize=32)
def identity_map(ident: Identity) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [MAP_H, MAP_W, 3] albedo without eyes/lips/glasses, beard alpha float32
    [MAP_H, MAP_W])."""
    skin = np.asarray(ident.skin, np.float32)
    img = np.empty((MAP_H, MAP_W, 3), np.float32)
    img[:] = skin * 255
    shade = 1.0 - 0.14 * _soft(
        lambda m: [_ellipse(m, s * ident.eye_x, ident.eye_y - 0.02, ident.eye_w * 1.3,
                            ident.eye_w * 0.75, 255) for s in (-1, 1)], 0.06)
    blush = ident.blush * 0.16 * _soft(
        lambda m: [_ellipse(m, s * 0.5, ident.nose_y, 0.18, 0.12, 255) for s in (-1, 1)], 0.08)
    img *= (_texture(ident) * shade)[..., None]
    img[..., 1:] *= (1 - blush)[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    dark = _c(ident.skin, 0.72)
    if ident.wrinkles > 0.2:
        for k in range(3):
            x = np.linspace(-0.45, 0.45, 9)
            _line(img, x, ident.hairline + 0.2 + 0.1 * k + 0.03 * np.cos(3 * x), dark, 0.012)
        for s in (-1, 1):
            _line(img, s * np.array([ident.ala_w + 0.03, ident.mouth_w + 0.08]),
                  np.array([ident.nose_y + 0.05, ident.mouth_y + 0.1]), dark, 0.012)
    for x, y, r in ident.moles:
        _ellipse(img, x, y, r, r, _c((0.30, 0.19, 0.13)))
    brow = _c(ident.hair, 0.8 if ident.hair_style != "bald" else 0.5)
    for s in (-1, 1):
        _brow(img, ident, s, brow)
    _hair_cap(img, ident)
    # nostrils, seen from the front just under the nose tip
    for s in (-1, 1):
        _ellipse(img, s * ident.nose_r * 0.55, ident.nose_y + ident.nose_r * 0.55,
                 ident.nose_r * 0.4, ident.nose_r * 0.18, _c(ident.skin, 0.35), 0.3 * s)
    return img, _beard_alpha(ident)


def _eye(img: np.ndarray, ident: Identity, side: int, smile: float, closed: float,
         gaze: tuple[float, float]):
    w = ident.eye_w
    h = ident.eye_h * w * (1 - 0.3 * smile)
    t = np.linspace(-1, 1, 17)
    x = side * ident.eye_x + side * w * t
    tilt = -ident.eye_tilt * w * t  # outer corner (t=1) higher for positive tilt
    yc = ident.eye_y + tilt
    upper, lower = yc - h * (1 - t**2) ** 0.7, yc + 0.75 * h * (1 - t**2) ** 0.8
    lash = _c(ident.hair, 0.4)
    if closed >= 0.5:
        _line(img, x, lower - 0.2 * h, lash, 0.014)
        return
    mx, my = to_map(x, np.concatenate([upper, lower]))
    x0, x1 = int(mx.min()) - 2, int(mx.max()) + 3
    y0, y1 = int(my.min()) - 2, int(my.max()) + 3
    patch = img[y0:y1, x0:x1]
    eye = patch.copy()
    eye[:] = _c((0.93, 0.91, 0.88))
    off = -np.array([x0, y0], np.float32) * H
    ix, iy = side * ident.eye_x + gaze[0] * w * 0.5, ident.eye_y + gaze[1] * h * 0.5
    r = ident.iris_r * w
    _ellipse(eye, ix + off[0], iy + off[1], r, r, _c(ident.iris))
    _ellipse(eye, ix + off[0], iy + off[1], r * 0.42, r * 0.42, _c((0.03, 0.03, 0.03)))
    mask = np.zeros(patch.shape[:2], np.uint8)
    _poly(mask, np.concatenate([x, x[::-1]]) + off[0],
          np.concatenate([upper, lower[::-1]]) + off[1], 255)
    patch[:] = _blend(patch, eye, mask / 255.0)
    _line(img, x, upper, lash, 0.018)
    _line(img, x, upper - 0.35 * h - 0.02, _c(ident.skin, 0.78), 0.01)  # lid crease


def mouth_corners(ident: Identity, smile: float) -> tuple[float, float]:
    """(half-width, y) of the mouth corners under a smile in [0, 1]."""
    return ident.mouth_w * (1 + 0.16 * smile), ident.mouth_y - 0.07 * smile


def _mouth(img: np.ndarray, ident: Identity, smile: float, open_: float) -> None:
    mw, cy = mouth_corners(ident, smile)
    t = np.linspace(-1, 1, 21)
    x = mw * t
    line = cy + (0.07 * smile + 0.01) * (1 - t**2)  # corners up when smiling
    gap = 0.14 * open_ * (1 - t**2) ** 0.8
    bump = 1 + 0.35 * np.exp(-((np.abs(t) - 0.3) / 0.2) ** 2)  # fuller lip near the cupid's bow
    up = line - ident.lip_up * (1 - t**2) ** 0.5 * bump
    lo = line + gap + ident.lip_lo * (1 - t**2) ** 0.6
    lip, dark = _c(ident.lip), _c(ident.lip, 0.55)
    _poly(img, np.concatenate([x, x[::-1]]), np.concatenate([up, lo[::-1]]), lip)
    if open_ > 0.05 or smile > 0.5:
        g = np.maximum(gap, 0.02 * smile * (1 - t**2))
        _poly(img, np.concatenate([x, x[::-1]]) * 0.92, np.concatenate([line, (line + g)[::-1]]),
              _c((0.2, 0.06, 0.06)))
        teeth = np.minimum(g, 0.035)
        _poly(img, np.concatenate([x, x[::-1]]) * 0.7, np.concatenate([line, (line + teeth)[::-1]]),
              _c((0.92, 0.9, 0.84)))
    _line(img, x * 0.97, line, dark, 0.01)


def _rect_lens(ident: Identity, dark: bool) -> bool:
    return ident.glasses == "rect" or (dark and ident.glasses == "none")


def _lenses(img: np.ndarray, ident: Identity, col, dark: bool = True) -> None:
    """Filled lenses (sunglasses), in the shape of the identity's glasses."""
    r = ident.lens_r
    for s in (-1, 1):
        x, y = s * ident.eye_x, ident.eye_y + 0.01
        if _rect_lens(ident, dark):
            _poly(img, np.array([-r, r, r * 0.9, -r * 0.9]) + x,
                  np.array([-0.7, -0.7, 0.7, 0.7]) * r + y, col)
        else:
            _ellipse(img, x, y, r, r * 0.8, col)


def _glasses(img: np.ndarray, ident: Identity, col, dark: bool) -> None:
    th = {"round": 0.018, "rect": 0.022, "thick": 0.04, "none": 0.03}[ident.glasses]
    r = ident.lens_r
    if dark:
        _lenses(img, ident, _c((0.06, 0.06, 0.07)))
    for s in (-1, 1):
        x, y = s * ident.eye_x, ident.eye_y + 0.01
        if _rect_lens(ident, dark):
            xs = np.array([-r, r, r * 0.9, -r * 0.9]) + x
            ys = np.array([-0.7, -0.7, 0.7, 0.7]) * r + y
            cv2.polylines(img, [_pts(xs, ys)], True, col, max(1, int(th / H)), _AA, _SHIFT)
        else:
            _ellipse(img, x, y, r, r * 0.8, col, thick=th)
        _line(img, s * np.array([ident.eye_x + r, 1.05]), np.array([y - 0.3 * r, y - 0.2 * r]),
              col, th)
    _line(img, np.array([-ident.eye_x + r, 0.0, ident.eye_x - r]),
          np.array([ident.eye_y - 0.02, ident.eye_y - 0.05, ident.eye_y - 0.02]), col, th)


def _face_mask(img: np.ndarray, ident: Identity, col, pleats: bool = True) -> None:
    x = np.linspace(-0.98, 0.98, 25)
    top = ident.nose_y - 0.18 + 0.25 * x**2
    bot = 1.55 - 0.3 * x**2
    _poly(img, np.concatenate([x, x[::-1]]), np.concatenate([top, bot[::-1]]), _c(col))
    for k in (0.3, 0.55) if pleats else ():
        _line(img, x * 0.9, top + k * (bot - top) * 0.8, _c(col, 0.8), 0.012)


@lru_cache(maxsize=32)
def occluder_map(ident: Identity, occlusion: str) -> np.ndarray:
    """Where a map-space occluder (mask, sunglasses) covers the face: uint8 [MAP_H, MAP_W],
    255 = covered."""
    m = np.zeros((MAP_H, MAP_W, 3), np.uint8)
    if occlusion == "mask":
        _face_mask(m, ident, (1.0, 1.0, 1.0), pleats=False)
    elif occlusion == "sunglasses":
        _lenses(m, ident, (255, 255, 255))
    return m[..., 0]


def photo_map(ident: Identity, smile: float, mouth_open: float, eyes_closed: float,
              gaze: tuple[float, float], occlusion: str, rng: np.random.Generator) -> np.ndarray:
    """The identity map with this photo's expression, glasses and map-space occluder.
    [MAP_H, MAP_W, 3] uint8"""
    base, beard = identity_map(ident)
    img = base.copy()
    for s in (-1, 1):
        _eye(img, ident, s, smile, eyes_closed, gaze)
    _mouth(img, ident, smile, mouth_open)
    if ident.beard != "none":
        r = _beard_rows(beard)
        img[r] = _blend(img[r], np.asarray(_c(ident.hair), np.float32), beard[r])
    if ident.glasses != "none" or occlusion == "sunglasses":
        _glasses(img, ident, _c(ident.glasses_rgb), occlusion == "sunglasses")
    if occlusion == "mask":
        col = [(0.75, 0.85, 0.95), (0.95, 0.95, 0.95), (0.12, 0.12, 0.14)][int(rng.integers(3))]
        _face_mask(img, ident, col)
    return img
