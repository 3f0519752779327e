"""Read RAW frames: camera files through rawpy, `.npy` + JSON sidecar, headerless sensor dumps.

Every reader returns a `RawFrame`: the visible 2-D CFA area (read-only), its 2x2 phase, the black
level per CFA site in the 2x2 order of that phase, the white level and a metadata dict. rawpy is
imported only when a camera file is opened, so `.npy` and headerless dumps work without it.
Writers live in `rawdenoise.dng` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import bayer
from .dng import META_SIDECAR_KEYS, write_dng, write_npy, write_output, write_tiff  # noqa: F401 (re-exported)
from .errors import InputError, RawFileError, missing

HEADERLESS_SUFFIXES = (".raw", ".bin")
NPY_SUFFIXES = (".npy",)
_OVERRIDE_KEYS = ("cfa", "black_level", "white_level", "iso", "exposure_time", "make", "model")
_HEADERLESS_KEYS = ("width", "height", "dtype", "byte_order", "offset")
_BYTE_ORDERS = {"little": "<", "big": ">", "<": "<", ">": ">", "le": "<", "be": ">"}


@dataclass(frozen=True)
class RawFrame:
    """One Bayer frame with the metadata needed to denoise it and to write it back.

    `data` is a read-only view: denoising never writes into it (copy it to edit).
    `black_level` has 4 values in the 2x2 raster order of `cfa`.
    """

    data: np.ndarray
    cfa: str
    black_level: tuple[float, float, float, float]
    white_level: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    @property
    def iso(self):
        return self.meta.get("iso")

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (used by `rawdenoise info`)."""
        out = {
            "height": int(self.data.shape[0]),
            "width": int(self.data.shape[1]),
            "dtype": str(self.data.dtype),
            "cfa": self.cfa,
            "black_level": [_num(v) for v in self.black_level],
            "white_level": _num(self.white_level),
        }
        for k, v in self.meta.items():
            if v is None:
                continue
            out[k] = np.asarray(v).tolist() if isinstance(v, (np.ndarray, tuple)) else v
        return out


def _num(v):
    f = float(v)
    return int(f) if f.is_integer() else f


def make_frame(data: np.ndarray, cfa, black_level, white_level, meta: dict | None = None) -> RawFrame:
    """Validate and freeze a frame: 2-D Bayer data, a 2x2 phase, sane levels."""
    try:
        bayer.check_bayer_array(data)
        cfa_s = bayer.parse_cfa(cfa)
        black, white = bayer.check_levels(black_level, white_level, 4)
    except InputError as e:
        src = (meta or {}).get("source")
        raise type(e)(f"{src}: {e}" if src else str(e)) from None
    view = data.view()
    view.flags.writeable = False
    return RawFrame(view, cfa_s, tuple(float(b) for b in black), float(white), dict(meta or {}))


def _split_overrides(overrides: dict) -> tuple[dict, dict]:
    unknown = set(overrides) - set(_OVERRIDE_KEYS) - set(_HEADERLESS_KEYS)
    if unknown:
        allowed = ", ".join(_OVERRIDE_KEYS + _HEADERLESS_KEYS)
        raise InputError(f"read_raw got unknown option(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return ({k: v for k, v in given.items() if k in _OVERRIDE_KEYS},
            {k: v for k, v in given.items() if k in _HEADERLESS_KEYS})


def read_raw(path, **overrides) -> RawFrame:
    """Read one RAW frame; keyword arguments (cfa, black_level, white_level, iso, exposure_time,
    make, model) win over what the file says.

    - `.npy`: the array plus a JSON sidecar `X.json` next to `X.npy` with cfa, black_level (scalar or
      4), white_level and optionally iso, exposure_time, make, model.
    - `.raw` / `.bin`: headerless sensor dumps; width, height, cfa, black_level and white_level are
      required, with dtype='uint16', byte_order='little', offset=0 (bytes to skip).
    - anything else: a camera RAW file or CFA DNG read with rawpy (LibRaw).
    """
    path = Path(path)
    levels, layout = _split_overrides(overrides)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise RawFileError(f"{path} does not exist or is not a file")
    if suffix in HEADERLESS_SUFFIXES:
        return _read_headerless(path, levels, layout)
    if layout:
        raise InputError(
            f"{', '.join(sorted(layout))} only apply to headerless .raw/.bin dumps, not to {path.name}"
        )
    if suffix in NPY_SUFFIXES:
        return _read_npy(path, levels)
    if suffix in (".tif", ".tiff"):
        frame = _read_cfa_tiff(path, levels)
        if frame is not None:
            return frame
    return _read_rawpy(path, levels)


