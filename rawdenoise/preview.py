"""Before/after preview: both frames developed by LibRaw with the same settings, side by side.

Both the original and the denoised mosaic are written to temporary DNGs carrying the same
metadata and developed identically (camera white balance, linear output, one exposure scale taken
from the original), so the only difference in the picture is the denoising.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .errors import missing
from .fileio import atomic_output

GAP = 8  # pixels of white between the two halves
HALF_SIZE_ABOVE = 2048  # develop at half resolution beyond this many pixels on a side


def _develop(path: Path, half_size: bool) -> np.ndarray:
    import rawpy

    with rawpy.imread(str(path)) as rp:
        rgb = rp.postprocess(use_camera_wb=True, no_auto_bright=True, gamma=(1, 1), output_bps=16,
                             half_size=half_size, user_flip=0)
    return rgb.astype(np.float32) / 65535.0


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def render(frame, denoised: np.ndarray) -> np.ndarray:
    """uint8 H x (2W + GAP) x 3 sRGB image: original on the left, denoised on the right."""
    try:
        import rawpy  # noqa: F401
    except ImportError:
        raise missing("rawpy", "raw", "The before/after preview") from None
    from .dng import write_dng

    half = max(frame.data.shape) > HALF_SIZE_ABOVE
    with tempfile.TemporaryDirectory(prefix="rawdenoise-preview-") as tmp:
        before_p, after_p = Path(tmp) / "before.dng", Path(tmp) / "after.dng"
        write_dng(before_p, np.asarray(frame.data), like=frame)
        write_dng(after_p, denoised, like=frame)
        before, after = _develop(before_p, half), _develop(after_p, half)
    # one exposure for both: the original's 99th percentile maps to 90 % of full scale
    ref = float(np.percentile(before.max(axis=2), 99)) or 1.0
    scale = 0.9 / ref
    h, w, _ = before.shape
    canvas = np.ones((h, 2 * w + GAP, 3), dtype=np.float32)
    canvas[:, :w] = _srgb_encode(before * scale)
    canvas[:, w + GAP:] = _srgb_encode(after * scale)
    return np.round(canvas * 255.0).astype(np.uint8)


def write_preview(path, frame, denoised: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write the before/after preview as PNG (atomically)."""
    try:
        from PIL import Image
    except ImportError:
        raise missing("pillow", "raw", "Writing the preview PNG") from None
    image = render(frame, denoised)
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        Image.fromarray(image, mode="RGB").save(tmp, format="PNG")
    return path
