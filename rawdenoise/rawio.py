"""Read RAW frames: camera files through rawpy, `.npy` + JSON sidecar, headerless sensor dumps.

Every reader returns a `RawFrame`: the visible 2-D CFA area (read-only), its 2x2 phase, the black
level per CFA site in the 2x2 order of that phase, the white level and a metadata dict. rawpy is
imported only when a camera file is opened, so `.npy` and headerless dumps work without it.
Writers live in `rawdenoise.dng` and are re-exported here.

Metadata (`RawFrame.meta`), as far as the file has it: make, model, iso, exposure_time,
orientation (EXIF), source; colour in DNG terms, so that a DNG written from the frame develops like
the original: color_matrix (XYZ -> camera, the DNG ColorMatrix1), calibration_illuminant (its EXIF
light source, 21 = D65), as_shot_neutral (camera RGB of the as-shot white), wb (the camera's
multipliers, as LibRaw reports them), unique_camera_model; and `dng`, a dict of further DNG tags by
name (second and third matrices, forward matrices, calibration, analog balance, baseline exposure,
profile tables and names, default crop and scale, opcode lists, ... see `dng.CARRIED_TAGS`): numbers
or flat lists of numbers (rationals as floats, matrices row by row), text as str, binary blocks as
bytes. For a DNG source these are its own tags; for other camera files, LibRaw's camera matrix (for
D65), its white balance and crop.
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

from . import bayer, dng
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
            if isinstance(v, dict):  # meta["dng"]: binary blocks (opcode lists) by their size
                v = {n: f"<{len(x)} bytes>" if isinstance(x, (bytes, bytearray)) else x for n, x in v.items()}
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
    if np.asarray(data).dtype.kind == "f":
        # float frames are normalised unless said otherwise, as for arrays given to Denoiser.run
        for key, default in (("black_level", 0.0), ("white_level", 1.0)):
            if merged.get(key) is None:
                merged[key] = default
    missing_keys = [k for k in ("cfa", "black_level", "white_level") if merged.get(k) is None]
    if missing_keys:
        raise InputError(
            f"{path.name} needs {', '.join(missing_keys)}: put them in the sidecar {side.name} "
            f'(e.g. {{"cfa": "RGGB", "black_level": 512, "white_level": 16383}}) or pass them as arguments'
        )
    meta = {k: merged.get(k) for k in ("make", "model", "iso", "exposure_time")}
    for k in META_SIDECAR_KEYS:
        if k in merged:
            meta[k] = dng.dng_meta_from_json(merged[k]) if k == "dng" else merged[k]
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
            f"{', '.join(need)} must be given: rawdenoise.read_raw(path, {'=..., '.join(need)}=...) and pass the "
            f"frame it returns (command line: {flags})"
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
    meta.update(libraw_colour(rp))
    crop = libraw_crop(rp.sizes)
    if crop:
        meta["dng"] = crop
    flip = int(getattr(rp.sizes, "flip", 0) or 0)
    meta["orientation"] = _FLIP_TO_ORIENTATION.get(flip, 1)
    meta["source"] = str(path)
    return meta


# LibRaw `flip` -> EXIF/TIFF Orientation
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


# ---- colour of camera files (LibRaw) --------------------------------------------------------------
def _multipliers(values) -> list[float] | None:
    """R, G, B white-balance multipliers, or None where LibRaw has none (zeros, -1, absurd ratios)."""
    wb = [float(v) for v in (values if values is not None else [])][:3]
    if len(wb) < 3 or not all(math.isfinite(v) and v > 0 for v in wb):
        return None
    return wb if max(wb) / min(wb) < 100 else None


def libraw_colour(rp) -> dict[str, Any]:
    """The colour of a camera file as LibRaw knows it, in the terms of a DNG written from it.

    `rgb_xyz_matrix` is LibRaw's cam_xyz: XYZ -> camera RGB for D65 light, one row per camera
    colour. LibRaw's tables hold it in units of 1/10000 and divide when loading it, so rawpy gives
    the plain matrix, e.g. 1.4603 for a table entry 14603; it is a DNG ColorMatrix for
    CalibrationIlluminant D65 (the scale does not matter: developers normalise it). It is zero when
    LibRaw has no table entry; a matrix LibRaw read from the file itself (`color_matrix`, camera ->
    sRGB with rows summing to 1) is then turned back into XYZ -> camera with the daylight multipliers.
    The as-shot white is the camera's multipliers, or LibRaw's daylight ones when the file has none
    (what dcraw -w falls back to).
    """
    out: dict[str, Any] = {"color_matrix": None, "calibration_illuminant": None}
    daylight = _multipliers(getattr(rp, "daylight_whitebalance", None))
    cam_xyz = np.asarray(rp.rgb_xyz_matrix, dtype=np.float64)[:3, :3]
    if np.all(np.isfinite(cam_xyz)) and np.any(cam_xyz):
        # rawpy hands out float32: keep the table's decimals (1.4603, not 1.4602999687)
        out["color_matrix"] = [[float(str(np.float32(v))) for v in row] for row in cam_xyz]
    else:
        rgb_cam = np.asarray(getattr(rp, "color_matrix", np.zeros((3, 4))), dtype=np.float64)[:3, :3]
        # LibRaw uses a file's own matrix from this size on (smaller ones are placeholders)
        if daylight and rgb_cam[0, 0] > 0.125 and abs(np.linalg.det(rgb_cam)) > 1e-6:
            cam_xyz = np.diag([1.0 / v for v in daylight]) @ np.linalg.inv(rgb_cam) @ np.asarray(dng.XYZ_TO_SRGB)
            out["color_matrix"] = cam_xyz.tolist()
    if out["color_matrix"] is not None:
        out["calibration_illuminant"] = dng.CALIBRATION_D65
    wb = _multipliers(rp.camera_whitebalance)
    out["wb"] = [float(v) for v in rp.camera_whitebalance][:4] if wb else None
    white = wb or daylight
    out["as_shot_neutral"] = [white[1] / white[0], 1.0, white[1] / white[2]] if white else None
    return out


def libraw_crop(sizes) -> dict[str, list[int]]:
    """The crop LibRaw reports for a camera file (its raw_inset_crops, in raw pixel positions) as a
    DNG DefaultCropOrigin/Size relative to the visible area, when it lies inside it and is smaller."""
    w, h = int(sizes.width), int(sizes.height)
    cw, ch = int(getattr(sizes, "crop_width", 0) or 0), int(getattr(sizes, "crop_height", 0) or 0)
    x = int(getattr(sizes, "crop_left_margin", 0) or 0) - int(sizes.left_margin)
    y = int(getattr(sizes, "crop_top_margin", 0) or 0) - int(sizes.top_margin)
    if cw <= 0 or ch <= 0 or x < 0 or y < 0 or x + cw > w or y + ch > h or (cw, ch) == (w, h):
        return {}
    return {"DefaultCropOrigin": [x, y], "DefaultCropSize": [cw, ch]}


# ---- tags of TIFF-based files and DNGs (tifffile) ---------------------------------------------------
def _tag_number_list(tag) -> list[float] | None:
    """Numbers of a tifffile tag; rationals come as (numerator, denominator) pairs."""
    v = tag.value
    if isinstance(v, (str, bytes)):
        return list(v) if isinstance(v, bytes) else None
    a = np.asarray(v if isinstance(v, (tuple, list, np.ndarray)) else [v], dtype=np.float64).ravel()
    if int(tag.dtype) in (5, 10):  # RATIONAL, SRATIONAL
        num, den = a[0::2], a[1::2]
        if num.size != den.size or np.any(den == 0):
            return None  # 0/0 means "unknown" in DNG
        a = num / den
    return a.tolist()


def _tag_value(tag, spec):
    """A tifffile tag's value in the form meta["dng"] keeps (see rawdenoise.dng.CARRIED_TAGS)."""
    if spec.type == dng.TEXT:
        v = tag.value
        text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        return text.rstrip("\0").strip() or None
    if spec.type == dng.UNDEFINED:
        v = tag.value
        return bytes(v) if isinstance(v, bytes) else bytes(int(x) & 0xFF for x in np.ravel(v))
    vals = _tag_number_list(tag)
    if vals is None:
        return None
    if spec.type in (dng.SHORT, dng.LONG):
        vals = [int(x) for x in vals]
    return vals[0] if spec.count == 1 and len(vals) == 1 else vals