# ---- .npy + sidecar -------------------------------------------------------------------------------
def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def _read_npy(path: Path, overrides: dict) -> RawFrame:
    try:
        # allow_pickle=False: an .npy never runs code when loaded
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RawFileError(f"{path} is not a readable .npy array ({e})") from None
    side = sidecar_path(path)
    meta_file: dict[str, Any] = {}
    if side.is_file():
        try:
            meta_file = json.loads(side.read_text())
        except (ValueError, OSError, UnicodeDecodeError) as e:
            raise RawFileError(f"sidecar {side} is not valid JSON ({e}); fix or delete it") from None
        if not isinstance(meta_file, dict):
            raise RawFileError(f"sidecar {side} must hold a JSON object with cfa, black_level, white_level")
    merged = {**meta_file, **overrides}
    missing_keys = [k for k in ("cfa", "black_level", "white_level") if merged.get(k) is None]
    if missing_keys:
        raise InputError(
            f"{path.name} needs {', '.join(missing_keys)}: put them in the sidecar {side.name} "
            f'(e.g. {{"cfa": "RGGB", "black_level": 512, "white_level": 16383}}) or pass them as arguments'
        )
    meta = {k: merged.get(k) for k in ("make", "model", "iso", "exposure_time")}
    for k in META_SIDECAR_KEYS:
        if k in merged:
            meta[k] = merged[k]
    meta["source"] = str(path)
    return make_frame(np.asarray(data), merged["cfa"], merged["black_level"], merged["white_level"], meta)


