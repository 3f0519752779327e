"""Synthetic clean/noisy RAW pairs with no dataset on disk.

Clean sources: procedural dead-leaves scenes (occluding discs with power-law sizes, a standard
synthetic training set for denoisers) and any sRGB image, both "unprocessed" to camera RAW
(inverse tone curve and gamma, inverse colour matrix and white balance, mosaic to any CFA phase).
Noise: Poisson-Gaussian from a NoiseProfile at a sampled ISO, optional row noise, clipping at white.
Everything is drawn from a seeded numpy Generator, so a pair is reproducible from (seed, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rawdenoise import bayer
from rawdenoise.errors import InputError
from rawdenoise.noise import add_noise
from rawdenoise.profile import NoiseProfile

# ---------------------------------------------------------------------------------------------
# unprocessing: sRGB -> linear camera RGB -> mosaic


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """Inverse of the sRGB transfer curve (IEC 61966-2-1)."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def tone(x: np.ndarray) -> np.ndarray:
    """A global S-curve of the kind camera pipelines apply (smoothstep)."""
    x = np.clip(x, 0.0, 1.0)
    return 3 * x ** 2 - 2 * x ** 3


def inverse_tone(y: np.ndarray) -> np.ndarray:
    """Exact inverse of `tone` on [0, 1]."""
    y = np.clip(y, 0.0, 1.0)
    return 0.5 - np.sin(np.arcsin(1.0 - 2.0 * y) / 3.0)


def random_ccm(rng: np.random.Generator) -> np.ndarray:
    """A camera-RGB-from-linear-sRGB matrix: rows sum to one, mild random cross-talk."""
    m = rng.uniform(0.02, 0.3, size=(3, 3))
    np.fill_diagonal(m, 1.0)
    return m / m.sum(axis=1, keepdims=True)


def random_wb(rng: np.random.Generator) -> tuple[float, float]:
    """White-balance gains (red, blue) typical of daylight to tungsten."""
    return float(rng.uniform(1.6, 2.4)), float(rng.uniform(1.4, 2.0))


def mosaic(rgb: np.ndarray, cfa: str = "RGGB") -> np.ndarray:
    """H x W x 3 -> H x W Bayer mosaic with the given 2x2 pattern at the top-left pixel."""
    cfa = bayer.parse_cfa(cfa)
    h, w, _ = rgb.shape
    out = np.empty((h, w), dtype=rgb.dtype)
    for i, colour in enumerate(cfa):
        r, c = divmod(i, 2)
        out[r::2, c::2] = rgb[r::2, c::2, "RGB".index(colour)]
    return out


def unprocess(srgb: np.ndarray, rng: np.random.Generator, cfa: str = "RGGB", *,
              exposure: float | None = None, return_params: bool = False):
    """sRGB image in [0, 1] (H x W x 3) -> normalised clean RAW mosaic in [0, 1] (H x W).

    Inverse tone, inverse gamma, inverse colour matrix and white balance with random camera
    parameters; `exposure` scales the linear scene (random in [0.25, 1] if None) so that frames
    include the dark tones real photographs have. With `return_params`, also returns the camera
    it drew: {"ccm": camera-from-linear-sRGB 3x3, "wb": (red gain, blue gain), "exposure"}.
    """
    if srgb.ndim != 3 or srgb.shape[2] != 3:
        raise InputError(f"expected an H x W x 3 sRGB image, got shape {srgb.shape}")
    lin = srgb_to_linear(inverse_tone(np.asarray(srgb, np.float64)))
    ccm = random_ccm(rng)
    cam = lin @ ccm.T
    r_gain, b_gain = random_wb(rng)
    cam[..., 0] /= r_gain
    cam[..., 2] /= b_gain
    if exposure is None:
        exposure = float(np.exp(rng.uniform(np.log(0.25), 0.0)))
    cam *= exposure
    out = np.clip(mosaic(cam, cfa), 0.0, 1.0).astype(np.float32)
    if return_params:
        return out, {"ccm": ccm, "wb": (r_gain, b_gain), "exposure": exposure}
    return out


