"""Geometric self-ensemble: denoise a frame in several orientations and average the results.

A network trained on scenes in all eight orientations (flips and transposes) makes different
errors in each; the mean of the outputs, each turned back, has less error than any one of them,
at `n` times the cost. Turning a Bayer frame changes its CFA phase and the order of its per-site
black levels. Both are carried along, and the packing handles the new phase exactly as it handles
any frame's phase, so every orientation sees sensor sites in the pattern the model was trained on.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import bayer
from .errors import InputError

# (transpose, flip rows, flip columns), applied in that order
_IDENTITY = (False, False, False)
_FLIPS = (_IDENTITY, (False, True, True), (False, True, False), (False, False, True))
ORIENTATIONS = {
    1: (_IDENTITY,),
    2: _FLIPS[:2],                                      # as is, and turned by 180 degrees
    4: _FLIPS,
    8: _FLIPS + tuple((True, r, c) for _, r, c in _FLIPS),
}


def orientations(n: int) -> tuple[tuple[bool, bool, bool], ...]:
    if n not in ORIENTATIONS:
        raise InputError(f"ensemble must be one of {sorted(ORIENTATIONS)} (orientations averaged), got {n!r}; "
                         "1 runs the frame once")
    return ORIENTATIONS[n]


def orient(a: np.ndarray, o) -> np.ndarray:
    """A view of `a` (axes 0 and 1 are rows and columns) turned by orientation `o`."""
    transpose, flip_rows, flip_cols = o
    if transpose:
        a = a.swapaxes(0, 1)
    if flip_rows:
        a = a[::-1]
    if flip_cols:
        a = a[:, ::-1]
    return a


def unorient(a: np.ndarray, o) -> np.ndarray:
    """Inverse of `orient`."""
    transpose, flip_rows, flip_cols = o
    if flip_cols:
        a = a[:, ::-1]
    if flip_rows:
        a = a[::-1]
    return a.swapaxes(0, 1) if transpose else a


def oriented_sites(shape: tuple[int, ...], o) -> np.ndarray:
    """For a frame of `shape`, the 2x2 CFA site indices (0-3, in the frame's 2x2 order) that end up
    at the top-left of the turned frame. A flip moves the last row or column to the front, so the
    result depends on whether the frame's height and width are odd."""
    h, w = 2 + shape[0] % 2, 2 + shape[1] % 2
    sites = (np.arange(h) % 2)[:, None] * 2 + (np.arange(w) % 2)[None, :]
    return orient(sites, o)[:2, :2]


def _prepare_oriented(dn, p, data: np.ndarray, o):
    """The network input of the frame turned by `o`, with `p`'s input scaling (the noise is
    resolved once, on the frame as given), and float output so the passes average before rounding."""
    f32 = np.dtype(np.float32)
    if o == _IDENTITY:
        return replace(p, dtype=f32)
    if p.geometry is None:                                  # planar RGB: turning the planes is exact
        x = np.ascontiguousarray(orient(p.x.transpose(1, 2, 0), o).transpose(2, 0, 1))
        return replace(p, x=x, dtype=f32, shape=orient(data, o).shape)
    sites = oriented_sites(data.shape, o).ravel()
    lv = replace(p.levels, cfa="".join(p.levels.cfa[i] for i in sites), black=p.levels.black[sites])
    turned = orient(data, o)
    g = bayer.geometry(turned.shape, lv.cfa, dn.spec.channel_order)
    x = dn.encode(turned, lv, g, p.gain, p.offset)
    return replace(p, x=x, dtype=f32, levels=lv, geometry=g, shape=turned.shape)


def run_ensemble(dn, data: np.ndarray, p, n: int, *, draws: int = 1, inputs=None,
                 progress: bool = False) -> np.ndarray:
    """Mean of `dn`'s outputs over `n` orientations of `data` (prepared as `p`) and, for a model with
    random inputs, `draws` Monte-Carlo draws of them per orientation; in `p`'s dtype, rounded once.
    Explicit whole-frame `inputs` go with the frame as given (n == 1 only)."""
    work = np.float64 if p.dtype == np.float64 else np.float32
    acc = None
    for o in orientations(n):
        q = _prepare_oriented(dn, p, data, o)
        for d in range(draws):
            fill = dn.input_filler(q, inputs, draw=d)
            out = unorient(dn.finish(dn.infer(q.x, progress=progress, inputs=fill), q), o)
            acc = out.astype(work) if acc is None else np.add(acc, out, out=acc)
    acc /= n * draws
    if p.dtype.kind in "ui":
        bayer.round_to_sensor(acc, p.levels.white)
    return acc.astype(p.dtype)