# ---- 16-bit CFA TIFF (dng.write_tiff) -----------------------------------------------------------------
def _read_cfa_tiff(path: Path, overrides: dict) -> RawFrame | None:
    """A greyscale mosaic TIFF whose ImageDescription holds cfa/black_level/white_level as JSON
    (what `write_tiff` writes); None for any other TIFF, which then goes to LibRaw."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            info = json.loads(page.description or "null")
            if not (isinstance(info, dict) and {"cfa", "black_level", "white_level"} <= set(info)):
                return None
            if page.photometric != tifffile.PHOTOMETRIC.MINISBLACK or len(page.shape) != 2:
                return None
            data = page.asarray()
    except (tifffile.TiffFileError, OSError, ValueError, TypeError, IndexError, KeyError):
        return None  # not this kind of TIFF: LibRaw decides
    merged = {**info, **overrides}
    meta = {k: merged.get(k) for k in ("make", "model", "iso", "exposure_time")}
    meta["source"] = str(path)
    return make_frame(data, merged["cfa"], merged["black_level"], merged["white_level"], meta)


# ---- headerless dumps -----------------------------------------------------------------------------
def _positive_int(name: str, v) -> int:
    try:
        i = int(str(v).strip()) if not isinstance(v, float) else (int(v) if v.is_integer() else -1)
    except ValueError:
        i = -1
    if i < 0 or (name != "offset" and i == 0):
        kind = "non-negative" if name == "offset" else "positive"
        raise InputError(f"{name} must be a {kind} integer, got {v!r}")
    return i


def _read_headerless(path: Path, levels: dict, layout: dict) -> RawFrame:
    need = [k for k in ("width", "height") if k not in layout] + [
        k for k in ("cfa", "black_level", "white_level") if k not in levels]
    if need:
        flags = " ".join(f"--{k.split('_')[0]}" for k in need)
        raise InputError(
            f"{path.name} is a headerless sensor dump: it carries no size or levels, so "
            f"{', '.join(need)} must be given (CLI: {flags})"
        )
    width = _positive_int("width", layout["width"])
    height = _positive_int("height", layout["height"])
    offset = _positive_int("offset", layout.get("offset", 0))
    try:
        dt = np.dtype(layout.get("dtype", "uint16"))
    except TypeError:
        dt = None
    if dt is None or dt.type not in (np.uint8, np.uint16, np.uint32, np.float32):
        raise InputError(f"dtype {layout.get('dtype')!r} is not supported for headerless dumps; "
                         f"use uint8, uint16, uint32 or float32")
    order = _BYTE_ORDERS.get(str(layout.get("byte_order", "little")).lower())
    if order is None:
        raise InputError(f"byte_order {layout.get('byte_order')!r} is not supported; use little or big")
    file_dt = dt.newbyteorder(order) if dt.itemsize > 1 else dt
    expected = offset + width * height * dt.itemsize
    size = path.stat().st_size
    if size != expected:
        raise RawFileError(
            f"{path.name} has {size} bytes but {width} x {height} {dt.name} pixels after a {offset}-byte "
            f"offset need exactly {expected}; check --width/--height/--dtype/--offset"
        )
    raw = np.fromfile(path, dtype=file_dt, count=width * height, offset=offset).reshape(height, width)
    if raw.dtype != dt:
        raw = raw.astype(dt)  # native byte order for the rest of the pipeline
    meta = {k: levels.get(k) for k in ("make", "model", "iso", "exposure_time")}
    meta["source"] = str(path)
    return make_frame(raw, levels["cfa"], levels["black_level"], levels["white_level"], meta)


# ---- camera files through rawpy --------------------------------------------------------------------
def _import_rawpy():
    try:
        import rawpy
    except ImportError:
        raise missing("rawpy", "raw", "Reading camera RAW files") from None
    return rawpy


def _rawpy_levels(rp, pattern: np.ndarray, data: np.ndarray) -> tuple[list[float], float]:
    """Black per 2x2 position and white level, from LibRaw's per-colour-index values.

    LibRaw's white level comes from camera tables and is sometimes below what the sensor really
    records; clipping to it would destroy highlights, so a white level the data exceeds is
    replaced by the camera's per-channel white level or else by the data's bit depth.
    """
    per_index = list(rp.black_level_per_channel)  # indexed by colour index (raw_pattern value)
    black = [float(per_index[int(pattern[r, c])]) for r in (0, 1) for c in (0, 1)]
    top = float(data.max()) if data.size else 0.0
    white = float(rp.white_level or 0)
    if white <= max(black) or top > white:
        cam_white = [float(v) for v in (getattr(rp, "camera_white_level_per_channel", None) or []) if v]
        if cam_white and max(cam_white) > max(black) and max(cam_white) >= top:
            white = max(cam_white)
        else:
            # the smallest 2^n - 1 holding the largest value (at least 8 bits)
            white = float(2 ** max(8, math.ceil(math.log2(top + 1))) - 1)
    return black, white


def _rawpy_meta(rp, path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {"make": None, "model": None, "iso": None, "exposure_time": None}
    other = getattr(rp, "other", None)  # rawpy >= 0.25: iso, shutter, ...
    if other is not None:
        iso = getattr(other, "iso_speed", None)
        meta["iso"] = float(iso) if iso else None
        sh = getattr(other, "shutter_speed", None)
        meta["exposure_time"] = float(sh) if sh else None
    # rgb_xyz_matrix rows are camera colours, columns XYZ: the DNG ColorMatrix (XYZ -> camera).
    # LibRaw leaves it at zero for DNGs (their own matrix is read from the tags below).
    m = np.asarray(rp.rgb_xyz_matrix, dtype=np.float64)[:3, :3]
    meta["color_matrix"] = m.tolist() if np.any(m) else None
    wb = [float(v) for v in (rp.camera_whitebalance or [])]
    if len(wb) >= 3 and all(v > 0 for v in wb[:3]):
        meta["wb"] = wb[:4]
        g = wb[1]
        meta["as_shot_neutral"] = [g / wb[0], 1.0, g / wb[2]]
    else:
        meta["wb"], meta["as_shot_neutral"] = None, None
    flip = int(getattr(rp.sizes, "flip", 0) or 0)
    meta["orientation"] = _FLIP_TO_ORIENTATION.get(flip, 1)
    meta["source"] = str(path)
    return meta


# LibRaw `flip` -> EXIF/TIFF Orientation
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def _tiff_meta(path: Path) -> dict[str, Any]:
    """Make, model and DNG colour tags from a TIFF-based RAW file (DNG, CR2, NEF, ARW, ...).

    rawpy exposes neither the camera name nor a DNG's own ColorMatrix1, so the first IFD is read
    with tifffile when it is installed; files that are not TIFF-based simply give nothing here.
    """
    try:
        import tifffile
    except ImportError:
        return {}
    out: dict[str, Any] = {}
    try:
        with tifffile.TiffFile(path) as tf:
            tags = tf.pages[0].tags
            for key, code in (("make", 271), ("model", 272), ("unique_camera_model", 50708)):
                t = tags.get(code)
                if t is not None and isinstance(t.value, str) and t.value.strip("\x00 "):
                    out[key] = t.value.strip("\x00 ")
            cm = tags.get(50721)  # ColorMatrix1 (XYZ -> camera)
            if cm is not None:
                v = np.asarray(cm.value, dtype=np.float64).ravel()
                if v.size == 18:  # rationals given as (numerator, denominator) pairs
                    v = v[0::2] / v[1::2]
                if v.size == 9:
                    out["color_matrix"] = v.reshape(3, 3).tolist()
            illum = tags.get(50778)
            if illum is not None:
                out["calibration_illuminant"] = int(np.ravel(illum.value)[0])
            neutral = tags.get(50728)
            if neutral is not None:
                v = np.asarray(neutral.value, dtype=np.float64).ravel()
                if v.size == 6:
                    v = v[0::2] / v[1::2]
                if v.size == 3 and np.all(v > 0):
                    out["as_shot_neutral"] = v.tolist()
    except (tifffile.TiffFileError, OSError, ValueError, TypeError, IndexError, KeyError, ZeroDivisionError):
        return {}  # not TIFF-based (CR3, RAF, ...) or odd tags: this metadata is optional
    return out


def _libraw_message(e: Exception) -> str:
    msg = e.args[0] if e.args else type(e).__name__
    if isinstance(msg, bytes):
        msg = msg.decode("ascii", "replace")
    return f"{type(e).__name__}: {msg}"


@contextlib.contextmanager
def _quiet_c_stderr():
    """LibRaw prints its own messages ("Unexpected end of file") on the C stderr; the error we
    raise says the same in one sentence, so they are silenced while LibRaw runs."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): leave it alone
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_rawpy(path: Path, overrides: dict) -> RawFrame:
    rawpy = _import_rawpy()
    with _quiet_c_stderr():
        return _read_rawpy_quiet(rawpy, path, overrides)


