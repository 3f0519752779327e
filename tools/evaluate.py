"""Evaluate a model on a fixed synthetic test set: ``python -m tools.evaluate MODEL [--iso ...]``.

PSNR and SSIM per ISO of the model's output (through `Denoiser.run`, exactly as users run it),
next to the noisy input and a classical baseline (BM3D when the `bm3d` package is installed,
otherwise variance-stabilised non-local means), each on its own packed colour plane. With
`--blind` the model also runs with no ISO, estimating the noise from the frame.

The test set is fixed by TEST_SEED: dead-leaves scenes from a seed stream no training run uses,
plus photographs shipped with matplotlib, unprocessed to RAW, with Bayer phases varied by
cropping, then Poisson-Gaussian noise from the profile at each ISO, quantised to uint16 DN.
Metrics are on the normalised (black 0, white 1) frame.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rawdenoise.errors import run_cli

from rawdenoise.profile import NoiseProfile, default_profile
from .synth import add_sensor_noise, test_scenes, to_dn

TEST_SEED = 20240917
DEFAULT_ISOS = (800.0, 1600.0, 3200.0, 6400.0)
# crop offsets (rows, cols) applied to the RGGB scenes, and the CFA phase each one leaves
_PHASES = (((0, 0), "RGGB"), ((1, 1), "BGGR"), ((0, 1), "GRBG"), ((1, 0), "GBRG"))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


def _gauss_blur(a: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    t = np.arange(-radius, radius + 1)
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    # separable 'valid' convolution: SSIM is computed away from the borders
    a = np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), 0, a)
    return np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), 1, a)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of 2-D planes."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _gauss_blur(a), _gauss_blur(b)
    saa = _gauss_blur(a * a) - mu_a ** 2
    sbb = _gauss_blur(b * b) - mu_b ** 2
    sab = _gauss_blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return float(s.mean())


def ssim_mosaic(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of a Bayer mosaic: the mean over its four same-colour planes."""
    return float(np.mean([ssim(a[r::2, c::2], b[r::2, c::2]) for r in (0, 1) for c in (0, 1)]))


@dataclass(frozen=True)
class TestFrame:
    clean: np.ndarray      # normalised mosaic
    noisy_dn: np.ndarray   # uint16 DN
    cfa: str
    iso: float


def test_set(profile: NoiseProfile, isos, *, n_scenes: int = 4, size: int = 512, photos: bool = True):
    """{iso: [TestFrame]}: the same scenes at every ISO, noise seeded by (TEST_SEED, iso, index)."""
    scenes = test_scenes(TEST_SEED, n_scenes, size, photos=photos)
    out = {}
    for iso in isos:
        k, s2 = profile.normalised(iso)
        frames = []
        for i, scene in enumerate(scenes):
            (dy, dx), cfa = _PHASES[i % len(_PHASES)]
            h, w = (scene.shape[0] - dy) // 2 * 2, (scene.shape[1] - dx) // 2 * 2
            clean = scene[dy:dy + h, dx:dx + w]
            rng = np.random.default_rng([TEST_SEED, int(iso), i])
            noisy = add_sensor_noise(clean, k, s2, rng)
            frames.append(TestFrame(clean, to_dn(noisy, profile), cfa, float(iso)))
        out[float(iso)] = frames
    return out


def _normalise(dn: np.ndarray, profile: NoiseProfile) -> np.ndarray:
    return (dn.astype(np.float64) - np.mean(profile.black_level)) / profile.range


def baseline_name() -> str:
    try:
        import bm3d  # noqa: F401
        return "bm3d"
    except ImportError:
        return "gat-nlm"


def classical(mosaic: np.ndarray, cfa: str, k: float, s2: float) -> np.ndarray:
    """Classical denoiser on a normalised mosaic, each same-colour plane on its own."""
    planes = np.stack([mosaic[r::2, c::2] for r in (0, 1) for c in (0, 1)])
    if baseline_name() == "bm3d":
        import bm3d

        from .classical import gat, inverse_gat

        den = np.stack([inverse_gat(bm3d.bm3d(gat(p, k, s2), sigma_psd=1.0), k, s2) for p in planes])
    else:
        from .classical import denoise_packed

        den = denoise_packed(planes, k, s2)
    out = np.empty_like(mosaic, dtype=np.float64)
    for i, (r, c) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[r::2, c::2] = den[i]
    return out


def model_profile(denoiser) -> NoiseProfile | None:
    notes = getattr(denoiser.spec, "notes", {}) or {}
    d = notes.get("training_profile")
    return NoiseProfile.from_dict(d) if d else None


def edge_mask(shape, band: int) -> np.ndarray:
    """True on the outer `band` pixels of a frame."""
    m = np.zeros(shape, bool)
    m[:band], m[-band:], m[:, :band], m[:, -band:] = True, True, True, True
    return m


