"""RGB frames (H x W x 3) to planar network input and back (pure numpy)."""

from __future__ import annotations

import numpy as np

from .bayer import SUPPORTED_DTYPES, round_to_sensor
from .errors import InputError

_DEFAULT_WHITE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0,
                  np.dtype(np.float32): 1.0, np.dtype(np.float64): 1.0}


def check_rgb_array(img) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise InputError(f"expected a numpy array for the RGB image, got {type(img).__name__}")
    if img.dtype.type not in SUPPORTED_DTYPES:
        allowed = ", ".join(np.dtype(t).name for t in SUPPORTED_DTYPES)
        raise InputError(f"RGB image dtype {img.dtype} is not supported; use one of {allowed}")
    if img.ndim != 3 or img.shape[2] != 3:
        hint = " (a Bayer mosaic? this model takes demosaiced RGB)" if img.ndim == 2 else ""
        raise InputError(f"expected an H x W x 3 RGB image, got shape {img.shape}{hint}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(f"RGB image {img.shape} is empty")
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        raise InputError("RGB image contains NaN or Inf values; replace them (e.g. np.nan_to_num) first")
    return img


def default_white(dtype) -> float | None:
    return _DEFAULT_WHITE.get(np.dtype(dtype))


def to_planar(img: np.ndarray, black: float, white: float, order: str = "RGB") -> np.ndarray:
    """(x - black) / (white - black) as float32 (3, H, W) in the model's channel order."""
    src = img if order == "RGB" else img[..., ::-1]
    out = np.empty((3,) + img.shape[:2], dtype=np.float32)
    for c in range(3):
        np.subtract(src[..., c], np.float32(black), out=out[c], dtype=np.float32, casting="unsafe")
        out[c] *= np.float32(1.0 / (white - black))
    return out


def from_planar(planes: np.ndarray, black: float, white: float, dtype, order: str = "RGB") -> np.ndarray:
    """Inverse of `to_planar`; integer outputs are rounded and clipped to [0, white]."""
    dtype = np.dtype(dtype)
    h, w = planes.shape[1:]
    out = np.empty((h, w, 3), dtype=dtype)
    dst = out if order == "RGB" else out[..., ::-1]
    for c in range(3):
        val = planes[c].astype(np.float64 if dtype == np.float64 else np.float32)
        val *= white - black
        val += black
        if dtype.kind in "ui":
            round_to_sensor(val, white)
        dst[..., c] = val
    return out