def _walk_ifds(page, depth: int = 0):
    yield page
    if depth < 2 and getattr(page, "subifds", None):
        try:
            subs = list(page.pages)
        except (ValueError, OSError, IndexError, KeyError, TypeError):  # a damaged SubIFD (TiffFileError
            subs = []  # is a ValueError) is skipped: IFD0 and the pixels LibRaw read still count
        for sub in subs:
            yield from _walk_ifds(sub, depth + 1)


def _raw_ifd(ifd0, sizes):
    """The IFD holding the mosaic LibRaw decoded: a CFA image, full resolution, of LibRaw's raw size."""
    cfa = [p for p in _walk_ifds(ifd0)
           if int(p.photometric or 0) == dng.PHOTOMETRIC_CFA and not (int(p.subfiletype or 0) & 1)]
    same = [p for p in cfa if (p.imagewidth, p.imagelength) == (sizes.raw_width, sizes.raw_height)]
    return (same or cfa or [ifd0])[0]


def _dng_tags(ifd0, raw, little_endian: bool) -> dict[str, Any]:
    """meta["dng"] of a DNG: each carried tag from the raw IFD, else from IFD0 (where the spec puts
    camera-profile tags)."""
    out: dict[str, Any] = {}
    for name, spec in dng.CARRIED_TAGS.items():
        tag = raw.tags.get(spec.code) or ifd0.tags.get(spec.code)
        if tag is None or (spec.file_byte_order and not little_endian):
            continue  # binary blocks in big-endian order would be misread in our little-endian file
        value = _tag_value(tag, spec)
        if value is not None:
            out[name] = value
    version = ifd0.tags.get(50706)
    if version is not None:
        out["DNGVersion"] = [int(b) for b in bytes(version.value)[:4]]
    return out


