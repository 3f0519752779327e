"""Deterministic synthetic Bayer frames and the models the benchmarks run."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

SIZES_MP = {"2MP": (1224, 1632), "12MP": (3000, 4000), "50MP": (6144, 8192)}
LEVELS = dict(cfa="RGGB", black_level=[512, 512, 512, 512], white_level=16383)


@functools.lru_cache(maxsize=3)
def frame(size: str) -> np.ndarray:
    """A noisy uint16 14-bit frame with smooth structure and sensor noise (shot + read noise, as
    the default profile gives at ISO 1600), so the blind estimate and INT8 ranges are realistic."""
    h, w = SIZES_MP[size]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scene = 0.25 + 0.2 * np.sin(xx / 97.0) * np.cos(yy / 71.0)
    from rawdenoise.profile import default_profile

    k, s2 = default_profile().normalised(1600)   # normalised units
    noisy = rng.poisson(scene / k).astype(np.float32) * np.float32(k)
    noisy += rng.normal(0.0, np.sqrt(s2), size=(h, w)).astype(np.float32)
    out = np.clip(np.rint(noisy * (16383 - 512) + 512), 0, 16383).astype(np.uint16)
    out.flags.writeable = False
    return out


def model_paths() -> dict[str, Path]:
    """The shipped default model's .pt and .onnx files: the model users get."""
    from rawdenoise.models import default_model_path

    return {"pt": default_model_path("torch"), "onnx": default_model_path("onnxruntime")}


def quantized(onnx_path: Path, workdir: Path) -> Path:
    """INT8 (QDQ) copy of an ONNX model in `workdir`, calibrated on tiles of a synthetic 2 MP frame."""
    from converters.quantize import quantize

    dst = workdir / (onnx_path.stem + ".int8.onnx")
    if not dst.exists():
        quantize(onnx_path, dst, [frame("2MP")], levels=LEVELS, samples=32, holdout=4)
    return dst
