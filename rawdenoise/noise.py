"""Poisson-Gaussian noise: the model, sampling, and a blind estimate from the frame itself.

Units are those of a normalised frame (black 0, white 1): a pixel with clean value x has variance
``k * x + sigma2``, where `k` is the gain (normalised units per photo-electron) and `sigma2` the
signal-independent (read) noise variance.

The blind estimate follows the idea of Foi et al. 2008 ("Practical Poissonian-Gaussian noise
modeling and fitting for single-image raw-data"): a high-pass detail that cancels smooth signal,
local means and variances over smooth blocks only, and a robust straight-line fit of variance
against mean. Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError, NoiseEstimateError

# MAD of a zero-mean normal divided by its standard deviation
_MAD_TO_STD = 1.4826


def variance(mean, k: float, sigma2: float):
    """Noise variance of a pixel whose clean value is `mean`."""
    return k * np.asarray(mean) + sigma2


def add_noise(clean: np.ndarray, k: float, sigma2: float, rng: np.random.Generator) -> np.ndarray:
    """A noisy float32 copy of a normalised clean frame: k * Poisson(x / k) + N(0, sigma2).

    Negative clean values count as zero photons. `clean` is not modified.
    """
    if k <= 0 or sigma2 < 0:
        raise InputError(f"noise parameters must be k > 0 and sigma2 >= 0, got k={k}, sigma2={sigma2}")
    lam = np.clip(np.asarray(clean, dtype=np.float64), 0.0, None) / k
    out = rng.poisson(lam).astype(np.float64) * k
    if sigma2 > 0:
        out += rng.normal(0.0, np.sqrt(sigma2), size=out.shape)
    return out.astype(np.float32)


def _details(ch: np.ndarray):
    """Per 2x2 cell: its mean and the diagonal Haar detail (x00 - x01 - x10 + x11) / 2.

    The detail cancels any signal of the form f(row) + g(col) (constants and ramps), and for
    independent noise of variance v it has variance v (the mean of the four pixel variances).
    """
    a, b = ch[0::2, 0::2], ch[0::2, 1::2]
    c, d = ch[1::2, 0::2], ch[1::2, 1::2]
    return (a + b + c + d) * 0.25, (a - b - c + d) * 0.5


def robust_variance(x: np.ndarray) -> float:
    """The noise variance of a (C, h, w) frame taken as signal-independent: the squared robust
    spread (MAD) of its diagonal Haar details. A stand-in where the Poisson-Gaussian fit finds no
    signal-dependent part."""
    x = np.asarray(x, np.float64)
    x = x if x.ndim == 3 else x[None]
    _, d = _details(x[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2].transpose(1, 2, 0))
    return float((_MAD_TO_STD * np.median(np.abs(d))) ** 2)


def block_statistics(x: np.ndarray, *, block: int = 16, max_blocks: int = 24000,
                     saturation: float = 0.98, trend: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means, variances, smoothness) of the blocks of a (C, h, w) normalised frame.

    Each block of `block` x `block` pixels gives the mean and variance of its Haar details, and
    the variance of its 2x2-cell means around their best plane (`trend` 1) or quadratic surface
    (`trend` 2) (`smoothness`: about variance / 4 on a smooth block, much more across edges or
    texture). Blocks with outlying details or saturated pixels are dropped. At most `max_blocks`
    blocks are read, evenly spread, so big frames stay fast.
    """
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise InputError(f"expected a (C, h, w) packed frame, got shape {x.shape}")
    c, h, w = x.shape
    nby, nbx = h // block, w // block
    if nby * nbx == 0:
        raise InputError(f"frame {h} x {w} is too small to estimate noise (needs at least {block} x {block})")
    # take every s-th block in each direction to bound the work
    s = max(1, int(np.ceil(np.sqrt(c * nby * nbx / max_blocks))))
    # projection that removes the smooth part (plane, or quadratic) of the block's cell means
    nc = block // 2
    rr, cc = np.mgrid[0:nc, 0:nc]
    r0, c0 = rr.ravel() - (nc - 1) / 2, cc.ravel() - (nc - 1) / 2
    terms = [np.ones(nc * nc), r0, c0] + ([r0 * r0, r0 * c0, c0 * c0] if trend >= 2 else [])
    basis = np.stack(terms, axis=1)
    resid_proj = np.eye(nc * nc) - basis @ np.linalg.pinv(basis)
    means, variances, smooth = [], [], []
    for ci in range(c):
        blocks = x[ci, : nby * block, : nbx * block].reshape(nby, block, nbx, block)
        blocks = blocks[::s, :, ::s, :].transpose(0, 2, 1, 3).reshape(-1, block, block)
        blocks = blocks.astype(np.float64)
        m, d = _details(blocks.transpose(1, 2, 0))  # (block/2, block/2, n)
        m = m.reshape(-1, m.shape[-1])
        d = d.reshape(-1, d.shape[-1])
        mad_var = (_MAD_TO_STD * np.median(np.abs(d), axis=0)) ** 2
        plain_var = np.mean(d * d, axis=0)
        # cell means of pure noise vary by var/4 around a plane; edges and texture vary far more
        res = resid_proj @ m
        smooth_var = np.sum(res * res, axis=0) / (nc * nc - basis.shape[1])
        peak = blocks.reshape(blocks.shape[0], -1).max(axis=1)
        ok = (peak < saturation) & (mad_var > 0) & (plain_var <= 1.4 * mad_var)
        means.append(m.mean(axis=0)[ok])
        variances.append(plain_var[ok])
        smooth.append(smooth_var[ok])
    return np.concatenate(means), np.concatenate(variances), np.concatenate(smooth)


