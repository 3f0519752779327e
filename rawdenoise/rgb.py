"""RGB frames (H x W x 3) and grayscale frames (H x W or H x W x 1) to planar network input and back
(pure numpy)."""

from __future__ import annotations

import numpy as np

from .bayer import SUPPORTED_DTYPES, round_to_sensor
from .errors import InputError

_DEFAULT_WHITE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0,
                  np.dtype(np.float32): 1.0, np.dtype(np.float64): 1.0}


def check_rgb_array(img, channels: int = 3) -> np.ndarray:
    """Validate an H x W x 3 image (channels 3) or an H x W / H x W x 1 grayscale image (channels 1)."""
    kind = "RGB" if channels == 3 else "grayscale"
    if not isinstance(img, np.ndarray):
        raise InputError(f"expected a numpy array for the {kind} image, got {type(img).__name__}")
    if img.dtype.type not in SUPPORTED_DTYPES:
        allowed = ", ".join(np.dtype(t).name for t in SUPPORTED_DTYPES)
        raise InputError(f"{kind} image dtype {img.dtype} is not supported; use one of {allowed}")
    if channels == 1 and not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1)):
        raise InputError(f"expected an H x W or H x W x 1 grayscale image, got shape {img.shape}; "
                         f"this model takes one channel")
    if channels == 3 and (img.ndim != 3 or img.shape[2] != 3):
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
    """(x - black) / (white - black) as float32 (C, H, W) in the model's channel order ("L": grayscale)."""
    if img.ndim == 2:
        img = img[..., None]
    src = img[..., ::-1] if order == "BGR" else img
    out = np.empty((img.shape[2],) + img.shape[:2], dtype=np.float32)
    for c in range(img.shape[2]):
        np.subtract(src[..., c], np.float32(black), out=out[c], dtype=np.float32, casting="unsafe")
        out[c] *= np.float32(1.0 / (white - black))
    return out


def from_planar(planes: np.ndarray, black: float, white: float, dtype, order: str = "RGB",
                shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Inverse of `to_planar`, as an array of `shape` (default H x W x C); integer outputs are rounded
    and clipped to [0, white]."""
    dtype = np.dtype(dtype)
    c_n, h, w = planes.shape
    out = np.empty((h, w, c_n), dtype=dtype)
    dst = out[..., ::-1] if order == "BGR" else out
    for c in range(c_n):
        val = planes[c].astype(np.float64 if dtype == np.float64 else np.float32)
        val *= white - black
        val += black
        if dtype.kind in "ui":
            round_to_sensor(val, white)
        dst[..., c] = val
    return out if shape is None else out.reshape(shape)