def develop(mosaic_norm: np.ndarray, cfa: str, params: dict) -> np.ndarray:
    """A quick half-size rendering of a normalised mosaic made by `unprocess`: the exact inverse
    of its camera (white balance, colour matrix, exposure, gamma, tone) -> sRGB uint8 (H/2 x W/2 x 3)."""
    cfa = bayer.parse_cfa(cfa)
    h, w = (mosaic_norm.shape[0] // 2) * 2, (mosaic_norm.shape[1] // 2) * 2
    planes = {"R": [], "G": [], "B": []}
    for i, colour in enumerate(cfa):
        r, c = divmod(i, 2)
        planes[colour].append(mosaic_norm[r:h:2, c:w:2].astype(np.float64))
    cam = np.stack([np.mean(planes[ch], axis=0) for ch in "RGB"], axis=-1)
    cam /= params["exposure"]
    cam[..., 0] *= params["wb"][0]
    cam[..., 2] *= params["wb"][1]
    lin = cam @ np.linalg.inv(params["ccm"]).T
    return np.round(tone(linear_to_srgb(lin)) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# procedural scenes


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an H x W (x C) image, edges reflected."""
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1)
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    pad = [(r, r), (r, r)] + [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, pad, mode="reflect")
    h, w = img.shape[:2]
    rows = sum(g[i] * p[i:i + h] for i in range(2 * r + 1))
    return sum(g[i] * rows[:, i:i + w] for i in range(2 * r + 1))


def dead_leaves(height: int, width: int, rng: np.random.Generator, *, r_min: float = 4.0,
                r_max: float | None = None, n_leaves: int | None = None, psf: float = 0.7,
                stripes: float = 0.15, min_period: float = 3.0, grain: float = 0.0,
                coverage: float | None = None) -> np.ndarray:
    """A dead-leaves sRGB image (H x W x 3, float32 in [0, 1]).

    Discs with radius density ~ r^-3 (scale invariant, like natural images), painted back to
    front with anti-aliased edges; each leaf carries a colour gradient and a fraction `stripes` of
    them a stripe texture (periods from `min_period` pixels), and the whole scene a smooth
    illumination falloff. With `grain` > 0, half the leaves are also modulated by a band-limited
    random texture of relative amplitude up to `grain` (hair, foliage, fabric: fine detail that
    flat discs lack). A Gaussian of `psf` pixels stands for the lens and anti-aliasing filter,
    which band-limit what a sensor records. `coverage` sets the number of leaves so that their
    expected total area is that many times the frame's; as leaf centres spread 10 % past each
    edge, about 1 - exp(-coverage / 1.44) of the background ends hidden (88 % at 3). By default
    the scene is sparser, with flat background between the leaves.
    """
    r_max = r_max or 0.35 * max(height, width)
    if coverage is not None and n_leaves is None:
        # E[r^2] under p(r) ~ r^-3 on [r_min, r_max]
        mean_area = np.pi * 2 * np.log(r_max / r_min) / (1 / r_min ** 2 - 1 / r_max ** 2)
        n_leaves = int(coverage * height * width / mean_area) + 1
    n_leaves = n_leaves or int(4 * height * width / (np.pi * r_min * r_max)) + 50
    img = np.empty((height, width, 3), np.float64)
    img[:] = rng.uniform(0.0, 1.0, size=3)
    # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
    u = rng.uniform(size=n_leaves)
    radii = 1.0 / np.sqrt(1.0 / r_min ** 2 - u * (1.0 / r_min ** 2 - 1.0 / r_max ** 2))
    cy = rng.uniform(-0.1 * height, 1.1 * height, size=n_leaves)
    cx = rng.uniform(-0.1 * width, 1.1 * width, size=n_leaves)
    texture = None
    if grain > 0:
        # unit-variance noise blurred to a random scale: one field per scene, leaves take windows of it
        texture = blur(rng.normal(size=(height, width)), rng.uniform(0.5, 1.5))
        texture /= texture.std()
    for r, y, x in zip(radii, cy, cx):
        y0, y1 = max(int(y - r - 1), 0), min(int(y + r + 2), height)
        x0, x1 = max(int(x - r - 1), 0), min(int(x + r + 2), width)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dist = np.hypot(yy - y, xx - x)
        alpha = np.clip(r - dist + 0.5, 0.0, 1.0)[..., None]
        colour = rng.uniform(0.0, 1.0, size=3)
        grad = rng.normal(0.0, 0.25, size=(2, 3)) / max(r, 1.0)
        leaf = colour + (yy - y)[..., None] * grad[0] + (xx - x)[..., None] * grad[1]
        if rng.uniform() < stripes and r > 2 * min_period:
            period = rng.uniform(min_period, 12.0)
            theta = rng.uniform(0, np.pi)
            phase = (np.cos(theta) * yy + np.sin(theta) * xx) * (2 * np.pi / period)
            leaf = leaf * (1.0 + 0.3 * np.sin(phase))[..., None]
        if texture is not None and rng.uniform() < 0.5:
            leaf = leaf * (1.0 + rng.uniform(0.0, grain) * texture[y0:y1, x0:x1])[..., None]
        patch = img[y0:y1, x0:x1]
        patch += alpha * (np.clip(leaf, 0.0, 1.0) - patch)
    # smooth illumination: a random tilted falloff
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    a, b = rng.normal(0.0, 0.6, size=2)
    light = np.exp(a * (yy - 0.5) + b * (xx - 0.5))
    img *= (light / light.max())[..., None]
    if psf > 0:
        img = blur(img, psf)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def sample_images(downscale: int = 2) -> list[np.ndarray]:
    """Photographs shipped with matplotlib (sRGB, [0, 1]); empty if matplotlib is absent.

    Averaged over `downscale` x `downscale` blocks: a JPEG carries its own grain and compression
    artefacts, which a clean reference must not (averaging divides their variance by downscale^2).
    """
    try:
        import matplotlib
        from PIL import Image
    except ImportError:
        return []
    from pathlib import Path

    root = Path(matplotlib.get_data_path()) / "sample_data"
    out = []
    for name in ("grace_hopper.jpg",):
        p = root / name
        if p.is_file():
            with Image.open(p) as im:
                img = np.asarray(im.convert("RGB"), np.float32) / 255.0
            f = max(1, int(downscale))
            h, w = img.shape[0] // f * f, img.shape[1] // f * f
            out.append(img[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3)))
    return out


# ---------------------------------------------------------------------------------------------
# noise


def add_sensor_noise(clean: np.ndarray, k: float, sigma2: float, rng: np.random.Generator, *,
                     row_noise: float = 0.0, clip: bool = True) -> np.ndarray:
    """Noisy copy of a normalised clean mosaic or packed frame.

    Poisson-Gaussian (variance k * x + sigma2), plus per-row offsets of standard deviation
    `row_noise` * sqrt(sigma2) (on the last-but-one axis), then clipped at white (1.0) like a
    saturating sensor. Values below black are kept: RAW files store them.
    """
    noisy = add_noise(clean, k, sigma2, rng)
    if row_noise > 0:
        shape = list(noisy.shape)
        shape[-1] = 1
        noisy += rng.normal(0.0, row_noise * np.sqrt(sigma2), size=shape).astype(np.float32)
    if clip:
        np.minimum(noisy, 1.0, out=noisy)
    return noisy


def sample_iso(rng: np.random.Generator, iso_range: tuple[float, float], size=None):
    """ISO drawn log-uniformly (each stop equally likely)."""
    lo, hi = np.log(iso_range[0]), np.log(iso_range[1])
    return np.exp(rng.uniform(lo, hi, size=size))


def to_dn(norm: np.ndarray, profile: NoiseProfile, dtype=np.uint16) -> np.ndarray:
    """Normalised mosaic -> sensor DN with the profile's black and white levels (rounded, clipped)."""
    black = np.mean(profile.black_level)
    dn = norm.astype(np.float64) * profile.range + black
    if np.dtype(dtype).kind in "ui":
        dn = np.clip(np.rint(dn), 0, profile.white_level)
    return dn.astype(dtype)


def pack_rggb(mosaic_rggb: np.ndarray) -> np.ndarray:
    """(..., H, W) RGGB mosaic -> (..., 4, H/2, W/2) in R, G1, G2, B order (no scaling)."""
    m = mosaic_rggb
    return np.stack([m[..., 0::2, 0::2], m[..., 0::2, 1::2], m[..., 1::2, 0::2], m[..., 1::2, 1::2]], axis=-3)


# ---------------------------------------------------------------------------------------------
# training pairs


def fine_leaves_params(rng: np.random.Generator) -> dict:
    """Random `dead_leaves` settings for scenes with the density and fine detail of real
    photographs: leaves down to 1 pixel that cover the frame, sharp optics (sensors without an
    anti-aliasing filter), more and finer stripes, and grain-like texture. The evaluation scenes
    keep the defaults."""
    return {"r_min": float(rng.uniform(1.0, 3.0)), "psf": float(rng.uniform(0.35, 0.8)),
            "stripes": 0.35, "min_period": 2.2, "grain": 0.3, "coverage": 3.0}


@dataclass
class PairSource:
    """Seeded, on-the-fly clean/noisy packed pairs for training and validation.

    A pool of dead-leaves scenes is drawn once from `seed`; each batch is then a function of
    (seed, index) only: random crops, flips, unprocessing parameters, ISO and noise. So a run
    resumed at step i sees exactly the batches it would have seen.
    """

    profile: NoiseProfile
    patch: int = 64               # packed pixels (raw patch is twice that)
    iso_range: tuple[float, float] = (100.0, 6400.0)
    seed: int = 0
    pool_size: int = 64
    scene_size: int = 384         # raw pixels
    row_noise: float = 0.0
    clip: bool = True
    fine_scenes: float = 0.0      # fraction of the pool drawn with fine detail (fine_leaves_params)

    def __post_init__(self):
        if 2 * self.patch > self.scene_size:
            raise InputError(f"patch {self.patch} (packed) does not fit scenes of {self.scene_size} raw pixels")
        if not 0.0 <= self.fine_scenes <= 1.0:
            raise InputError(f"fine_scenes must be a fraction in [0, 1], got {self.fine_scenes}")
        n_fine = int(round(self.fine_scenes * self.pool_size))
        size = self.scene_size
        rng = np.random.default_rng([self.seed, 0])
        self.pool = [dead_leaves(size, size, rng) for _ in range(self.pool_size - n_fine)]
        # a stream of its own, so a pool without fine scenes is what it always was
        rng = np.random.default_rng([self.seed, 2])
        self.pool += [dead_leaves(size, size, rng, **fine_leaves_params(rng)) for _ in range(n_fine)]

    def batch(self, index: int, n: int, iso: float | None = None):
        """(clean, noisy, iso) float32 (n, 4, p, p) normalised packed RGGB, and float64 (n,) ISO."""
        rng = np.random.default_rng([self.seed, 1, int(index)])
        p2 = 2 * self.patch
        clean = np.empty((n, 4, self.patch, self.patch), np.float32)
        noisy = np.empty_like(clean)
        isos = np.full(n, float(iso)) if iso is not None else sample_iso(rng, self.iso_range, n)
        for i in range(n):
            scene = self.pool[int(rng.integers(len(self.pool)))]
            y = 2 * int(rng.integers(0, (self.scene_size - p2) // 2 + 1))
            x = 2 * int(rng.integers(0, (self.scene_size - p2) // 2 + 1))
            crop = scene[y:y + p2, x:x + p2]
            if rng.uniform() < 0.5:
                crop = crop[::-1]
            if rng.uniform() < 0.5:
                crop = crop[:, ::-1]
            if rng.uniform() < 0.5:
                crop = crop.transpose(1, 0, 2)
            c = pack_rggb(unprocess(np.ascontiguousarray(crop), rng, "RGGB"))
            k, s2 = self.profile.normalised(isos[i])
            clean[i] = c
            noisy[i] = add_sensor_noise(c, k, s2, rng, row_noise=self.row_noise, clip=self.clip)
        return clean, noisy, isos


def test_scenes(seed: int, n_leaves_scenes: int = 4, size: int = 512, photos: bool = True) -> list[np.ndarray]:
    """Clean normalised RGGB mosaics for evaluation: dead-leaves scenes (a seed disjoint from any
    training pool, since pools use [seed, 0] streams) and unprocessed sample photographs."""
    rng = np.random.default_rng([seed, 7])
    scenes = [unprocess(dead_leaves(size, size, rng), rng, "RGGB") for _ in range(n_leaves_scenes)]
    if photos:
        for img in sample_images():
            h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
            scenes.append(unprocess(img[:h, :w], rng, "RGGB"))
    return scenes
