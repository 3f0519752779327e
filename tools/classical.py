"""A classical RAW denoiser for reference: generalised Anscombe transform + non-local means,
each packed colour plane on its own. Pure numpy; used by tools.evaluate when BM3D is absent.
"""

from __future__ import annotations

import numpy as np


def gat(x: np.ndarray, k: float, sigma2: float) -> np.ndarray:
    """Generalised Anscombe transform: Poisson-Gaussian data (var k*x + sigma2) -> unit variance."""
    z = np.asarray(x, np.float64) / k
    s = sigma2 / k ** 2
    return 2.0 * np.sqrt(np.maximum(z + 3.0 / 8.0 + s, 0.0))


def inverse_gat(f: np.ndarray, k: float, sigma2: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Makitalo and Foi, 2011/2013)."""
    f = np.maximum(np.asarray(f, np.float64), 0.8)
    s = sigma2 / k ** 2
    r = np.sqrt(1.5)
    z = (f / 2) ** 2 + 0.25 * r / f - 11.0 / 8.0 / f ** 2 + 5.0 / 8.0 * r / f ** 3 - 1.0 / 8.0 - s
    return np.maximum(z, 0.0) * k


def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over (2r+1) x (2r+1) windows of a 2-D array (edges replicated)."""
    p = np.pad(a, r + 1, mode="edge")
    c = p.cumsum(0).cumsum(1)
    n = 2 * r + 1
    s = c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]
    return s[: a.shape[0], : a.shape[1]] / (n * n)


def nlm(plane: np.ndarray, *, h: float = 0.55, patch: int = 2, search: int = 5) -> np.ndarray:
    """Non-local means of a plane with unit noise variance.

    Weights exp(-max(d/2 - 1, 0) / h^2), with d the mean squared difference of the two
    (2*patch+1)^2 patches (d/2 is about 1 between patches that differ only by noise).
    """
    hgt, wid = plane.shape
    pad = np.pad(plane, search, mode="reflect")
    num = np.zeros_like(plane)
    den = np.zeros_like(plane)
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            shifted = pad[search + dy: search + dy + hgt, search + dx: search + dx + wid]
            d = _box((plane - shifted) ** 2, patch)
            w = np.exp(-np.maximum(d / 2.0 - 1.0, 0.0) / h ** 2)
            num += w * shifted
            den += w
    return num / den


def denoise_packed(x: np.ndarray, k: float, sigma2: float, *, h: float = 0.55) -> np.ndarray:
    """(C, h, w) normalised packed frame -> denoised, each channel separately (variance-stabilised NLM)."""
    out = np.empty(x.shape, np.float32)
    for c in range(x.shape[0]):
        out[c] = inverse_gat(nlm(gat(x[c], k, sigma2), h=h), k, sigma2)
    return out
