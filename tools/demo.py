"""`rawdenoise demo`: a self-contained demonstration on a synthesised RAW frame.

Part of the model factory (it synthesises its frame with tools.synth); the `rawdenoise` command
finds it through the `rawdenoise.commands` entry point declared in pyproject.toml.

A generated scene (dead leaves) is unprocessed to a camera RAW mosaic, given the Poisson-Gaussian
noise of the default model's training profile at ISO 3200, written as a DNG, denoised by the
default model, and written again; a side-by-side PNG (noisy | denoised | clean) and the PSNR
against the clean frame show what the model did. Needs torch or onnxruntime, and pillow for the PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rawdenoise.errors import InputError, missing


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="rawdenoise-demo", help="output folder (default ./rawdenoise-demo)")
    p.add_argument("--iso", type=float, default=3200.0, help="ISO of the synthesised shot (default 3200)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(1024, 1536),
                   help="frame size in pixels (default 1024 1536)")
    p.add_argument("--seed", type=int, default=1, help="seed of the scene and the noise (default 1)")
    p.add_argument("--runtime", help="torch or onnxruntime (default: onnxruntime when installed)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _write_png(path: Path, panels: list[np.ndarray], overwrite: bool) -> None:
    try:
        from PIL import Image
    except ImportError:
        raise missing("pillow", "raw", "The demo's side-by-side PNG") from None
    from rawdenoise.fileio import atomic_output

    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    with atomic_output(path, overwrite=overwrite) as tmp:
        Image.fromarray(np.concatenate(row, axis=1)).save(tmp, format="PNG")


def camera_meta(cam: dict) -> dict:
    """The DNG colour metadata of the synthetic camera `tools.synth.unprocess` drew (`cam`), so that
    RAW developers render its frames in the clean scene's colours.

    unprocess maps linear sRGB to camera RGB by `ccm` (rows summing to 1) and then divides red and
    blue by the white-balance gains, so XYZ -> camera is diag(1/r, 1, 1/b) @ ccm @ (XYZ -> sRGB),
    for D65 light as sRGB's white is; a D65 white (sRGB 1, 1, 1) lands on (1/r, 1, 1/b), which is
    the as-shot neutral. Matrix and neutral describe the same camera, so a developer's white
    balance and colour matrix undo exactly what unprocess did (tone curve aside: developers apply
    their own).
    """
    from rawdenoise.dng import CALIBRATION_D65, XYZ_TO_SRGB

    r_gain, b_gain = (float(g) for g in cam["wb"])
    to_camera = np.diag([1.0 / r_gain, 1.0, 1.0 / b_gain]) @ np.asarray(cam["ccm"]) @ np.asarray(XYZ_TO_SRGB)
    return {"make": "rawdenoise", "model": "synthetic demo camera",
            "color_matrix": to_camera.tolist(), "calibration_illuminant": CALIBRATION_D65,
            "as_shot_neutral": [1.0 / r_gain, 1.0, 1.0 / b_gain]}


def run(args) -> int:
    from rawdenoise import Denoiser
    from rawdenoise.dng import write_dng
    from rawdenoise.profile import default_profile
    from rawdenoise.rawio import make_frame

    from .synth import add_sensor_noise, dead_leaves, develop, to_dn, unprocess

    h, w = (int(v) for v in args.size)
    if h < 64 or w < 64 or h % 2 or w % 2:
        raise InputError(f"--size must be two even numbers >= 64, got {h} {w}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    # the scene, the camera and the shot
    rng = np.random.default_rng(args.seed)
    profile = default_profile()
    clean, cam = unprocess(dead_leaves(h, w, rng), rng, "RGGB", exposure=0.6, return_params=True)
    k, s2 = profile.normalised(args.iso)
    noisy = add_sensor_noise(clean, k, s2, rng)
    noisy_dn = to_dn(noisy, profile)
    meta = {"iso": args.iso, **camera_meta(cam)}
    frame = make_frame(noisy_dn, "RGGB", list(profile.black_level), profile.white_level, meta)
    write_dng(out / "noisy.dng", noisy_dn, like=frame, overwrite=args.overwrite)

    with Denoiser.load("default", runtime=args.runtime) as dn:
        denoised_dn = dn.run(frame)
        runtime = dn.runtime.name if hasattr(dn.runtime, "name") else type(dn.runtime).__name__
    write_dng(out / "denoised.dng", denoised_dn, like=frame, overwrite=args.overwrite)

    norm = lambda d: (d.astype(np.float64) - np.mean(profile.black_level)) / profile.range  # noqa: E731
    p_in, p_out = _psnr(norm(noisy_dn), clean), _psnr(norm(denoised_dn), clean)
    _write_png(out / "side_by_side.png",
               [develop(norm(noisy_dn), "RGGB", cam), develop(norm(denoised_dn), "RGGB", cam),
                develop(clean, "RGGB", cam)], args.overwrite)
    print(f"synthesised a {w} x {h} RAW at ISO {args.iso:g} (profile {profile.name}); denoised with the "
          f"default model on {runtime}")
    print(f"PSNR against the clean frame: noisy {p_in:.2f} dB -> denoised {p_out:.2f} dB ({p_out - p_in:+.2f} dB)")
    print(f"wrote {out / 'noisy.dng'}, {out / 'denoised.dng'} and {out / 'side_by_side.png'} "
          f"(noisy | denoised | clean)")
    print("next: rawdenoise denoise YOUR_FILE.dng -o denoised.dng (or .CR3, .NEF, .ARW, ...)")
    return 0