def evaluate(model, *, isos=DEFAULT_ISOS, profile: NoiseProfile | None = None, blind: bool = False,
             runtime: str | None = None, baseline: bool = True, n_scenes: int = 4, size: int = 512,
             photos: bool = True, ensemble: int = 1, border: int | None = None, band: int = 0,
             log=None) -> list[dict]:
    """Rows {iso, method, psnr, ssim} (means over the test frames). With `ensemble` > 1 the model
    rows are repeated with that self-ensemble (methods suffixed -xN). `border` is the Denoiser's
    (default: the model's); with `band` > 0 the model's PSNR is also given on the frames' outer
    `band` pixels and on the rest (methods model-edge, model-inner; SSIM not computed)."""
    from rawdenoise import Denoiser

    with Denoiser.load(model, runtime=runtime, border=border) as dn:
        trained_on = model_profile(dn)
        profile = profile or trained_on or default_profile()
        # the ISO path uses the model's own coefficients: valid only for the profile it was trained on
        same = trained_on is not None and trained_on.to_dict() == profile.to_dict()
        data = test_set(profile, isos, n_scenes=n_scenes, size=size, photos=photos)
        rows = []
        for iso, frames in data.items():
            k, s2 = profile.normalised(iso)
            acc: dict[str, list[tuple[float, float]]] = {}

            def add(method, est, clean):
                acc.setdefault(method, []).append((psnr(est, clean), ssim_mosaic(est, clean)))

            def add_parts(est, clean):
                edge = edge_mask(clean.shape, band)
                for method, part in (("model-edge", edge), ("model-inner", ~edge)):
                    acc.setdefault(method, []).append((psnr(est[part], clean[part]), np.nan))

            black = list(profile.black_level)
            for f in frames:
                add("noisy", _normalise(f.noisy_dn, profile), f.clean)
                if baseline:
                    add(baseline_name(), classical(_normalise(f.noisy_dn, profile), f.cfa, k, s2), f.clean)
                for n, tag in [(1, "")] + ([(ensemble, f"-x{ensemble}")] if ensemble > 1 else []):
                    kw = dict(cfa=f.cfa, black_level=black, white_level=profile.white_level, ensemble=n)
                    if dn.spec.ksigma is not None and not same:
                        out = dn.run(f.noisy_dn, noise=(k, s2), **kw)
                    else:
                        out = dn.run(f.noisy_dn, iso=iso, **kw)
                    add("model" + tag, _normalise(out, profile), f.clean)
                    if band and n == 1:
                        add_parts(_normalise(out, profile), f.clean)
                    if blind:
                        add("model-blind" + tag, _normalise(dn.run(f.noisy_dn, **kw), profile), f.clean)
            for method, vals in acc.items():
                v = np.array(vals)
                rows.append({"iso": int(iso), "method": method, "psnr": round(float(v[:, 0].mean()), 3),
                             "ssim": round(float(v[:, 1].mean()), 5), "frames": len(vals)})
            if log:
                log(f"ISO {int(iso)} done")
    return rows


def table(rows: list[dict]) -> str:
    """A plain-text table: one line per ISO, PSNR / SSIM per method, model gain over noisy."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    isos = list(dict.fromkeys(r["iso"] for r in rows))
    by = {(r["iso"], r["method"]): r for r in rows}
    head = ["ISO"] + [f"{m} PSNR/SSIM" for m in methods] + ["gain dB"]
    lines = [head]
    for iso in isos:
        line = [str(iso)]
        for m in methods:
            r = by.get((iso, m))
            line.append("-" if r is None else f"{r['psnr']:.2f} / " + ("-" if np.isnan(r["ssim"]) else f"{r['ssim']:.4f}"))
        if (iso, "model") in by and (iso, "noisy") in by:
            line.append(f"{by[(iso, 'model')]['psnr'] - by[(iso, 'noisy')]['psnr']:+.2f}")
        lines.append(line)
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(l, widths)) for l in lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model file (.pt, .onnx, .engine) or 'default'")
    ap.add_argument("--iso", type=float, nargs="+", default=list(DEFAULT_ISOS), help="ISOs to test")
    ap.add_argument("--profile", help="noise profile (JSON/YAML) for the test noise; default: the model's training profile")
    ap.add_argument("--blind", action="store_true", help="also run with no ISO (noise estimated from each frame)")
    ap.add_argument("--runtime", help="torch, onnxruntime or tensorrt (default: from the file suffix)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the classical baseline")
    ap.add_argument("--scenes", type=int, default=4, help="dead-leaves scenes in the test set (default 4)")
    ap.add_argument("--size", type=int, default=512, help="dead-leaves scene size in pixels (default 512)")
    ap.add_argument("--no-photos", dest="photos", action="store_false",
                    help="leave out the sample photographs (dead-leaves scenes only)")
    ap.add_argument("--ensemble", type=int, choices=(2, 4, 8), metavar="N",
                    help="also run the model with an N-orientation self-ensemble (2, 4 or 8)")
    ap.add_argument("--border", type=int, help="the Denoiser's border (default: the model's; 0: none)")
    ap.add_argument("--band", type=int, default=0, metavar="PX",
                    help="also give the model's PSNR on the outer PX pixels of each frame and on the rest")
    ap.add_argument("--csv", help="write the rows to this CSV file")
    args = ap.parse_args(argv)

    def body() -> int:
        profile = NoiseProfile.load(args.profile) if args.profile else None
        rows = evaluate(args.model, isos=args.iso, profile=profile, blind=args.blind, runtime=args.runtime,
                        baseline=args.baseline, n_scenes=args.scenes, size=args.size,
                        photos=args.photos, ensemble=args.ensemble or 1, border=args.border, band=args.band)
        print(table(rows))
        if args.csv:
            from rawdenoise.fileio import atomic_output

            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["iso", "method", "psnr", "ssim", "frames"])
            w.writeheader()
            w.writerows(rows)
            with atomic_output(Path(args.csv)) as tmp:
                tmp.write_text(buf.getvalue())
        return 0

    return run_cli(body, "evaluate")


if __name__ == "__main__":
    sys.exit(main())
