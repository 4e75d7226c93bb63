"""Synthetic AP knee radiographs with ground truth: the project's built-in data set.

Each knee is a small physical model, rendered and "exposed" like a radiograph:

* **Anatomy** (canonical frame: ``x`` lateral, ``y`` down, the canvas spans ``[-1, 1]``): distal
  femur (shaft flaring into two condyles with an intercondylar notch), proximal tibia (plateau
  with tibial spines), fibular head (lateral, below the plateau) and the patella superimposed
  over the distal femur, all smooth signed-distance blends, inside a soft-tissue envelope with a
  fat layer. Bone sizes, joint space, soft tissue and pose (rotation +-8 deg, shift, scale
  +-10 %) vary per knee. A right knee is the mirror image of a left one: the image shows the
  patient's right on the viewer's left, so the fibula lies on the image left for ``R``.
* **Bone**: every bone is a cortical shell around trabecular bone. The knee's bone mineral
  density (BMD) sets the trabecular volume fraction, strut spacing and connectivity, the
  cortical thickness and the mineral density. The trabecular network is the zero-level set of
  anisotropic band-pass noise (struts along the load lines), thresholded to the volume
  fraction and broken by holes that grow as BMD falls, rendered at twice the output size and
  box-downsampled (anti-aliasing). The strut spacing is 3.2 (high BMD) to 5.6 px (low BMD)
  at 256 px and scales with the size, but never below 0.75 times that, so that it stays
  resolvable at small sizes.
* **Labels**: ``bmd = 1.0 + 0.12 * t_score`` (g/cm^2); WHO classes ``normal`` (T >= -1),
  ``osteopenia`` (-2.5 < T < -1) and ``osteoporosis`` (T <= -2.5). T-scores are rounded to
  0.01 before anything is derived from them, so a manifest row re-derives its own label.
* **Cohort**: age, sex and BMI are drawn first; the T-score falls with age and female sex and
  rises with BMI, plus noise, calibrated to about 40 / 35 / 25 % normal / osteopenia /
  osteoporosis; T is clipped to [-5, 3]. A third of the persons contribute both knees (same
  covariates; each knee adds noise of SD 0.12 to the person's T-score, so a pair may straddle
  a class boundary). Anatomy, pose and soft tissue do not depend on the covariates.
* **Acquisition**: Beer-Lambert ``I = I0 * exp(-sum mu * t)`` over chord lengths through
  soft tissue, cortex and trabecular bone; random exposure (quantum noise), tube voltage (bone
  contrast), heel effect, scatter, detector blur and read noise; log transform, windowing and
  gamma; collimator edges; a burned-in side marker. Finally each image is rescaled to a mean
  and standard deviation drawn independently of everything else, so global statistics carry
  no class information.

Masks hold ``MASK_LABELS`` (0 background, 1 femur, 2 tibia, 3 fibula, 4 patella). Where bones
overlap in projection the later one wins (femur < tibia < fibula < patella): the patella covers
the femur and the fibular head covers the lateral tibia edge. Pixels outside the collimated
field are 0, since nothing can be seen there.

On disk (:mod:`osteolightning.data.phantom_files`): ``images/K00000.png`` (8- or 16-bit), ``masks/K00000.png``, ``manifest.csv`` and
``phantom.json``. Every knee's random numbers come from ``SeedSequence(seed, spawn_key=(1,
index))`` and the cohort's from ``spawn_key=(0,)``, so output is byte-identical for any number
of worker processes.

Example:
    >>> knee = generate_knee(seed=0, index=0, size=64)
    >>> CLASS_NAMES[knee.label] == CLASS_NAMES[who_class(knee.t_score)]
    True
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import fft as sfft
from scipy import ndimage

from osteolightning.errors import ConfigError

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("normal", "osteopenia", "osteoporosis")
MASK_LABELS: dict[str, int] = {"background": 0, "femur": 1, "tibia": 2, "fibula": 3, "patella": 4}
GENERATOR_VERSION = "knee-phantom-1.0"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image", "mask", "label", "t_score", "bmd", "patient_id", "side", "age", "sex", "bmi",
)  # fmt: skip
MIN_SIZE = 64

# Cohort model, calibrated by simulation to 40 / 35 / 25 % of the classes.
_T_INTERCEPT, _T_NOISE, _T_KNEE_NOISE = -1.02, 1.46, 0.12
_P_FEMALE, _P_BOTH_KNEES = 0.65, 1.0 / 3.0


def who_class(t_score: float) -> int:
    """WHO category of a T-score: 0 normal (T >= -1), 1 osteopenia, 2 osteoporosis (T <= -2.5)."""
    if t_score >= -1.0:
        return 0
    return 1 if t_score > -2.5 else 2


def bmd_from_t(t_score: float) -> float:
    """BMD in g/cm^2 of a T-score: ``1.0 + 0.12 * t_score`` (young-adult mean 1.0, SD 0.12)."""
    return round(1.0 + 0.12 * t_score, 4)


@dataclass(frozen=True)
class KneeSubject:
    """Who a knee belongs to and its ground truth, drawn by :func:`draw_cohort`."""

    patient_id: str
    side: str  # "L" or "R"
    age: int
    sex: str  # "F" or "M"
    bmi: float
    t_score: float


@dataclass
class PhantomKnee:
    """One rendered knee.

    Attributes:
        image: ``(H, W)`` float32 radiograph in ``[0, 1]``, bone bright.
        mask: ``(H, W)`` uint8 label mask with the values of ``MASK_LABELS``.
        t_score, bmd: ground truth; ``bmd = 1.0 + 0.12 * t_score``.
        label: index into ``CLASS_NAMES`` (``who_class(t_score)``).
        patient_id, side, age, sex, bmi: the subject (see :class:`KneeSubject`).
    """

    image: np.ndarray
    mask: np.ndarray
    t_score: float
    bmd: float
    label: int
    patient_id: str
    side: str
    age: int
    sex: str
    bmi: float


# --------------------------------------------------------------------------- cohort


def check_int(name: str, value: object, minimum: int, what: str) -> int:
    if isinstance(value, bool):  # bool is an int subclass but never a count
        raise ConfigError(f"Expected argument `{name}` to be {what}, but got {value!r}.")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"Expected argument `{name}` to be {what}, but got {value!r}.") from None
    if number < minimum:
        raise ConfigError(f"Expected argument `{name}` to be {what}, but got {value!r}.")
    return number


def draw_cohort(n: int, seed: int = 0) -> list[KneeSubject]:
    """Draw the subjects of the first ``n`` knees of a phantom without rendering anything.

    Persons are drawn one after another (a third of them with both knees), so the first knees
    of a larger cohort equal a smaller one's. A pair cut by ``n`` keeps its first knee only.

    Args:
        n: number of knees.
        seed: the phantom's seed.

    Returns:
        ``n`` subjects in knee order; knee ``i`` is image ``K{i:05d}``.
    """
    n = check_int("n", n, 1, "a positive integer")
    seed = check_int("seed", seed, 0, "a non-negative integer")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    subjects: list[KneeSubject] = []
    person = 0
    while len(subjects) < n:
        # A fixed number of draws per person keeps the stream independent of n.
        u = rng.random(4)
        age = int(np.clip(round(rng.normal(64.0, 10.0)), 40, 90))
        sex = "F" if u[0] < _P_FEMALE else "M"
        bmi = round(float(np.clip(rng.normal(27.5, 4.5), 17.0, 45.0)), 1)
        t_person = (
            _T_INTERCEPT
            - 0.05 * (age - 64)
            - 0.6 * (sex == "F")
            + 0.08 * (bmi - 27.5)
            + _T_NOISE * rng.normal()
        )
        t_person = min(max(t_person, -5.0), 3.0)  # the range met in practice; classes unchanged
        knee_noise = rng.normal(0.0, _T_KNEE_NOISE, size=2)
        sides = ("L", "R") if u[1] < _P_BOTH_KNEES else (("L",) if u[2] < 0.5 else ("R",))
        for side, noise in zip(sides, knee_noise[: len(sides)], strict=True):
            if len(subjects) < n:
                t_score = round(float(t_person + noise), 2)
                subjects.append(KneeSubject(f"P{person:05d}", side, age, sex, bmi, t_score))
        person += 1
    return subjects


# --------------------------------------------------------------------------- geometry


def _smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _pool2(a: np.ndarray) -> np.ndarray:
    """Mean over 2x2 blocks, ``(2S, 2S) -> (S, S)``: the box filter of the 2x render."""
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two signed distances (quadratic smooth minimum, blend width ``k``)."""
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - (0.25 * k) * h * h


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth intersection: rounds the corner where two boundaries meet."""
    return -_smin(-a, -b, k)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an ellipse (exact on the axes; negative inside)."""
    return (np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) - 1.0) * min(a, b)