def _map_geometry(tags: dict[str, Any], raw, sizes) -> None:
    """Tags that name pixel positions, moved from the source's frame to the area written (LibRaw's
    visible area), or dropped where they cannot be moved.

    DefaultCrop is relative to the ActiveArea; OpcodeList2/3 and BlackLevelDeltaH/V apply to the
    active area as a whole; OpcodeList1 applies to the whole stored image before linearisation.
    """
    rh, rw = int(raw.imagelength), int(raw.imagewidth)
    area = raw.tags.get(50829)  # ActiveArea: top, left, bottom, right
    top, left, bottom, right = (int(v) for v in area.value) if area is not None else (0, 0, rh, rw)
    vt, vl = int(sizes.top_margin), int(sizes.left_margin)
    vh, vw = int(sizes.height), int(sizes.width)
    same_area = (vt, vl, vt + vh, vl + vw) == (top, left, bottom, right)
    if "DefaultCropOrigin" in tags or "DefaultCropSize" in tags:
        ox, oy = tags.pop("DefaultCropOrigin", (0, 0))
        cw, ch = tags.pop("DefaultCropSize", (right - left - ox, bottom - top - oy))
        x0, y0 = max(0.0, ox + left - vl), max(0.0, oy + top - vt)
        x1, y1 = min(float(vw), ox + left - vl + cw), min(float(vh), oy + top - vt + ch)
        if x1 > x0 and y1 > y0 and (x0, y0, x1, y1) != (0, 0, vw, vh):
            tags["DefaultCropOrigin"] = [_whole(x0), _whole(y0)]
            tags["DefaultCropSize"] = [_whole(x1 - x0), _whole(y1 - y0)]
    if not same_area:
        for name in ("OpcodeList2", "OpcodeList3", "BlackLevelDeltaH", "BlackLevelDeltaV"):
            tags.pop(name, None)
    if not ((vt, vl, vh, vw) == (0, 0, rh, rw) and raw.tags.get(50712) is None):
        tags.pop("OpcodeList1", None)
    # LibRaw adds the rounded mean of each delta list to the black level it reports (the frame's);
    # the deltas written keep only what varies, so every developer subtracts the same black
    for name, n in (("BlackLevelDeltaH", vw), ("BlackLevelDeltaV", vh)):
        if name in tags:
            d = np.asarray(tags.pop(name), dtype=np.float64).ravel()
            if d.size == n:
                tags[name] = (d - math.floor(d.mean() + 0.5)).tolist()