def _read_rawpy_quiet(rawpy, path: Path, overrides: dict) -> RawFrame:
    try:
        rp = rawpy.imread(str(path))
    except rawpy.LibRawFileUnsupportedError:
        raise RawFileError(
            f"{path} is not a RAW file LibRaw can read (an unsupported format, or not a camera RAW file)"
        ) from None
    except (rawpy.LibRawError, OSError) as e:
        empty = " (the file is empty)" if path.stat().st_size == 0 else ""
        raise RawFileError(
            f"{path} cannot be read as a RAW file: it is truncated, damaged or unreadable{empty} "
            f"(LibRaw: {_libraw_message(e)})"
        ) from None
    with rp:
        try:
            if rp.raw_type == rawpy.RawType.Stack or rp.raw_pattern is None:
                raise RawFileError(
                    f"{path} holds no CFA mosaic (a linear/demosaiced DNG or a scanner file); "
                    f"only 2x2 Bayer RAW files can be denoised"
                )
            pattern = np.asarray(rp.raw_pattern)
            if pattern.shape != (2, 2):
                kind = "an X-Trans 6x6" if pattern.shape == (6, 6) else f"a {pattern.shape[0]}x{pattern.shape[1]}"
                raise RawFileError(
                    f"{path} has {kind} colour filter array; only 2x2 Bayer sensors "
                    f"(RGGB, BGGR, GRBG, GBRG) are supported"
                )
            desc = rp.color_desc.decode("ascii", "replace") if isinstance(rp.color_desc, bytes) else rp.color_desc
            try:
                cfa = bayer.parse_cfa(pattern, desc)
            except InputError:
                raise RawFileError(
                    f"{path} has colour filter pattern {pattern.tolist()} over colours {desc!r}, which is not "
                    f"an RGB Bayer mosaic; only RGGB, BGGR, GRBG, GBRG sensors are supported"
                ) from None
            data = np.array(rp.raw_image_visible, copy=True)  # own the buffer: rp is closed below
            black, white = _rawpy_levels(rp, pattern, data)
            meta = _rawpy_meta(rp, path)
        except rawpy.LibRawError as e:
            raise RawFileError(
                f"{path} is truncated or damaged: LibRaw stopped while decoding its pixels ({_libraw_message(e)})"
            ) from None
    meta.update(_tiff_meta(path))  # the file's own tags are exact; LibRaw's copies are derived
    meta.update({k: overrides[k] for k in ("iso", "exposure_time", "make", "model") if k in overrides})
    return make_frame(data, overrides.get("cfa", cfa), overrides.get("black_level", black),
                      overrides.get("white_level", white), meta)