def _draw_anatomy(rng: np.random.Generator) -> dict[str, float]:
    """Shape, pose and soft-tissue parameters of one knee (canonical units, see module doc)."""
    s = rng.uniform(0.92, 1.08)  # overall bone size

    def j(v: float, rel: float = 0.05) -> float:
        return float(v * s * (1.0 + rel * rng.uniform(-1.0, 1.0)))

    g = {
        "angle": math.radians(rng.uniform(-8.0, 8.0)), "scale": rng.uniform(0.9, 1.1),
        "dx": rng.uniform(-0.06, 0.06), "dy": rng.uniform(-0.06, 0.06),
        "shaft_w": j(0.16), "meta_w": j(0.385), "shaft_x": j(0.01, 2.0), "notch": j(0.055),
        "med_cx": -j(0.2), "med_cy": j(0.005, 1.0), "med_a": j(0.19), "med_b": j(0.13),
        "lat_cx": j(0.2), "lat_cy": j(-0.005, 1.0), "lat_a": j(0.18), "lat_b": j(0.12),
        "gap_med": rng.uniform(0.022, 0.055), "gap_lat": rng.uniform(0.025, 0.06),
        "plat_w": j(0.40), "tib_w": j(0.19), "tib_x": -j(0.02, 1.0), "spine": j(0.035, 0.3),
        "fib_dx": j(0.36, 0.03), "fib_dy": j(0.21), "fib_a": j(0.075), "fib_b": j(0.07),
        "fib_w": j(0.036), "fib_slope": rng.uniform(0.0, 0.08),
        "pat_cx": j(0.035, 0.6), "pat_cy": j(-0.1, 0.15), "pat_a": j(0.16), "pat_b": j(0.19),
        "leg_w": rng.uniform(0.6, 0.76), "leg_depth": rng.uniform(0.85, 1.0),
        "fat": rng.uniform(0.04, 0.11), "leg_x": rng.uniform(-0.04, 0.04),
    }  # fmt: skip
    return {k: float(v) for k, v in g.items()}


