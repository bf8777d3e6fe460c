"""2.5-D head geometry: a union of quadrics (ellipsoids, a neck cylinder), rotated and cast
orthographically.

Head coordinates: x to the image right, y down, z towards the camera; the cranium is the ellipsoid
with half-axes (1, cran_h, cran_d) at the origin. A photo rotates the head by R = Rz(roll) Rx(pitch)
Ry(yaw) (yaw > 0 turns the face towards the image right, pitch > 0 tilts it down, roll > 0 turns it
clockwise on screen) and projects it orthographically: pixel = (cx, cy) + s (R p)[:2]. Casting a ray
per pixel through every quadric and keeping the hit nearest the camera hides whatever faces away or
lies behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from facelab.data.synthetic.facemap import mouth_corners
from facelab.data.synthetic.identity import Identity

LONG_HAIR = ("long", "bob", "curly")
VOLUME_HAIR = ("short", "medium", "long", "bob", "curly", "bun")


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Rx(pitch) Ry(yaw), head -> camera. [3, 3]"""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass
class Part:
    """A quadric (p - centre)^T Q (p - centre) = 1 in head coordinates, painted as `kind`."""

    kind: str  # "map" (albedo map), "ear", "neck", "hair"
    centre: np.ndarray  # [3]
    Q: np.ndarray  # [3, 3]
    ymin: float = -np.inf  # for the neck: the cylinder starts here

    def __post_init__(self) -> None:
        self.Qinv = np.linalg.pinv(self.Q)  # [3, 3], for the projected extent


def _ellipsoid(kind: str, centre, semi, tilt: float = 0.0) -> Part:
    """Ellipsoid with half-axes `semi`, rotated by `tilt` about the x axis."""
    c, s = math.cos(tilt), math.sin(tilt)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    q = rot @ np.diag(1.0 / np.asarray(semi, float) ** 2) @ rot.T
    return Part(kind, np.asarray(centre, float), q)