def _whole(v: float):
    return int(v) if float(v).is_integer() else float(v)


def _file_meta(path: Path, sizes) -> tuple[dict[str, Any], bool]:
    """Make, model and, for a DNG, its colour and rendering tags, read from the file with tifffile
    (rawpy exposes neither the camera name nor a DNG's profile). Returns (meta, is_dng); files that
    are not TIFF-based (CR3, RAF, ...) give ({}, False).

    A DNG's ColorMatrix1, CalibrationIlluminant1 (0, "unknown", when absent), AsShotNeutral and
    UniqueCameraModel go to the keys color_matrix, calibration_illuminant, as_shot_neutral and
    unique_camera_model; every other tag of dng.CARRIED_TAGS it has goes to meta["dng"] by its DNG
    name, with pixel positions moved to the visible area that LibRaw decodes.
    """
    try:
        import tifffile
    except ImportError:
        return {}, False
    out: dict[str, Any] = {}
    try:
        with tifffile.TiffFile(path) as tf:
            ifd0 = tf.pages[0]
            tags = ifd0.tags
            for key, code in (("make", 271), ("model", 272), ("unique_camera_model", 50708)):
                t = tags.get(code)
                if t is not None and isinstance(t.value, str) and t.value.strip("\x00 "):
                    out[key] = t.value.strip("\x00 ")
            if tags.get(50706) is None:  # DNGVersion: not a DNG
                return out, False
            raw = _raw_ifd(ifd0, sizes)
            own = {"color_matrix": 50721, "calibration_illuminant": 50778, "as_shot_neutral": 50728}
            for key, code in own.items():
                t = raw.tags.get(code) or tags.get(code)
                out[key] = _tag_number_list(t) if t is not None else None
            carried = _dng_tags(ifd0, raw, tf.byteorder == "<")
            _map_geometry(carried, raw, sizes)
    except (tifffile.TiffFileError, OSError, ValueError, TypeError, IndexError, KeyError, AttributeError):
        return {}, False  # odd tags: this metadata is optional, the pixels are still read by LibRaw
    cm = out["color_matrix"]
    out["color_matrix"] = np.reshape(cm, (3, 3)).tolist() if cm is not None and len(cm) == 9 else None
    illum = out["calibration_illuminant"]
    out["calibration_illuminant"] = int(illum[0]) if illum else dng.CALIBRATION_UNKNOWN
    n = out["as_shot_neutral"]
    out["as_shot_neutral"] = n if n is not None and len(n) == 3 and all(v > 0 for v in n) else None
    out["dng"] = carried
    return out, True


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
            sizes = rp.sizes
        except rawpy.LibRawError as e:
            raise RawFileError(
                f"{path} is truncated or damaged: LibRaw stopped while decoding its pixels ({_libraw_message(e)})"
            ) from None
    # the file's own tags are exact; LibRaw's copies are derived (or from its tables)
    file_meta, is_dng = _file_meta(path, sizes)
    if is_dng and file_meta.get("color_matrix") is None:  # no ColorMatrix1: LibRaw's table, for D65
        file_meta.pop("color_matrix")
        file_meta.pop("calibration_illuminant")
    meta.update(file_meta)
    meta.update({k: overrides[k] for k in ("iso", "exposure_time", "make", "model") if k in overrides})
    return make_frame(data, overrides.get("cfa", cfa), overrides.get("black_level", black),
                      overrides.get("white_level", white), meta)