def fit_variance(means: np.ndarray, variances: np.ndarray, *, bins: int = 24, iterations: int = 4,
                 dof: float | None = None, fixed=()) -> tuple[float, float]:
    """Robust fit of variance = k * mean + sigma2 to block statistics.

    Blocks are grouped into intensity bins (equal counts); each bin gives a median mean and a
    median variance (corrected for the median of a chi-square with `dof` degrees of freedom
    lying below its mean, when `dof` is given). `fixed` adds known points (mean, variance, weight
    in blocks), e.g. a read-noise variance measured on black frames. Texture only ever adds
    variance, so after each weighted least-squares fit the bins well above the line are
    down-weighted.
    """
    means, variances = np.asarray(means, np.float64), np.asarray(variances, np.float64)
    if means.size < 8:
        raise InputError(
            f"only {means.size} smooth blocks found: the frame is too small or too textured to estimate its "
            f"noise blind; give its ISO (iso= / --iso; right when the model's noise profile matches the "
            f"camera) or its noise parameters noise=(k, sigma2)"
        )
    order = np.argsort(means)
    groups = [g for g in np.array_split(order, min(bins, max(2, means.size // 8))) if g.size]
    bm = np.array([np.median(means[g]) for g in groups])
    bv = np.array([np.median(variances[g]) for g in groups])
    n = np.array([g.size for g in groups], np.float64)
    if dof:
        # Wilson-Hilferty: median of chi2(d) / d is about (1 - 2 / (9 d))^3
        bv = bv / (1.0 - 2.0 / (9.0 * dof)) ** 3
    for m0, v0, w0 in fixed:
        bm, bv, n = np.append(bm, m0), np.append(bv, v0), np.append(n, w0)
    wgt = np.ones_like(bm)
    k = s2 = 0.0
    for _ in range(iterations):
        pred = np.maximum(k * bm + s2, 1e-30) if k > 0 else bv
        # weight ~ count / variance^2 (variance of a variance estimate), times the robustness factor
        w = wgt * n / pred ** 2
        A = np.stack([bm, np.ones_like(bm)], axis=1) * np.sqrt(w)[:, None]
        (k, s2), *_ = np.linalg.lstsq(A, bv * np.sqrt(w), rcond=None)
        pred = np.maximum(k * bm + s2, 1e-30)
        ratio = bv / pred
        wgt = np.where(ratio > 1.25, 0.05, 1.0)
    if not np.isfinite(k) or k <= 0:
        if np.median(bm) < 0.02:
            # near black the signal-dependent part is not identifiable: no gain can be measured
            return 0.0, float(np.median(bv))
        # no usable slope (e.g. a flat frame): fall back to a pure-gain model through the origin
        k = float(np.median(bv / np.maximum(bm, 1e-6)))
        s2 = 0.0
    return float(k), float(max(s2, 0.0))


def estimate_noise(x: np.ndarray, *, block: int = 16, max_blocks: int = 24000,
                   min_blocks: int = 200, pixels: int = 1, frame_hw: tuple[int, int] | None = None) -> tuple[float, float]:
    """Blind (k, sigma2) of a normalised packed frame (C, h, w) in [0, 1] units.

    Small or busy frames with fewer than `min_blocks` smooth blocks are measured again with
    blocks half the size. A frame that cannot be measured raises NoiseEstimateError naming the
    cause, with sizes in the caller's pixels (`pixels` of them per sample of `x` along each axis:
    2 for a packed Bayer frame; `frame_hw`: the whole frame's size when `x` holds bands of it).

    >>> k, sigma2 = estimate_noise(bayer.pack(raw, geom, black, white))
    """
    x = np.asarray(x)
    best = None
    while True:
        try:
            fit = _estimate(x, block, max_blocks)
        except InputError:
            if block <= 8 and best is None:
                raise NoiseEstimateError(_why_not(x, pixels, frame_hw)) from None
            fit = None
        if fit is not None and (best is None or fit[2] > best[2]):
            best = fit
        if (best is not None and best[2] >= min_blocks) or block <= 8:
            break
        block //= 2
    k, s2, _ = best
    if k <= 0:
        raise NoiseEstimateError(_why_not(x, pixels, frame_hw))
    return k, s2


MIN_BLOCK = 8


def _why_not(x: np.ndarray, pixels: int, frame_hw=None) -> str:
    """Why a frame's noise cannot be measured blind, in one sentence with the fix."""
    x = x if x.ndim == 3 else x[None]
    h, w = frame_hw or (x.shape[1] * pixels, x.shape[2] * pixels)
    need = MIN_BLOCK * pixels
    fix = "give its ISO (iso= / --iso) or its noise parameters noise=(k, sigma2)"
    if x.shape[1] < MIN_BLOCK or x.shape[2] < MIN_BLOCK:
        return f"a {h} x {w} frame is too small to measure its noise (at least {need} x {need} pixels, rows x columns); {fix}"
    c2 = x[:, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2]
    detail = (c2[:, 0::2, 0::2] - c2[:, 0::2, 1::2] - c2[:, 1::2, 0::2] + c2[:, 1::2, 1::2]) / 2
    if not np.any(detail):
        return f"the {h} x {w} frame shows no noise at all (flat or noise-free), so none can be measured; {fix}"
    if np.mean(x >= 0.98) > 0.5:
        return f"the {h} x {w} frame is mostly saturated, so its noise cannot be measured; {fix}"
    if np.median(x) < 0.01:
        return (f"the {h} x {w} frame is almost black: its noise has no signal-dependent part to measure; {fix}")
    return f"only a few smooth regions in the {h} x {w} frame: it is too small or too textured to measure its noise; {fix}"


def estimate_noise_bayer(raw: np.ndarray, geometry, black: np.ndarray, white: float, *, block: int = 16,
                         target_blocks: int = 6000) -> tuple[float, float]:
    """Blind (k, sigma2) of a Bayer frame, straight from the frame (before any packing).

    Noise statistics do not change across a frame, so a big frame is measured on about
    `target_blocks` blocks read from evenly spaced bands of rows, normalised and packed on their
    own (an eighth of a 12 MP frame): the network input can then be packed and scaled in one
    pass. Small frames are packed whole and read on as many blocks, evenly spread.
    `geometry`, `black`, `white` are those of `bayer.pack`.
    """
    from . import bayer

    g = geometry
    h2, w2 = g.packed_shape
    band = 2 * block                      # packed rows per band: whole blocks at every block size tried
    per_band = 4 * (band // block) * max(1, w2 // block)
    n_bands = math.ceil(target_blocks / per_band)
    slots = (h2 - 2) // band              # bands inside packed rows 1..h2-2: no mirrored rows
    if n_bands >= slots:
        return estimate_noise(bayer.pack(raw, g, black, white), block=block, max_blocks=target_blocks, pixels=2,
                              frame_hw=raw.shape)
    starts = 1 + band * np.linspace(0, slots - 1, n_bands).round().astype(int)
    x = bayer.pack_rows(raw, g, black, white, starts, band)
    return estimate_noise(x, block=block, pixels=2, frame_hw=raw.shape)


def _estimate(x: np.ndarray, block: int, max_blocks: int) -> tuple[float, float, int]:
    means, variances, smooth = block_statistics(x, block=block, max_blocks=max_blocks)
    # pass 1 judges smoothness against each block's own variance (biased upward: noisier blocks
    # pass more easily); pass 2 against the fitted variance, which is free of that selection bias
    dof = (block // 2) ** 2
    sel = smooth <= 1.5 * variances / 4
    k, s2 = fit_variance(means[sel], variances[sel], dof=dof)
    for _ in range(2):
        sel = smooth <= 1.5 * np.maximum(k * means + s2, 1e-30) / 4
        if np.count_nonzero(sel) < 8:
            break
        k, s2 = fit_variance(means[sel], variances[sel], dof=dof)
    return k, s2, int(np.count_nonzero(sel))
