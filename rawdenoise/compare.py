"""`rawdenoise compare`: run several model artifacts on the same frame and tabulate their differences.

Every artifact goes through `Denoiser.run` (same levels, packing, tiling); the first one is the
reference. Per model: max and mean |difference| in DN, PSNR between outputs, the signal-to-error
ratio of its correction (output - input) against the reference's, the error in dark regions
(reference below 5 % of the range), a seam ratio (how much the image jumps across tile borders
compared with everywhere else; 1.0 = no seams) and the time per frame.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
from .tiling import TilePlan

DARK_FRACTION = 0.05


@dataclass
class Row:
    model: str
    runtime: str
    precision: str
    max_dn: float
    mean_dn: float
    psnr_db: float
    dark_dn: float
    seam: float
    seconds: float
    # the correction (output - input) against the reference's: 10 log10(|c_ref|^2 / |c - c_ref|^2).
    # A denoiser's whole job is that correction, which can be far less accurate than the outputs
    # (whose PSNR is dominated by the image they share) suggest
    correction_snr_db: float = math.nan


def _borders(axis) -> list[int]:
    """Packed-pixel positions where the kept region switches from one tile to the next."""
    return [a for a, _ in axis.keep[1:]]


def _seam_axis(img: np.ndarray, borders: Sequence[int], step: int, offset: int) -> tuple[float, float]:
    """(sum of |jumps| across borders, count), (sum elsewhere, count) along axis 0 of `img`.

    Jumps compare same-colour pixels `step` apart (2 on a Bayer mosaic); a border at packed
    position b lies in front of sensor row step * b - offset.
    """
    d = np.abs(np.diff(img.astype(np.float64), n=1, axis=0)) if step == 1 else \
        np.abs(img[step:].astype(np.float64) - img[:-step])
    rows = d.shape[0]
    seam = np.zeros(rows, bool)
    for b in borders:
        s = step * b - offset  # first row of the next tile
        for y in range(s - step, s):
            if 0 <= y < rows:
                seam[y] = True
    per_row = d.reshape(rows, -1).mean(axis=1)
    return float(per_row[seam].mean()) if seam.any() else math.nan, \
        float(per_row[~seam].mean()) if (~seam).any() else math.nan


def seam_ratio(img: np.ndarray, plan: TilePlan, *, bayer: bool, dy: int = 0, dx: int = 0) -> float:
    """Mean same-colour jump across tile borders / mean jump elsewhere (nan for one tile)."""
    step = 2 if bayer else 1
    a = img if img.ndim == 2 else img.reshape(img.shape[0], img.shape[1], -1)
    rb, cb = _borders(plan.rows), _borders(plan.cols)
    ratios = []
    if rb:
        s, o = _seam_axis(a, rb, step, dy)
        ratios.append((s, o))
    if cb:
        s, o = _seam_axis(np.swapaxes(a, 0, 1), cb, step, dx)
        ratios.append((s, o))
    if not ratios:
        return math.nan
    seam = np.mean([r[0] for r in ratios])
    other = np.mean([r[1] for r in ratios])
    return float(seam / other) if other > 0 else math.nan


def snr_db(signal: np.ndarray, error: np.ndarray) -> float:
    """10 log10(|signal|^2 / |error|^2) (inf when the error is zero)."""
    e = float(np.sum(np.square(error)))
    return math.inf if e == 0 else 10 * math.log10(float(np.sum(np.square(signal))) / e)


def _psnr(diff: np.ndarray, peak: float) -> float:
    mse = float(np.mean(np.square(diff)))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def compare(models: Sequence[str], raw, *, tile: int | None = None, iso: float | None = None,
            runtime: str | None = None, device: str | None = None, levels: dict | None = None,
            repeat: int = 1) -> list[Row]:
    """Run every model on `raw` (path or RawFrame) and measure against the first.

    `levels` and `iso` override the file's metadata exactly as they would in `Denoiser.run`
    (a blind model still ignores an ISO that only the file states).
    """
    from .denoiser import Denoiser

    if len(models) < 2:
        raise InputError(f"compare needs at least two models, got {len(models)}")
    if repeat < 1:
        raise InputError(f"repeat must be >= 1, got {repeat}")
    if isinstance(raw, (str, os.PathLike)):
        from .rawio import read_raw

        raw = read_raw(raw)  # once, for every model
    kw = {k: v for k, v in (levels or {}).items() if v is not None}
    if iso is not None:
        kw["iso"] = iso
    rows: list[Row] = []
    ref = None
    for path in models:
        with Denoiser.load(path, runtime=runtime, device=device, tile=tile) as dn:
            t0 = time.perf_counter()
            out = dn.run(raw, **kw)
            seconds = time.perf_counter() - t0
            if repeat > 1:  # the first run warmed the runtime up; time the others
                t0 = time.perf_counter()
                for _ in range(repeat - 1):
                    dn.run(raw, **kw)
                seconds = (time.perf_counter() - t0) / (repeat - 1)
            prepared = dn.prepare(raw, **kw)
            lv, geom, s = prepared.levels, prepared.geometry, dn.spec
            is_bayer = s.layout == "bayer4"
            dy, dx = (geom.dy, geom.dx) if is_bayer else (0, 0)
            plan = dn.plan(prepared.x)
            seam = seam_ratio(np.asarray(out), plan, bayer=is_bayer, dy=dy, dx=dx)
            black = float(np.mean(lv.black))
            peak = lv.white - black
            out64 = np.asarray(out, np.float64)
            if ref is None:
                ref = out64
                dark = (ref - black) < DARK_FRACTION * peak
                ref_correction = ref - np.asarray(getattr(raw, "data", raw), np.float64)
                diff = np.zeros_like(ref)
            else:
                if out64.shape != ref.shape:
                    raise InputError(f"{path} returned shape {out64.shape}, the reference {ref.shape}")
                diff = out64 - ref
            ad = np.abs(diff)
            rows.append(Row(str(path), dn.runtime.name, dn.runtime.precision or s.precision, float(ad.max()),
                            float(ad.mean()), _psnr(diff, peak),
                            float(ad[dark].mean()) if dark.any() else math.nan, seam, seconds,
                            snr_db(ref_correction, diff)))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    head = ("model", "runtime", "prec", "max DN", "mean DN", "PSNR dB", "corr SNR dB", "dark DN", "seam",
            "s/frame")
    body = []

    def db(v):
        return "inf" if math.isinf(v) else f"{v:.2f}"

    for i, r in enumerate(rows):
        ref = i == 0
        body.append((Path(r.model).name + (" (ref)" if ref else ""), r.runtime, r.precision,
                     "-" if ref else f"{r.max_dn:.3g}", "-" if ref else f"{r.mean_dn:.3g}",
                     "-" if ref else db(r.psnr_db), "-" if ref else db(r.correction_snr_db),
                     "-" if ref else f"{r.dark_dn:.3g}", "n/a" if math.isnan(r.seam) else f"{r.seam:.3f}",
                     f"{r.seconds:.3f}"))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) if j < 3 else str(c).rjust(w)  # noqa: E731
                                   for j, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="model artifacts (.pt, .onnx, .engine); the first is the reference")
    p.add_argument("--raw", required=True, help="RAW file to denoise (camera RAW, DNG, .npy + .json sidecar)")
    p.add_argument("--tile", type=int, help="tile size in network pixels (default: each model's)")
    p.add_argument("--atol", type=float, help="exit 1 when any max difference exceeds this many DN")
    p.add_argument("--runtime", help="force one runtime for every model (default: from the suffix)")
    p.add_argument("--device", help="device for every model, e.g. cpu or cuda")
    p.add_argument("--repeat", type=int, default=1, help="runs per model; with N > 1 the first is a warm-up and the rest are timed")
    from .cli import add_frame_options

    add_frame_options(p)      # the same frame options as `rawdenoise denoise` (headerless dumps too)


def run(args) -> int:
    from .cli import read_frame

    frame = read_frame(Path(args.raw), args)
    rows = compare(args.models, frame, tile=args.tile, iso=args.iso, runtime=getattr(args, "runtime", None),
                   device=getattr(args, "device", None), repeat=max(1, getattr(args, "repeat", 1) or 1))
    print(format_table(rows))
    if args.atol is not None:
        worst = max(rows[1:], key=lambda r: r.max_dn)
        if worst.max_dn > args.atol:
            print(f"FAIL: {Path(worst.model).name} differs from {Path(rows[0].model).name} by up to "
                  f"{worst.max_dn:.3g} DN (> --atol {args.atol:g})")
            return 1
    return 0

