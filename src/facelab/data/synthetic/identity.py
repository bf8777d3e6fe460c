"""Identity parameters of a synthetic face: a deterministic function of (seed, index).

Units are "head units": the cranium half-width is 1, x points to the image right, y down, z towards
the camera (head at rest, frontal). Everything an identity owns (shape, colours, features, hair,
glasses, marks and the seed of its fine texture) lives here; what changes from photo to photo is in
nuisance.py. Two knobs set how distinct identities are: `SPREAD` scales the range of every
continuous shape parameter around its mean, `TEXTURE` the amplitude of the fine identity texture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPREAD = 1.0  # scales every continuous range below around its centre (calibrated: see __init__.py)
TEXTURE = 1.5  # scale of the identity-specific blotch/freckle texture

HAIR_STYLES = ("bald", "buzz", "short", "medium", "long", "bob", "curly", "bun")
BEARDS = ("none", "stubble", "moustache", "goatee", "full")
GLASSES = ("none", "round", "rect", "thick")

_SKIN = np.array([[0.97, 0.82, 0.71], [0.86, 0.66, 0.52], [0.68, 0.47, 0.33], [0.44, 0.29, 0.19],
                  [0.27, 0.17, 0.11]], np.float32)
_HAIR = np.array([[0.05, 0.04, 0.04], [0.16, 0.10, 0.07], [0.33, 0.21, 0.12], [0.55, 0.40, 0.26],
                  [0.86, 0.72, 0.46], [0.62, 0.26, 0.10], [0.52, 0.51, 0.50], [0.86, 0.85, 0.82]],
                 np.float32)
_HAIR_P = np.array([0.28, 0.22, 0.16, 0.10, 0.09, 0.05, 0.06, 0.04])
_IRIS = np.array([[0.20, 0.11, 0.06], [0.38, 0.23, 0.10], [0.48, 0.40, 0.18], [0.28, 0.48, 0.30],
                  [0.28, 0.47, 0.74], [0.50, 0.55, 0.60]], np.float32)
_IRIS_P = np.array([0.35, 0.20, 0.12, 0.10, 0.15, 0.08])


@dataclass(frozen=True)
class Identity:
    """Every identity-level parameter (floats in head units, colours RGB in [0, 1], angles in
    radians)."""

    seed: int
    index: int
    # head shape: cranium ellipsoid (1, cran_h, cran_d) plus a jaw ellipsoid
    cran_h: float
    cran_d: float
    jaw_w: float
    jaw_h: float
    jaw_y: float
    jaw_d: float
    skin: tuple[float, float, float]
    # eyes
    eye_x: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris: tuple[float, float, float]
    iris_r: float
    # brows
    brow_gap: float
    brow_thick: float
    brow_arch: float
    brow_len: float
    brow_tilt: float
    # nose (tip height, tip radius, protrusion, bridge width, nostril wing width)
    nose_y: float
    nose_r: float
    nose_out: float
    bridge_w: float
    ala_w: float
    # mouth
    mouth_y: float
    mouth_w: float
    lip_up: float
    lip_lo: float
    lip: tuple[float, float, float]
    # hair, facial hair, glasses
    hair_style: str
    hair: tuple[float, float, float]
    hairline: float
    hair_part: float
    hair_vol: float
    beard: str
    glasses: str
    glasses_rgb: tuple[float, float, float]
    lens_r: float
    # ears, marks and fine texture
    ear_size: float
    ear_y: float
    moles: tuple[tuple[float, float, float], ...]
    freckles: float
    blush: float
    wrinkles: float
    texture_amp: float
    texture_seed: int


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 0x1D])


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in [lo, hi] shrunk around the centre by SPREAD."""
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * SPREAD
    return float(mid + half * (2 * rng.random() - 1))


