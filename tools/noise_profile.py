"""Calibrate a sensor's noise: ``python -m tools.noise_profile --black DIR --gray DIR -o profile.json``.

Black frames (lens cap on) give the per-channel black level and the read noise; gray-card frames
at several ISOs (ISO from the file's metadata, or from sub-folders named by ISO such as
``gray/ISO800/``) give, for each ISO and channel, the mean and variance of uniform regions (given
with ``--roi``, or found automatically as low-gradient blocks). Variances come from the diagonal
Haar detail of 2x2 cells, which cancels smooth illumination falloff. Per ISO, var = k * mean +
sigma^2 is fitted (black frames at that ISO pin the intercept), then k(ISO) linearly and
sigma^2(ISO) quadratically -> a NoiseProfile (JSON, or YAML with PyYAML) usable at any ISO.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rawdenoise.errors import InputError, run_cli
from rawdenoise.noise import block_statistics, fit_variance

from rawdenoise.profile import NoiseProfile

BLOCK = 32  # automatic uniform regions: blocks of 32 x 32 plane pixels
_SKIP_SUFFIXES = {".json", ".txt", ".md", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".xmp"}


@dataclass
class IsoFit:
    iso: float
    k: float                      # DN per electron
    sigma2: float                 # DN^2
    per_channel: list[tuple[float, float]] = field(default_factory=list)
    points: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))  # (mean, variance) in DN


def iso_of(path: Path, frame, root: Path) -> float:
    """ISO from the file's metadata, else from the nearest folder named like 800 / ISO800 / iso_800."""
    iso = (frame.meta or {}).get("iso")
    if iso:
        return float(iso)
    for part in reversed(path.relative_to(root).parts[:-1]):
        m = re.fullmatch(r"(?i)(?:iso[_-]?)?(\d+(?:\.\d+)?)", part)
        if m:
            return float(m.group(1))
    raise InputError(
        f"{path}: no ISO in the file's metadata and no folder named by ISO above it; put frames in "
        f"sub-folders such as {root}/ISO800/ or give them an 'iso' in their sidecar"
    )


def read_frames(folder) -> list[tuple[Path, object]]:
    from rawdenoise.rawio import read_raw

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of RAW frames")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in _SKIP_SUFFIXES
                   and not p.name.startswith("."))
    if not paths:
        raise InputError(f"{folder} holds no RAW frames")
    return [(p, read_raw(p)) for p in paths]


def planes(frame) -> list[np.ndarray]:
    """The four same-colour planes of a frame, in the 2x2 raster order of its CFA (float64 DN)."""
    d = np.asarray(frame.data, np.float64)
    h, w = (d.shape[0] // 2) * 2, (d.shape[1] // 2) * 2
    return [d[r:h:2, c:w:2] for r in (0, 1) for c in (0, 1)]


def _haar_var(region: np.ndarray) -> tuple[float, float]:
    """(mean, variance) of a region, the variance from diagonal Haar details of its 2x2 cells."""
    h, w = (region.shape[0] // 2) * 2, (region.shape[1] // 2) * 2
    a, b = region[0:h:2, 0:w:2], region[0:h:2, 1:w:2]
    c, d = region[1:h:2, 0:w:2], region[1:h:2, 1:w:2]
    det = (a - b - c + d) / 2
    return float(region.mean()), float(np.mean(det * det))


def black_stats(frames) -> tuple[np.ndarray, dict[float, float]]:
    """Per-site black level (mean over frames) and read-noise variance per ISO (DN^2)."""
    levels, noise = [], defaultdict(list)
    for path, frame, iso in frames:
        ps = planes(frame)
        levels.append([p.mean() for p in ps])
        if iso is not None:
            noise[iso].append(np.mean([_haar_var(p)[1] for p in ps]))
    return np.mean(levels, axis=0), {iso: float(np.mean(v)) for iso, v in noise.items()}


def gray_points(frame, black: np.ndarray, rois=None, block: int = None):
    """(means, variances, smoothness, channel) in DN over uniform regions of each colour plane.

    Smoothness (see rawdenoise.noise.block_statistics, here around a quadratic surface since
    illumination falloff is smooth) is 0 for given ROIs: they are uniform by the user's word.
    """
    block = block or BLOCK
    white = float(frame.white_level)
    ms, vs, ss, cs = [], [], [], []
    for ch, plane in enumerate(planes(frame)):
        p = plane - black[ch]
        sat = 0.98 * (white - black[ch])
        if rois:
            for (y, x, h, w) in rois:  # raw pixel coordinates -> plane coordinates
                reg = p[y // 2:(y + h) // 2, x // 2:(x + w) // 2]
                if reg.size < 16 or reg.max() >= sat:
                    continue
                m, v = _haar_var(reg)
                ms.append(m)
                vs.append(v)
                ss.append(0.0)
                cs.append(ch)
        else:
            scale = white - black[ch]
            m, v, smooth = block_statistics(p[None] / scale, block=block, saturation=0.98, trend=2)
            ms += list(m * scale)
            vs += list(v * scale ** 2)
            ss += list(smooth * scale ** 2)
            cs += [ch] * len(m)
    return np.array(ms), np.array(vs), np.array(ss), np.array(cs, int)


def _fit_line(means, variances, smooth, read_var, dof):
    """k, sigma2 of var = k * mean + sigma2 over low-gradient regions; a measured read variance
    pins the intercept. Regions are first judged smooth against their own variance, then (free
    of that selection bias) against the fitted variance."""
    fixed = [(0.0, read_var, max(8.0, means.size / 4))] if read_var is not None else []
    sel = smooth <= 1.5 * variances / 4
    k, s2 = fit_variance(means[sel], variances[sel], dof=dof, fixed=fixed)
    for _ in range(2):
        sel = smooth <= 1.5 * np.maximum(k * means + s2, 1e-30) / 4
        if np.count_nonzero(sel) < 8:
            break
        k, s2 = fit_variance(means[sel], variances[sel], dof=dof, fixed=fixed)
    return k, s2


def fit_isos(gray, black_level: np.ndarray, read_noise: dict[float, float], rois=None) -> list[IsoFit]:
    by_iso = defaultdict(list)
    for path, frame, iso in gray:
        by_iso[iso].append(frame)
    fits = []
    for iso in sorted(by_iso):
        pts = [gray_points(f, black_level, rois) for f in by_iso[iso]]
        m = np.concatenate([p[0] for p in pts])
        v = np.concatenate([p[1] for p in pts])
        sm = np.concatenate([p[2] for p in pts])
        c = np.concatenate([p[3] for p in pts])
        if m.size < 8:
            raise InputError(f"ISO {iso:g}: too few uniform regions in the gray frames; give --roi or use flatter frames")
        read = read_noise.get(iso)
        dof = None if rois else (BLOCK // 2) ** 2
        k, s2 = _fit_line(m, v, sm, read, dof)
        per = []
        for ch in range(4):
            sel = c == ch
            per.append(_fit_line(m[sel], v[sel], sm[sel], read, dof) if sel.sum() >= 8 else (float("nan"), float("nan")))
        keep = sm <= 1.5 * np.maximum(k * m + s2, 1e-30) / 4
        fits.append(IsoFit(iso, k, s2, per, (m[keep], v[keep])))
    return fits


def build_profile(fits: list[IsoFit], black_level, white_level: float, name: str = "profile") -> NoiseProfile:
    isos = np.array([f.iso for f in fits])
    ks = np.array([f.k for f in fits])
    s2 = np.array([f.sigma2 for f in fits])
    # weights 1/y: fit relative errors, so low ISOs (small k, sigma2) count as much as high ones
    k_coeffs = np.polyfit(isos, ks, 1, w=1 / ks) if len(fits) >= 2 else np.array([ks[0] / isos[0], 0.0])
    deg = min(2, len(fits) - 1)
    s_coeffs = np.polyfit(isos, s2, deg, w=1 / np.maximum(s2, 1e-12)) if deg >= 1 else s2[:1]
    s_coeffs = np.concatenate([np.zeros(3 - len(s_coeffs)), s_coeffs])
    extra = {"per_iso": [{"iso": f.iso, "k": f.k, "sigma2": f.sigma2,
                          "per_channel": [list(p) for p in f.per_channel]} for f in fits]}
    return NoiseProfile(tuple(k_coeffs), tuple(s_coeffs), tuple(float(b) for b in black_level), float(white_level),
                        (float(isos.min()), float(isos.max())), name, extra)


def plot(fits: list[IsoFit], profile: NoiseProfile, folder) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from rawdenoise.errors import missing

        raise missing("matplotlib", "plots", "Noise-profile plots") from None
    from rawdenoise.fileio import atomic_output

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(7, 5))
    for f in fits:
        (pts,) = ax.plot(f.points[0], f.points[1], ".", ms=2, alpha=0.3)
        xs = np.linspace(0, max(f.points[0].max(), 1.0), 50)
        ax.plot(xs, f.k * xs + f.sigma2, "-", color=pts.get_color(), label=f"ISO {f.iso:g}: k={f.k:.3g}, "
                f"$\\sigma^2$={f.sigma2:.3g}")
    ax.set_xlabel("mean (DN above black)")
    ax.set_ylabel("variance (DN$^2$)")
    ax.set_title("Poisson-Gaussian fit per ISO")
    ax.legend(fontsize=8)
    with atomic_output(folder / "mean_variance.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    written.append(folder / "mean_variance.png")

    isos = np.array([f.iso for f in fits])
    grid = np.linspace(min(isos.min(), profile.iso_range[0]), isos.max(), 100)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(isos, [f.k for f in fits], "o", label="per-ISO fit")
    a1.plot(grid, profile.k(grid), "-", label="k(ISO), linear")
    a1.set_xlabel("ISO"), a1.set_ylabel("k (DN per electron)"), a1.legend()
    a2.plot(isos, [f.sigma2 for f in fits], "o", label="per-ISO fit")
    a2.plot(grid, profile.sigma2(grid), "-", label="$\\sigma^2$(ISO), quadratic")
    a2.set_xlabel("ISO"), a2.set_ylabel("$\\sigma^2$ (DN$^2$)"), a2.legend()
    fig.tight_layout()
    with atomic_output(folder / "k_sigma_vs_iso.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    written.append(folder / "k_sigma_vs_iso.png")
    return written


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        y, x, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--roi takes y,x,height,width in pixels, got {text!r}") from None
    if h < 8 or w < 8 or y < 0 or x < 0:
        raise argparse.ArgumentTypeError(f"--roi {text!r}: needs y, x >= 0 and a size of at least 8 x 8")
    return y, x, h, w


def calibrate(black_dir, gray_dir, rois=None, name: str = "profile") -> tuple[NoiseProfile, list[IsoFit]]:
    gray_root, black_root = Path(gray_dir), Path(black_dir) if black_dir else None
    gray = [(p, f, iso_of(p, f, gray_root)) for p, f in read_frames(gray_root)]
    if black_root is not None:
        black = []
        for p, f in read_frames(black_root):
            try:
                iso = iso_of(p, f, black_root)
            except InputError:
                iso = None  # black frames without ISO still give the black level
            black.append((p, f, iso))
        black_level, read_noise = black_stats(black)
    else:
        black_level = np.asarray(gray[0][1].black_level, np.float64)
        read_noise = {}
    whites = {float(f.white_level) for _, f, _ in gray}
    fits = fit_isos(gray, black_level, read_noise, rois)
    return build_profile(fits, black_level, max(whites), name), fits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.noise_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--black", help="folder of black frames (optional: else the files' black levels are used)")
    ap.add_argument("--gray", required=True, help="folder of gray-card frames (ISO from metadata or sub-folder names)")
    ap.add_argument("-o", "--output", required=True, help="profile file to write (.json, or .yaml with PyYAML)")
    ap.add_argument("--roi", type=_roi, action="append", help="uniform region y,x,height,width (repeatable); "
                    "default: low-gradient blocks found automatically")
    ap.add_argument("--plots", help="folder for mean-variance and k/sigma-vs-ISO plots (PNG)")
    ap.add_argument("--name", default="profile", help="a name for the profile (e.g. the camera model)")
    args = ap.parse_args(argv)

    def body() -> int:
        profile, fits = calibrate(args.black, args.gray, args.roi, args.name)
        profile.save(args.output)
        for f in fits:
            print(f"ISO {f.iso:>6g}: k = {f.k:.4g} DN/e-, sigma^2 = {f.sigma2:.4g} DN^2")
        print(f"k(ISO) = {profile.k_coeffs[0]:.4g} * ISO + {profile.k_coeffs[1]:.4g}; "
              f"sigma^2(ISO) = {profile.sigma2_coeffs[0]:.4g} * ISO^2 + {profile.sigma2_coeffs[1]:.4g} * ISO + "
              f"{profile.sigma2_coeffs[2]:.4g}")
        print(f"wrote {args.output}")
        if args.plots:
            for p in plot(fits, profile, args.plots):
                print(f"wrote {p}")
        return 0

    return run_cli(body, "noise_profile")


if __name__ == "__main__":
    sys.exit(main())