def surface_z(ident: Identity, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """z of the face surface (front of cranium and jaw union) at head coordinates (x, y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    zc = ident.cran_d * np.sqrt(np.clip(1 - x**2 - (y / ident.cran_h) ** 2, 0, None))
    zj = ident.jaw_d * np.sqrt(np.clip(1 - (x / ident.jaw_w) ** 2
                                       - ((y - ident.jaw_y) / ident.jaw_h) ** 2, 0, None))
    return np.maximum(zc, zj)


def _nose(ident: Identity) -> list[Part]:
    y0, y1 = ident.eye_y - 0.03, ident.nose_y
    p0 = np.array([0.0, y0, float(surface_z(ident, 0, y0)) + 0.04])
    p1 = np.array([0.0, y1, float(surface_z(ident, 0, y1)) + ident.nose_out - 0.03])
    d = p1 - p0
    length = float(np.linalg.norm(d))
    tilt = math.atan2(d[2], d[1])  # angle of the ridge in the y-z plane
    out = np.array([0.0, -d[2], d[1]]) / length  # perpendicular, towards the camera
    th = 0.1
    parts = [_ellipsoid("map", (p0 + p1) / 2 - out * th, (ident.bridge_w, length * 0.56, th), tilt)]
    r = ident.nose_r
    tip = np.array([0.0, y1, float(surface_z(ident, 0, y1)) + ident.nose_out - 0.9 * r])
    parts.append(_ellipsoid("map", tip, (1.05 * r, 0.95 * r, 0.9 * r)))
    for s in (-1, 1):
        xa = s * ident.ala_w * 0.75
        za = float(surface_z(ident, xa, y1 + 0.03))
        parts.append(_ellipsoid("map", (xa, y1 + 0.03, za + 0.02),
                                (ident.ala_w * 0.42, 0.075, 0.1)))
    return parts


def _hair(ident: Identity) -> list[Part]:
    v, st = ident.hair_vol * (1.8 if ident.hair_style == "curly" else 1.0), ident.hair_style
    if st in ("long", "bob"):
        h = 2.1 if st == "long" else 1.5
        top = -ident.cran_h - v
        return [_ellipsoid("hair", (0, top + h, -0.08), (1 + v, h, ident.cran_d + v))]
    parts = [_ellipsoid("hair", (0, -0.06, -0.04), (1 + v, ident.cran_h + v, ident.cran_d + v))]
    if st == "bun":
        parts.append(_ellipsoid("hair", (0, -ident.cran_h * 0.85, -0.75), (0.42, 0.4, 0.42)))
    return parts


def hair_allowed(ident: Identity, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Where the hair volume exists: above the hair line in front, down to the style's length
    behind."""
    st = ident.hair_style
    y_len = {"short": ident.ear_y - 0.3, "medium": 0.45, "bob": 0.95, "long": 2.6, "curly": 0.7,
             "bun": ident.ear_y - 0.3}[st]
    fringe = 0.22 if st in ("bob", "long") and ident.hair_part == 0 else 0.0
    w = np.clip((0.55 * ident.cran_d - z) / (0.45 * ident.cran_d), 0, 1)
    ok = y < ident.hairline + fringe - 0.02 + (y_len - ident.hairline - fringe) * w
    if st in LONG_HAIR:
        ok &= ~((y > 0.75) & (z > -0.1) & (np.abs(x) < 0.8))
    return ok


@lru_cache(maxsize=32)
def head_parts(ident: Identity) -> tuple[Part, ...]:
    """Every quadric of the identity's head, nearest-hit wins when cast."""
    parts = [_ellipsoid("map", (0, 0, 0), (1, ident.cran_h, ident.cran_d)),
             _ellipsoid("map", (0, ident.jaw_y, 0), (ident.jaw_w, ident.jaw_h, ident.jaw_d))]
    parts += _nose(ident)
    if ident.hair_style not in LONG_HAIR:
        for s in (-1, 1):
            ex = s * (math.sqrt(max(0.0, 1 - (ident.ear_y / ident.cran_h) ** 2)) + 0.02)
            parts.append(_ellipsoid("ear", (ex, ident.ear_y, -0.12),
                                    (0.07, 0.21 * ident.ear_size, 0.13 * ident.ear_size), -0.25))
    r = 0.5 * ident.jaw_w + 0.16
    parts.append(Part("neck", np.array([0.0, 0.0, -0.2]), np.diag([1 / r**2, 0.0, 1 / r**2]),
                      ymin=0.5))
    if ident.hair_style in VOLUME_HAIR:
        parts += _hair(ident)
    return tuple(parts)


def landmarks_3d(ident: Identity, smile: float) -> np.ndarray:
    """Left eye, right eye, nose tip, left and right mouth corner in head coordinates. [5, 3]"""
    mw, my = mouth_corners(ident, smile)
    xy = np.array([[-ident.eye_x, ident.eye_y], [ident.eye_x, ident.eye_y], [0.0, ident.nose_y],
                   [-mw, my], [mw, my]])
    z = surface_z(ident, xy[:, 0], xy[:, 1])
    z[2] += ident.nose_out
    return np.column_stack([xy, z])


def bbox(part: Part, R: np.ndarray, s: float, cx: float, cy: float,
         size: int) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1) holding the part's projection, clipped to the frame, or None."""
    cc = R @ part.centre
    if np.isfinite(part.ymin):  # cylinder: project the corners of a box around it
        r = 1 / math.sqrt(part.Q[0, 0])
        corners = np.array([[x, y, part.centre[2] + z] for x in (-r, r)
                            for y in (part.ymin, part.ymin + 6) for z in (-r, r)])
        pc = corners @ R.T
        lo, hi = pc[:, :2].min(0), pc[:, :2].max(0)
    else:
        cov = R @ part.Qinv @ R.T
        ext = np.sqrt(np.diag(cov)[:2])
        lo, hi = cc[:2] - ext, cc[:2] + ext
    x0, y0 = int(math.floor(cx + s * lo[0])) - 1, int(math.floor(cy + s * lo[1])) - 1
    x1, y1 = int(math.ceil(cx + s * hi[0])) + 2, int(math.ceil(cy + s * hi[1])) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def cast(part: Part, R: np.ndarray, s: float, cx: float, cy: float, box: tuple[int, int, int, int],
         back: bool = False) -> list[np.ndarray]:
    """Camera depth t of the quadric's front hit (and back hit if `back`) per pixel of the box,
    -inf where none.

    Returns [t_front] or [t_front, t_back], each [h, w].

    A ray through camera (X, Y) is p(t) = X r0 + Y r1 + t r2 in head space (r_k = row k of R),
    so (p - c)^T Q (p - c) = 1 reads A t^2 + 2 b t + C = 0 with b affine and C quadratic in
    (X, Y); the discriminant b^2 - A C is then a quadratic polynomial in (X, Y), built from 1-D
    rows and columns.
    """
    x0, y0, x1, y1 = box
    X = (np.arange(x0, x1, dtype=np.float64) - cx) / s  # [w]
    Y = (np.arange(y0, y1, dtype=np.float64) - cy) / s  # [h]
    r0, r1, r2 = R[0], R[1], R[2]
    Q, c = part.Q, part.centre
    A = r2 @ Q @ r2
    bx, by, b0 = r2 @ Q @ r0, r2 @ Q @ r1, -(r2 @ Q @ c)  # b = bx X + by Y + b0
    cxx, cxy, cyy = r0 @ Q @ r0, 2 * (r0 @ Q @ r1), r1 @ Q @ r1
    cx_, cy_, c0 = -2 * (r0 @ Q @ c), -2 * (r1 @ Q @ c), c @ Q @ c - 1
    # disc = b^2 - A C, expanded
    dx = ((bx * bx - A * cxx) * X + (2 * bx * b0 - A * cx_)) * X + (b0 * b0 - A * c0)  # [w]
    dy = ((by * by - A * cyy) * Y + (2 * by * b0 - A * cy_)) * Y  # [h]
    dxy = (2 * bx * by - A * cxy) * X  # [w]
    disc = (dx.astype(np.float32)[None, :] + dy.astype(np.float32)[:, None]) \
        + dxy.astype(np.float32)[None, :] * Y.astype(np.float32)[:, None]
    root = np.sqrt(np.maximum(disc, 0))
    lin = (((-bx / A) * X + (-b0 / A)).astype(np.float32)[None, :]
           + ((-by / A) * Y).astype(np.float32)[:, None])
    root *= 1 / A
    out = [lin + root, lin - root] if back else [lin + root]
    miss = root <= 0
    for t in out:
        m = miss
        if np.isfinite(part.ymin):  # the neck cylinder starts at y = ymin
            y = ((X * r0[1]).astype(np.float32)[None, :] + (Y * r1[1]).astype(np.float32)[:, None]
                 + t * r2[1])
            m = miss | (y < part.ymin)
        t[m] = -np.inf
    return out


def points(R: np.ndarray, X: np.ndarray, Y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Head-space points of camera (X, Y, t) (each [N]). [3, N]"""
    Rt = R.T.astype(np.float32)
    return Rt[:, 0:1] * X + Rt[:, 1:2] * Y + Rt[:, 2:3] * t


def normals(part: Part, R: np.ndarray, p: np.ndarray, inward: bool = False) -> np.ndarray:
    """Unit camera-space normals of the quadric at head points p [3, N]. [3, N]"""
    n = (R @ part.Q).astype(np.float32) @ (p - part.centre.astype(np.float32)[:, None])
    n *= (-1.0 if inward else 1.0) / np.sqrt((n * n).sum(0) + 1e-12)
    return n
