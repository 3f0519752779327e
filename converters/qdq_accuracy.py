"""How much picture a quantized model loses, measured on held-back tiles of real frames.

Real RAW frames have no clean reference, so three figures are measured against the FP32 model:

- `psnr_db`, `max_err_dn`: how far the INT8 output is from the FP32 output (peak = white - black);
- `correction_snr_db`: a denoiser's whole job is its correction (output - input), which can be far
  less accurate than the outputs suggest (they share the image): 10 log10(|c_fp32|^2 / |c_int8 -
  c_fp32|^2), over the tiles as shot; `highlight_correction_snr_db` is the same over the tiles
  brightened to white (FrameScale.highlight). Those carry their noise brightened too, far more than
  a real highlight has, so they test clipping, and would swamp the as-shot figure if summed with it;
- `loss_db`: the PSNR the INT8 model loses against a clean frame. The FP32 output of each tile is
  taken as the clean frame, noise is drawn anew at the tile's own noise level (its frame's k and
  sigma^2, from the ISO or the blind estimate), and both models denoise that; the loss is the
  difference of their PSNRs against the clean frame, over all tiles. The content is the real
  frames', the noise is the camera's, and the reference is known.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rawdenoise.calibration import FrameScale
from rawdenoise.spec import ModelSpec


@dataclass(frozen=True)
class Accuracy:
    psnr_db: float            # INT8 vs FP32 outputs, normalised units
    max_err_dn: float
    mean_err_dn: float
    max_err_share: float      # the largest error as a share of white - black
    correction_snr_db: float  # the correction (output - input) against FP32's
    loss_db: float            # PSNR lost against a known clean frame (re-noised held-back tiles)
    ms_per_tile: float        # time of the INT8 model per held-back tile here
    highlight_correction_snr_db: float = math.nan   # correction SNR on the brightened tiles

    def shortfall(self, max_loss_db: float | None, min_correction_snr_db: float | None) -> float:
        """How many dB the targets are missed by, summed (0 when both hold; an unmeasurable loss,
        NaN, misses)."""
        miss = 0.0
        if max_loss_db is not None:
            miss += max(0.0, self.loss_db - max_loss_db) if math.isfinite(self.loss_db) else math.inf
        if min_correction_snr_db is not None:
            miss += max(0.0, min_correction_snr_db - self.correction_snr_db)
        return miss

    def meets(self, max_loss_db: float | None, min_correction_snr_db: float | None) -> bool:
        return self.shortfall(max_loss_db, min_correction_snr_db) == 0


def _db(signal: float, error: float) -> float:
    if error == 0:
        return math.inf
    return -math.inf if signal == 0 else 10.0 * math.log10(signal / error)


class HeldBack:
    """Held-back tiles with the FP32 model's outputs on them and on their re-noised copies, computed
    once, so that each quantized candidate costs only its own runs."""

    def __init__(self, run_fp32, spec: ModelSpec, tiles: np.ndarray, scales: Sequence[FrameScale], seed: int = 0):
        self.spec, self.tiles, self.scales = spec, tiles, list(scales)
        oc = spec.out_channels
        self.ref = [run_fp32(t[None])[0] for t in tiles]
        self.ref_correction = [self._correction(r, t) for r, t in zip(self.ref, tiles)]
        # re-noised tiles: the FP32 output as the clean frame, noise drawn at the frame's level
        self.clean, self.noisy, self.noisy_ref = [], [], []
        rng = np.random.default_rng(seed)
        for t, r, sc in zip(tiles, self.ref, self.scales):
            if sc.noise is None or oc != t.shape[0]:
                continue
            clean = self._image(r, t)
            k, s2 = sc.noise
            norm = (clean - sc.offset) / sc.gain
            std = sc.gain * np.sqrt(np.maximum(k * np.maximum(norm, 0.0) + s2, 0.0))
            noisy = (clean + rng.standard_normal(clean.shape) * std).astype(np.float32)
            self.clean.append((clean, sc))
            self.noisy.append(noisy)
            self.noisy_ref.append(self._image(run_fp32(noisy[None])[0], noisy))

    def _image(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The network's output as an image (a residual model's output is the correction)."""
        return y if self.spec.output == "image" else x[:y.shape[0]] + y

    def _correction(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return y - x[:y.shape[0]] if self.spec.output == "image" else y

    def measure(self, run_int8) -> Accuracy:
        t0 = time.perf_counter()
        outs = [run_int8(t[None])[0] for t in self.tiles]
        ms = 1e3 * (time.perf_counter() - t0) / max(len(self.tiles), 1)
        err_dn, err_norm = [], []
        sig_c, err_c, n = {False: 0.0, True: 0.0}, {False: 0.0, True: 0.0}, {False: 0, True: 0}  # as shot, highlights
        for o, r, c_ref, t, sc in zip(outs, self.ref, self.ref_correction, self.tiles, self.scales):
            d = o.astype(np.float64) - r
            err_dn.append(np.abs(d) * sc.dn_per_unit)
            err_norm.append(d * sc.dn_per_unit / sc.peak_dn)
            n[sc.highlight] += 1
            sig_c[sc.highlight] += float(np.sum(np.square(c_ref, dtype=np.float64)))
            err_c[sc.highlight] += float(np.sum(np.square(self._correction(o, t) - c_ref, dtype=np.float64)))
        shot, high = (_db(sig_c[h], err_c[h]) if n[h] else math.nan for h in (False, True))
        e_dn, e_norm = np.concatenate([e.ravel() for e in err_dn]), np.concatenate([e.ravel() for e in err_norm])
        mse_fp = mse_q = 0.0
        for (clean, sc), noisy, ref in zip(self.clean, self.noisy, self.noisy_ref):
            q = self._image(run_int8(noisy[None])[0], noisy)
            mse_fp += float(np.mean(np.square((ref - clean) / sc.gain, dtype=np.float64)))
            mse_q += float(np.mean(np.square((q - clean) / sc.gain, dtype=np.float64)))
        loss = _db(mse_q, mse_fp) if self.clean else math.nan
        return Accuracy(_db(1.0, float(np.mean(np.square(e_norm)))), float(e_dn.max()), float(e_dn.mean()),
                        float(np.abs(e_norm).max()), shot, loss, ms, high)