def _canonical_grid(n: int, g: dict[str, float], mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(x, y)`` of every pixel centre of an ``(n, n)`` canvas, undoing the pose."""
    u = ((np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0)[None, :] - g["dx"]  # (1, n)
    v = ((np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0)[:, None] - g["dy"]  # (n, 1)
    c, s = math.cos(g["angle"]) / g["scale"], math.sin(g["angle"]) / g["scale"]
    x, y = c * u + s * v, -s * u + c * v  # (n, n) each
    return (-x if mirror else x), y


def _bone_sdfs(x: np.ndarray, y: np.ndarray, g: dict[str, float]) -> dict[str, np.ndarray]:
    """Signed distances (negative inside) of the four bones, each ``(n, n)``."""
    # Femur: a shaft flaring into the metaphysis, cut above the joint, blended with two condyles.
    w = g["shaft_w"] + (g["meta_w"] - g["shaft_w"]) * _smoothstep(-0.8, -0.1, y)
    shaft = np.maximum(np.abs(x - g["shaft_x"] * (1.0 - _smoothstep(-0.6, 0.0, y))) - w, y)
    med = _ellipse(x, y, g["med_cx"], g["med_cy"], g["med_a"], g["med_b"])
    lat = _ellipse(x, y, g["lat_cx"], g["lat_cy"], g["lat_a"], g["lat_b"])
    notch_y = 0.5 * (g["med_cy"] + g["med_b"] + g["lat_cy"] + g["lat_b"])
    notch = _ellipse(x, y, 0.5 * (g["med_cx"] + g["lat_cx"]), notch_y, g["notch"], 0.1)
    femur = _smax(_smin(shaft, np.minimum(med, lat), 0.04), -notch, 0.02)
    # Tibia: plateau below each condyle (joint spaces differ), spines in the middle, tapering.
    top_med = g["med_cy"] + g["med_b"] + g["gap_med"]
    top_lat = g["lat_cy"] + g["lat_b"] + g["gap_lat"]
    top = top_med + (top_lat - top_med) * _smoothstep(-0.1, 0.1, x)
    top = top - g["spine"] * np.exp(-(((np.abs(x) - 0.035) / 0.03) ** 2))
    top = top + 0.012 * np.exp(-(((np.abs(x) - 0.2) / 0.09) ** 2))  # shallow plateau concavities
    plateau_y = 0.5 * (top_med + top_lat)
    taper = 1.0 - _smoothstep(plateau_y + 0.04, plateau_y + 0.8, y)
    wt = g["tib_w"] + (g["plat_w"] - g["tib_w"]) * taper
    tibia = _smax(np.abs(x - g["tib_x"]) - wt, top - y, 0.04)
    # Fibula: a head below the lateral plateau and a thin shaft running slightly laterally.
    hx, hy = g["fib_dx"], plateau_y + g["fib_dy"]
    head = _ellipse(x, y, hx, hy, g["fib_a"], g["fib_b"])
    apex = _ellipse(x, y, hx + 0.025, hy - 0.055, 0.03, 0.04)
    fshaft = np.maximum(np.abs(x - hx - 0.01 - g["fib_slope"] * (y - hy)) - g["fib_w"], hy - y)
    fibula = _smin(_smin(head, apex, 0.03), fshaft, 0.05)
    # Patella: an ellipse narrowing towards its inferior apex, over the distal femur.
    xp = x / (1.0 - 0.18 * np.clip((y - g["pat_cy"]) / g["pat_b"], -1.0, 1.0))
    patella = _ellipse(xp, y, g["pat_cx"], g["pat_cy"], g["pat_a"], g["pat_b"])
    return {"femur": femur, "tibia": tibia, "fibula": fibula, "patella": patella}


# --------------------------------------------------------------------------- bone texture


def _bone_state(t_score: float, rng: np.random.Generator, size: int) -> dict[str, float]:
    """Bone properties that follow BMD; ``z`` runs from 0 (T = -4) to 1 (T = +2.5)."""
    z = float(np.clip((t_score + 4.0) / 6.5 + rng.normal(0.0, 0.03), 0.0, 1.0))
    return {
        "z": z,
        "bv": 0.07 + 0.30 * z,  # trabecular bone volume fraction
        "holes": 0.03 + 0.5 * (1.0 - z) ** 2,  # share of the network broken away
        "spacing": (3.2 + 2.4 * (1.0 - z)) * max(size / 256.0, 0.75),  # output pixels
        "cortex": (0.4 + 0.6 * z) * rng.uniform(0.9, 1.1),  # scales cortical thickness
        "density": 0.8 + 0.3 * z,  # tissue mineral density, scales attenuation
    }


def _trabecular_networks(
    rng: np.random.Generator, n: int, spacing_hi: float, angle: float, bv: float, holes: float
) -> tuple[np.ndarray, np.ndarray]:
    """Projected trabecular texture of two independent bone regions, ``(n, n)`` float32 each.

    One 2-D strut network is the zero-level set of band-pass noise whose spectrum favours
    frequencies across ``angle`` (so struts run along the bone axis, the load line), thickened
    to the volume fraction; holes punched by an independent field disconnect it. A radiograph
    sums several layers along each ray, so a projection is the mean of shifted copies.
    """
    f = sfft.fftfreq(n).astype(np.float32)
    fu = math.cos(angle) * f[None, :] + math.sin(angle) * f[:, None]  # across the struts
    radius = np.sqrt(f[None, :] ** 2 + f[:, None] ** 2) + 1e-6
    f0 = 1.0 / (2.0 * spacing_hi)  # zero crossings come twice per period
    across = np.square(fu / radius)
    gain = np.exp(np.square((radius - f0) * (1.0 / (0.45 * f0))) * -0.5) * (0.15 + across * across)
    ring = gain > 1e-3  # only a few percent of the spectrum: draw noise there alone
    noise = rng.standard_normal((2, int(ring.sum())), np.float32)
    spectrum = np.zeros((n, n), np.complex64)
    spectrum[ring] = (noise[0] + 1j * noise[1]) * gain[ring]
    field = sfft.ifft2(spectrum)  # (n, n) complex64
    # Real and imaginary parts are independent fields with the same spectrum.
    g, h = np.abs(field.real), field.imag
    strut = g < np.quantile(g[::5, ::3], min(bv / (1.0 - holes), 0.9))
    net = strut & (h < np.quantile(h[::5, ::3], 1.0 - holes))
    layers = [np.roll(net, (k * n // 5, k * n // 3), axis=(0, 1)) for k in range(4)]
    first = (0.5 * (layers[0] + layers[1])).astype(np.float32)
    return first, (0.5 * (layers[2] + layers[3])).astype(np.float32)


def _chord(depth: np.ndarray, radius: float | np.ndarray) -> np.ndarray:
    """Path length through a cylinder of ``radius`` at ``depth`` inside its edge."""
    d = np.clip(depth, 0.0, radius)
    return 2.0 * np.sqrt(np.maximum(d * (2.0 * radius - d), 0.0))


def _bone_profiles(g: dict[str, float]) -> dict[str, tuple]:
    """Per bone: depth radius, trabecular share and shaft share (thick cortex) along ``y``."""
    yp = g["med_cy"] + g["med_b"]  # about the joint line
    # Epiphyses are full of struts; shafts hold marrow inside a thick cortex.
    return {
        "femur": (0.34, lambda y: _smoothstep(-0.6, -0.2, y),
                  lambda y: 1.0 - _smoothstep(-0.7, -0.25, y)),
        "tibia": (0.32, lambda y: 1.0 - _smoothstep(yp + 0.25, yp + 0.6, y),
                  lambda y: _smoothstep(yp + 0.25, yp + 0.7, y)),
        "fibula": (0.07, lambda y: 1.0 - _smoothstep(yp + 0.3, yp + 0.45, y), lambda y: 0.5),
        "patella": (0.2, lambda y: 0.6, lambda y: 0.5),
    }  # fmt: skip


def _line_integral(
    x: np.ndarray,
    y: np.ndarray,
    sdf: dict[str, np.ndarray],
    g: dict[str, float],
    bone: dict[str, float],
    nets: tuple[np.ndarray, np.ndarray],
    contrast: float,
) -> np.ndarray:
    """``sum mu * t`` along each ray, ``(n, n)``: soft tissue, cortex and trabecular bone."""
    leg_w = g["leg_w"] * (1.0 + 0.06 * np.exp(-(((y - 0.05) / 0.35) ** 2)) - 0.05 * y)
    depth = leg_w - np.abs(x - g["leg_x"])
    soft = _chord(depth, leg_w) * g["leg_depth"]
    lean = _chord(depth - g["fat"], leg_w - g["fat"]) * g["leg_depth"]
    total = 0.7 * lean + 0.45 * (soft - lean)  # muscle attenuates more than fat
    mu = 3.2 * bone["density"] * contrast  # mineral, in excess of the soft tissue it displaces
    for name, (r, spongy, shaft) in _bone_profiles(g).items():
        inside = sdf[name] < 0
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        if rows.size == 0:
            continue
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # only where the bone is
        yb, depth = y[box], -sdf[name][box]
        cortex = bone["cortex"] * (0.012 + 0.045 * shaft(yb)) * math.sqrt(r / 0.34)
        outer, inner = _chord(depth, r), _chord(depth - cortex, r - cortex)
        net = (nets[1] if name == "patella" else nets[0])[box]
        total[box] += mu * (outer - inner) + mu * (spongy(yb) * net + 0.03) * inner
    return total.astype(np.float32)


# --------------------------------------------------------------------------- acquisition


def _collimator(rng: np.random.Generator, n: int) -> np.ndarray:
    """Exposed fraction of every pixel, ``(n, n)`` in ``[0, 1]``; some sides are collimated."""
    insets = np.where(rng.random(4) < 0.5, rng.uniform(0.02, 0.1, 4), -1.0) * n
    a = math.radians(rng.uniform(-2.0, 2.0))
    c = (np.arange(n, dtype=np.float32) + 0.5) - n / 2
    u = math.cos(a) * c[None, :] + math.sin(a) * c[:, None] + n / 2
    v = -math.sin(a) * c[None, :] + math.cos(a) * c[:, None] + n / 2
    inside = np.minimum.reduce([u - insets[0], n - insets[1] - u, v - insets[2], n - insets[3] - v])
    return np.clip(inside / 1.5 + 0.5, 0.0, 1.0)  # penumbra of ~1.5 px


def _expose(rng: np.random.Generator, intensity: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Detector image from transmitted intensity ``(S, S)``: noise, blur, log, window, gamma."""
    n = intensity.shape[0]
    heel = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1.0, 1.0, n, dtype=np.float32)[:, None]
    i_rel = intensity * heel * (field + (1.0 - field) * 0.03)
    i_rel = i_rel + rng.uniform(0.0, 0.12) * float(i_rel.mean())  # scatter haze
    counts0 = math.exp(rng.uniform(math.log(500.0), math.log(4000.0)))
    counts = rng.poisson(i_rel * counts0).astype(np.float32)
    counts = ndimage.gaussian_filter(counts, rng.uniform(0.3, 0.6))
    counts = counts + rng.normal(0.0, rng.uniform(0.5, 3.0), counts.shape).astype(np.float32)
    p = -np.log(np.maximum(counts, 0.5) / counts0)  # bone bright, air dark
    lo, hi = np.percentile(p[field > 0.5], [0.5, rng.uniform(99.0, 99.9)])
    img = np.clip((p - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** rng.uniform(0.75, 1.3)
    if rng.random() < 0.5:  # many systems blank the collimated border digitally
        img = img * field
    return img


def _burn_marker(img: np.ndarray, side: str, rng: np.random.Generator) -> np.ndarray:
    """Burn a lead side marker ("L"/"R", white, framed) into a random corner of ``img``."""
    n = img.shape[0]
    glyph = Image.new("L", (16, 16), 0)
    # The bitmap font is built into Pillow (>= 10.1): no font file, same pixels everywhere.
    font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
    ImageDraw.Draw(glyph).text((4, 2), side, fill=255, font=font)
    glyph = glyph.crop(glyph.getbbox())
    h = max(int(round(n * rng.uniform(0.05, 0.075))), 6)
    w = max(int(round(h * glyph.width / glyph.height)), 3)
    box = Image.new("L", (w + 6, h + 6), 0)
    box.paste(glyph.resize((w, h), Image.BILINEAR), (3, 3))
    ImageDraw.Draw(box).rectangle((0, 0, w + 5, h + 5), outline=200)
    mark = np.asarray(box, np.float32) / 255.0  # (h+6, w+6)
    m = int(n * rng.uniform(0.04, 0.08))
    r0 = m if rng.random() < 0.5 else n - m - mark.shape[0]
    c0 = m if rng.random() < 0.5 else n - m - mark.shape[1]
    patch = img[r0 : r0 + mark.shape[0], c0 : c0 + mark.shape[1]]
    patch[...] = np.maximum(patch, mark)
    return img


def _match_stats(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rescale to a random mean and std (independent of the class): no global-statistics cue."""
    mean, std = rng.uniform(0.3, 0.45), rng.uniform(0.17, 0.24)
    for _ in range(4):  # clipping moves the statistics a little; a few passes settle them
        img = np.clip((img - img.mean()) * (std / max(float(img.std()), 1e-6)) + mean, 0.0, 1.0)
    return img.astype(np.float32)


# --------------------------------------------------------------------------- one knee


def generate_knee(
    seed: int, index: int, size: int = 256, person: KneeSubject | None = None
) -> PhantomKnee:
    """Render knee ``index`` of the phantom with ``seed``; a pure function of its arguments.

    Args:
        seed: the phantom's seed (non-negative).
        index: knee number (non-negative); with ``seed`` it seeds this knee's random numbers.
        size: output side length ``S`` in pixels (>= 64); rendering happens at ``2 S``.
        person: subject and ground truth; ``None`` takes ``draw_cohort(index + 1, seed)[index]``.

    Returns:
        The knee with ``image`` ``(S, S)`` float32 in ``[0, 1]`` and ``mask`` ``(S, S)`` uint8.

    Raises:
        ConfigError: an argument is out of range.

    Example:
        >>> knee = generate_knee(seed=0, index=3, size=64)
        >>> knee.image.shape, CLASS_NAMES[knee.label] in CLASS_NAMES
        ((64, 64), True)
    """
    seed = check_int("seed", seed, 0, "a non-negative integer")
    index = check_int("index", index, 0, "a non-negative integer")
    size = check_int("size", size, MIN_SIZE, f"an integer >= {MIN_SIZE}")
    person = draw_cohort(index + 1, seed)[index] if person is None else person
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))
    g = _draw_anatomy(rng)
    bone = _bone_state(person.t_score, rng, size)
    hi = 2 * size
    mirror = person.side == "R"
    x, y = _canonical_grid(hi, g, mirror)  # (2S, 2S)
    sdf = _bone_sdfs(x, y, g)
    # Canonical y (the bone axis) points along (-sin, cos) in the image, mirrored or not.
    nets = _trabecular_networks(
        rng, hi, 2.0 * bone["spacing"], g["angle"], bone["bv"], bone["holes"]
    )
    total = _line_integral(x, y, sdf, g, bone, nets, contrast=rng.uniform(0.85, 1.15))
    intensity = _pool2(np.exp(-total))  # (S, S): detector pixels integrate intensity
    field = _collimator(rng, size)
    img = _burn_marker(_expose(rng, intensity, field), person.side, rng)
    mask = np.zeros((size, size), np.uint8)
    for name, d in sdf.items():  # later bones overwrite earlier ones where they overlap
        inside = _pool2(d) < 0  # (S, S): signed distance at the pixel centres
        mask[inside & (field > 0.5)] = MASK_LABELS[name]
    label = who_class(person.t_score)
    return PhantomKnee(
        image=_match_stats(img, rng),
        mask=mask,
        t_score=person.t_score,
        bmd=bmd_from_t(person.t_score),
        label=label,
        patient_id=person.patient_id,
        side=person.side,
        age=person.age,
        sex=person.sex,
        bmi=person.bmi,
    )