def _colour(base: np.ndarray, rng: np.random.Generator,
            jitter: float) -> tuple[float, float, float]:
    c = np.clip(base * (1 + jitter * rng.standard_normal(3)), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def _skin(rng: np.random.Generator) -> tuple[float, float, float]:
    t = rng.random() * (len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    base = _SKIN[i] + (t - i) * (_SKIN[i + 1] - _SKIN[i])
    return _colour(base, rng, 0.07)


def _pick(rng: np.random.Generator, names: tuple[str, ...], p: list[float]) -> str:
    return names[int(rng.choice(len(names), p=np.asarray(p) / np.sum(p)))]


def make_identity(seed: int, index: int) -> Identity:
    """The identity number `index` of the population drawn with `seed` (pure function of both)."""
    rng = _rng(seed, index)
    skin = _skin(rng)
    hair = _colour(_HAIR[rng.choice(len(_HAIR), p=_HAIR_P)], rng, 0.16)
    style = _pick(rng, HAIR_STYLES, [0.07, 0.12, 0.22, 0.16, 0.18, 0.10, 0.08, 0.07])
    beard = _pick(rng, BEARDS, [0.62, 0.12, 0.08, 0.07, 0.11])
    glasses = _pick(rng, GLASSES, [0.72, 0.10, 0.12, 0.06])
    n_moles = int(rng.choice(4, p=[0.5, 0.25, 0.15, 0.10]))
    moles = tuple((float(rng.uniform(-0.75, 0.75)), float(rng.uniform(-0.6, 1.2)),
                   float(rng.uniform(0.02, 0.045))) for _ in range(n_moles))
    lip = tuple(float(v) for v in np.clip(np.asarray(skin) * np.array([0.95, 0.62, 0.62])
                                          + [0.08, 0, 0], 0, 1))
    return Identity(
        seed=int(seed), index=int(index),
        cran_h=_u(rng, 1.18, 1.36), cran_d=_u(rng, 1.02, 1.18),
        jaw_w=_u(rng, 0.66, 0.96), jaw_h=_u(rng, 0.70, 0.92), jaw_y=_u(rng, 0.46, 0.62),
        jaw_d=_u(rng, 0.92, 1.08),
        skin=skin,
        eye_x=_u(rng, 0.32, 0.44), eye_y=_u(rng, -0.04, 0.12), eye_w=_u(rng, 0.15, 0.22),
        eye_h=_u(rng, 0.36, 0.62), eye_tilt=_u(rng, -0.16, 0.20),
        iris=_colour(_IRIS[rng.choice(len(_IRIS), p=_IRIS_P)], rng, 0.12),
        iris_r=_u(rng, 0.40, 0.58),
        brow_gap=_u(rng, 0.14, 0.30), brow_thick=_u(rng, 0.035, 0.085),
        brow_arch=_u(rng, -0.02, 0.08),
        brow_len=_u(rng, 1.0, 1.5), brow_tilt=_u(rng, -0.20, 0.25),
        nose_y=_u(rng, 0.40, 0.58), nose_r=_u(rng, 0.09, 0.15), nose_out=_u(rng, 0.26, 0.44),
        bridge_w=_u(rng, 0.06, 0.11), ala_w=_u(rng, 0.12, 0.22),
        mouth_y=_u(rng, 0.80, 0.98), mouth_w=_u(rng, 0.22, 0.36), lip_up=_u(rng, 0.025, 0.06),
        lip_lo=_u(rng, 0.035, 0.08), lip=lip,  # type: ignore[arg-type]
        hair_style=style, hair=hair, hairline=_u(rng, -0.95, -0.55),
        hair_part=float(rng.choice([-1.0, 0.0, 1.0])),
        hair_vol=_u(rng, 0.06, 0.22), beard=beard, glasses=glasses,
        glasses_rgb=_colour(np.array([0.15, 0.12, 0.10]) if rng.random() < 0.6 else rng.random(3),
                            rng, 0.1),
        lens_r=_u(rng, 0.20, 0.28),
        ear_size=_u(rng, 0.8, 1.2), ear_y=_u(rng, 0.05, 0.30), moles=moles,
        freckles=float(rng.random() ** 3), blush=float(rng.random()),
        wrinkles=float(rng.random() ** 2), texture_amp=float(TEXTURE * rng.uniform(0.5, 1.0)),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )
