"""Per-photo nuisances: pose, expression, light, framing and camera degradations.

A `Nuisance` fully determines a photo of an identity; its random details that are not worth a column
(background clutter, occluder shape, noise pattern) come from `detail_seed`. Kinds:
`mixed` (training and synth-lfw), `frontal` and `profile` (synth-cfp), `lowres` (synth-lfw's
conditions at a strongly reduced face resolution), `clean` (frontal, no degradation; for pictures).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from facelab.errors import FacelabError

FRAME = 176  # photo side in pixels
KINDS = ("mixed", "frontal", "profile", "lowres", "clean")
OCCLUSIONS = ("none", "bar", "hand", "mask", "sunglasses")
LOWRES = (5.0, 9.0)  # face width in pixels after down-sampling, kind "lowres"


@dataclass(frozen=True)
class Nuisance:
    """One photo's conditions. Angles in radians; sizes in frame pixels; `face_px` = head width."""

    yaw: float
    pitch: float
    roll: float
    smile: float
    mouth_open: float
    eyes_closed: float
    gaze_x: float
    gaze_y: float
    light_az: float
    light_el: float
    light: float
    ambient: float
    light_rgb: tuple[float, float, float]
    face_px: float
    cx: float
    cy: float
    resolution: float
    blur: float
    noise: float
    jpeg: int
    occlusion: str
    detail_seed: int


def _deg(rng: np.random.Generator, sd: float, lim: float) -> float:
    return math.radians(float(np.clip(rng.normal(0.0, sd), -lim, lim)))


def _pose(rng: np.random.Generator, kind: str) -> tuple[float, float, float]:
    if kind in ("frontal", "clean"):
        yaw = math.radians(rng.uniform(-8, 8))
    elif kind == "profile":
        yaw = math.radians(rng.uniform(62, 82)) * (1 if rng.random() < 0.5 else -1)
    else:
        yaw = _deg(rng, 18, 75)
    small = kind in ("frontal", "clean", "profile")
    return yaw, _deg(rng, 6 if small else 11, 30), _deg(rng, 5 if small else 9, 25)


def _light(rng: np.random.Generator, clean: bool) -> dict:
    t = rng.uniform(-1, 1)
    rgb = np.array([1 + 0.18 * t, 1.0, 1 - 0.18 * t]) * rng.uniform(0.92, 1.08, 3)
    return dict(light_az=math.radians(rng.uniform(-15, 15) if clean else rng.uniform(-75, 75)),
                light_el=math.radians(rng.uniform(10, 40) if clean else rng.uniform(-25, 65)),
                light=float(rng.uniform(0.55, 1.0)), ambient=float(rng.uniform(0.28, 0.6)),
                light_rgb=tuple(float(v) for v in rgb))


def sample_nuisance(rng: np.random.Generator, kind: str = "mixed") -> Nuisance:
    """Draw one photo's nuisances of the given kind (see module docstring)."""
    if kind not in KINDS:
        raise FacelabError(f"synthetic nuisance kind {kind!r}: expected one of {', '.join(KINDS)}")
    clean = kind == "clean"
    yaw, pitch, roll = _pose(rng, kind)
    face_px = float(rng.uniform(58, 84))
    s = face_px / 2
    mx, my = FRAME / 2 - 1.3 * s - 2, FRAME / 2 - 1.55 * s - 2
    res = face_px
    if kind == "lowres":
        res = float(rng.uniform(*LOWRES))
    elif kind == "mixed" and rng.random() < 0.25:
        res = float(rng.uniform(16, face_px))
    occ = "none"
    if kind in ("mixed", "lowres") and rng.random() < 0.05:
        occ = OCCLUSIONS[int(rng.integers(1, len(OCCLUSIONS)))]
    return Nuisance(
        yaw=float(yaw), pitch=float(pitch), roll=float(roll),
        smile=0.0 if clean or rng.random() < 0.5 else float(rng.uniform(0.2, 1.0)),
        mouth_open=0.0 if clean or rng.random() < 0.8 else float(rng.uniform(0.3, 1.0)),
        eyes_closed=float(not clean and rng.random() < 0.08),
        gaze_x=float(rng.uniform(-0.3, 0.3)), gaze_y=float(rng.uniform(-0.2, 0.2)),
        **_light(rng, clean),
        face_px=face_px, cx=float(FRAME / 2 + rng.uniform(-mx, mx)),
        cy=float(FRAME / 2 + rng.uniform(-my, my)),
        resolution=res,
        blur=0.0 if clean or rng.random() < 0.7 else float(rng.uniform(0.6, 2.2)),
        noise=0.0 if clean else float(rng.uniform(0, 7)),
        jpeg=95 if clean else int(rng.integers(40, 96)),
        occlusion=occ, detail_seed=int(rng.integers(0, 2**31 - 1)),
    )


def nuisance_row(n: Nuisance) -> dict[str, object]:
    """The attributes.csv columns of a nuisance: angles in degrees, numbers rounded for reading.

    yaw_deg/pitch_deg/roll_deg: head pose (yaw > 0 face towards the image right, pitch > 0 looking
    down, roll > 0 clockwise); smile, mouth_open in [0, 1], eyes_closed 0/1, gaze_x/gaze_y
    (fractions of the eye); light (diffuse intensity), ambient, light_az_deg/light_el_deg (direction
    towards the light, from the camera axis; elevation > 0 from above), light_r/g/b (colour);
    face_px (head width in pixels), cx/cy (head centre); resolution (head width after
    down-sampling, = face_px when not down-sampled); blur (Gaussian sigma in pixels, on top of a
    0.5 px optical blur); noise (sigma in grey levels); jpeg (quality); occlusion (none, bar, hand,
    mask, sunglasses); detail_seed (background, occluder, noise).
    """
    d = asdict(n)
    row: dict[str, object] = {f"{k}_deg": round(math.degrees(d.pop(k)), 2)
                              for k in ("yaw", "pitch", "roll")}
    for k in ("light_az", "light_el"):
        d[f"{k}_deg"] = math.degrees(d.pop(k))
    r, g, b = d.pop("light_rgb")
    d.update(light_r=r, light_g=g, light_b=b)
    row.update({k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()})
    return row
