"""Write Bayer frames: uncompressed CFA DNG, 16-bit CFA TIFF, `.npy` + JSON sidecar.

The TIFF structure is written here directly (one little-endian IFD, one strip) so that every tag
LibRaw and RAW developers read is under our control and no extra package is needed. All outputs go
through `fileio.atomic_output`: a failed write leaves no partial file and an existing file is kept
unless `overwrite` is set.

Colour: a DNG is written with the source's camera profile and rendering tags (`meta["dng"]`, read
from a source DNG by `rawio.read_raw`, see `CARRIED_TAGS`), so that developers render the denoised
file like the original; ColorMatrix1, CalibrationIlluminant1, AsShotNeutral and UniqueCameraModel
come from the meta keys `color_matrix`, `calibration_illuminant`, `as_shot_neutral` and
`unique_camera_model`.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import bayer
from .errors import InputError
from .fileio import atomic_output

# optional colour/orientation metadata carried by an .npy sidecar (read back by rawio.read_raw)
META_SIDECAR_KEYS = ("color_matrix", "as_shot_neutral", "wb", "orientation", "unique_camera_model",
                     "calibration_illuminant", "dng")

# TIFF field types
BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SRATIONAL, FLOAT, DOUBLE = 1, 2, 3, 4, 5, 7, 10, 11, 12
_TYPE_FMT = {BYTE: "B", ASCII: "s", SHORT: "H", LONG: "I", RATIONAL: "II", UNDEFINED: "B", SRATIONAL: "ii",
             FLOAT: "f", DOUBLE: "d"}
_TYPE_SIZE = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, UNDEFINED: 1, SRATIONAL: 8, FLOAT: 4, DOUBLE: 8}

# PhotometricInterpretation values
PHOTOMETRIC_BLACK_IS_ZERO = 1
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_CFA = 32803
PHOTOMETRIC_LINEAR_RAW = 34892

# EXIF LightSource codes used as DNG CalibrationIlluminant
CALIBRATION_UNKNOWN = 0
CALIBRATION_STANDARD_A = 17
CALIBRATION_D65 = 21
_CFA_CODES = {"R": 0, "G": 1, "B": 2}
# XYZ (D65) -> linear sRGB: the colour matrix written when the source's is unknown, so that
# RAW developers treat the camera's RGB as sRGB primaries instead of refusing the file.
XYZ_TO_SRGB = ((3.2404542, -1.5371385, -0.4985314),
               (-0.9692660, 1.8760108, 0.0415560),
               (0.0556434, -0.2040259, 1.0572252))
DNG_VERSION = (1, 4, 0, 0)


# ---- colour and rendering tags carried from a source DNG ----------------------------------------------
TEXT = "text"  # ASCII, or BYTE holding UTF-8 when the text is not ASCII (both allowed by the DNG spec)
INT_OR_RATIONAL = "int-or-rational"  # LONG when every value is whole, else RATIONAL


@dataclass(frozen=True)
class CarriedTag:
    code: int
    type: Any  # a TIFF field type, TEXT or INT_OR_RATIONAL
    count: int | str | None  # values: a number, "width"/"height" of the image written, None = any
    file_byte_order: bool = False  # a binary block in the source file's byte order


# What `meta["dng"]` may hold: the DNG 1.4-1.7 camera-profile tags (colour matrices, calibration,
# hue/saturation and look tables, tone curve, illuminants), the exposure and rendering hints, and the
# raw-IFD tags a developer applies to the mosaic (crop, scale, opcode lists, black level deltas).
# Not here, because the output redefines them: ActiveArea/MaskedAreas (the written image is the
# visible area), LinearizationTable (LibRaw has applied it to the values read), BlackLevel/WhiteLevel
# (the frame's levels); NoiseProfile and NoiseReductionApplied describe the noise of the source's
# pixels, which denoising changed; digests, RawDataUniqueID, previews and private maker data
# describe the source file; ProfileIFD/ExtraCameraProfiles point to IFDs that are not copied.
CARRIED_TAGS: dict[str, CarriedTag] = {
    "LocalizedCameraModel": CarriedTag(50709, TEXT, None),
    "ColorMatrix2": CarriedTag(50722, SRATIONAL, 9),
    "ColorMatrix3": CarriedTag(52531, SRATIONAL, 9),
    "CameraCalibration1": CarriedTag(50723, SRATIONAL, 9),
    "CameraCalibration2": CarriedTag(50724, SRATIONAL, 9),
    "CameraCalibration3": CarriedTag(52530, SRATIONAL, 9),
    "ForwardMatrix1": CarriedTag(50964, SRATIONAL, 9),
    "ForwardMatrix2": CarriedTag(50965, SRATIONAL, 9),
    "ForwardMatrix3": CarriedTag(52532, SRATIONAL, 9),
    "CalibrationIlluminant2": CarriedTag(50779, SHORT, 1),
    "CalibrationIlluminant3": CarriedTag(52529, SHORT, 1),
    "IlluminantData1": CarriedTag(52533, UNDEFINED, None, file_byte_order=True),
    "IlluminantData2": CarriedTag(52534, UNDEFINED, None, file_byte_order=True),
    "IlluminantData3": CarriedTag(52535, UNDEFINED, None, file_byte_order=True),
    "AnalogBalance": CarriedTag(50727, RATIONAL, 3),
    "AsShotWhiteXY": CarriedTag(50729, RATIONAL, 2),
    "BaselineExposure": CarriedTag(50730, SRATIONAL, 1),
    "BaselineExposureOffset": CarriedTag(51109, SRATIONAL, 1),
    "BaselineNoise": CarriedTag(50731, RATIONAL, 1),
    "BaselineSharpness": CarriedTag(50732, RATIONAL, 1),
    "LinearResponseLimit": CarriedTag(50734, RATIONAL, 1),
    "ShadowScale": CarriedTag(50739, RATIONAL, 1),
    "ColorimetricReference": CarriedTag(50879, SHORT, 1),
    "DefaultBlackRender": CarriedTag(51110, LONG, 1),
    "CameraCalibrationSignature": CarriedTag(50931, TEXT, None),
    "ProfileCalibrationSignature": CarriedTag(50932, TEXT, None),
    "AsShotProfileName": CarriedTag(50934, TEXT, None),
    "ProfileName": CarriedTag(50936, TEXT, None),
    "ProfileCopyright": CarriedTag(50942, TEXT, None),
    "ProfileGroupName": CarriedTag(52552, TEXT, None),
    "ProfileEmbedPolicy": CarriedTag(50941, LONG, 1),
    "ProfileHueSatMapDims": CarriedTag(50937, LONG, 3),
    "ProfileHueSatMapData1": CarriedTag(50938, FLOAT, None),
    "ProfileHueSatMapData2": CarriedTag(50939, FLOAT, None),
    "ProfileHueSatMapData3": CarriedTag(52537, FLOAT, None),
    "ProfileHueSatMapEncoding": CarriedTag(51107, LONG, 1),
    "ProfileLookTableDims": CarriedTag(50981, LONG, 3),
    "ProfileLookTableData": CarriedTag(50982, FLOAT, None),
    "ProfileLookTableEncoding": CarriedTag(51108, LONG, 1),
    "ProfileToneCurve": CarriedTag(50940, FLOAT, None),
    "ProfileDynamicRange": CarriedTag(52551, UNDEFINED, None, file_byte_order=True),
    "RGBTables": CarriedTag(52543, UNDEFINED, None, file_byte_order=True),
    # raw-IFD tags; the reader (rawio) moves or drops those naming pixel positions (crop, deltas,
    # opcode lists) to fit the visible area it writes
    "DefaultScale": CarriedTag(50718, RATIONAL, 2),
    "BestQualityScale": CarriedTag(50780, RATIONAL, 1),
    "DefaultCropOrigin": CarriedTag(50719, INT_OR_RATIONAL, 2),
    "DefaultCropSize": CarriedTag(50720, INT_OR_RATIONAL, 2),
    "DefaultUserCrop": CarriedTag(51125, RATIONAL, 4),  # relative to the default crop
    "BayerGreenSplit": CarriedTag(50733, LONG, 1),
    "ChromaBlurRadius": CarriedTag(50737, RATIONAL, 1),
    "AntiAliasStrength": CarriedTag(50738, RATIONAL, 1),
    "BlackLevelDeltaH": CarriedTag(50715, SRATIONAL, "width"),
    "BlackLevelDeltaV": CarriedTag(50716, SRATIONAL, "height"),
    # opcode lists are big-endian whatever the file's byte order; their areas are pixel positions
    "OpcodeList1": CarriedTag(51008, UNDEFINED, None),
    "OpcodeList2": CarriedTag(51009, UNDEFINED, None),
    "OpcodeList3": CarriedTag(51022, UNDEFINED, None),
}


def dng_meta_to_json(dng_meta: dict) -> dict:
    """`meta["dng"]` as JSON values: binary blocks become {"base64": ...}."""
    out = {}
    for name, v in dng_meta.items():
        if isinstance(v, (bytes, bytearray)):
            out[name] = {"base64": base64.b64encode(bytes(v)).decode("ascii")}
        else:
            out[name] = _jsonable(v)
    return out


def dng_meta_from_json(data) -> dict:
    """Inverse of `dng_meta_to_json` (used for .npy sidecars)."""
    if not isinstance(data, dict):
        raise InputError(f'"dng" in a sidecar must be an object of DNG tag names, got {type(data).__name__}')
    out = {}
    for name, v in data.items():
        if isinstance(v, dict) and set(v) == {"base64"}:
            try:
                v = base64.b64decode(v["base64"], validate=True)
            except (ValueError, TypeError):
                raise InputError(f'"dng"/"{name}" in a sidecar is not valid base64; fix or remove it') from None
        out[name] = v
    return out


# ---- minimal TIFF writer ----------------------------------------------------------------------------
def _rational(x: float, signed: bool) -> tuple[int, int]:
    f = Fraction(float(x)).limit_denominator(1_000_000 if abs(x) < 2000 else 1000)
    lim = 2 ** 31 - 1 if signed else 2 ** 32 - 1
    while abs(f.numerator) > lim or f.denominator > lim:  # keep both within 32 bits
        f = Fraction(round(f.numerator / 2), max(1, round(f.denominator / 2)))
    return f.numerator, f.denominator


def _encode(ftype: int, value) -> tuple[int, bytes]:
    """(count, little-endian bytes) of one tag value."""
    if ftype == ASCII:
        raw = (value if isinstance(value, bytes) else str(value).encode("ascii", "replace")) + b"\0"
        return len(raw), raw
    if ftype in (BYTE, UNDEFINED) and isinstance(value, (bytes, bytearray)):
        return len(value), bytes(value)  # binary blocks (opcode lists) as they are
    vals = list(value) if isinstance(value, (list, tuple, np.ndarray, bytes)) else [value]
    if ftype in (RATIONAL, SRATIONAL):
        flat: list[int] = []
        for v in vals:
            flat.extend(_rational(v, ftype == SRATIONAL))
        return len(vals), struct.pack(f"<{len(flat)}{_TYPE_FMT[ftype][0]}", *flat)
    if ftype in (FLOAT, DOUBLE):
        return len(vals), struct.pack(f"<{len(vals)}{_TYPE_FMT[ftype]}", *(float(v) for v in vals))
    return len(vals), struct.pack(f"<{len(vals)}{_TYPE_FMT[ftype]}", *(int(v) for v in vals))


def _ifd_bytes(tags: dict[int, tuple[int, Any]], offset: int) -> bytes:
    """One IFD placed at file offset `offset`, followed by its out-of-line values; a tag whose value
    is a dict becomes a sub-IFD (e.g. the EXIF IFD) stored among those values."""
    entries = sorted(tags.items())
    n = len(entries)
    extra_offset = offset + 2 + 12 * n + 4
    ifd = bytearray(struct.pack("<H", n))
    extra = bytearray()
    for tag, (ftype, value) in entries:
        if isinstance(value, dict):
            sub_offset = extra_offset + len(extra)
            extra += _ifd_bytes(value, sub_offset)
            count, payload = _encode(LONG, sub_offset)
        else:
            count, payload = _encode(ftype, value)
        if len(payload) <= 4:
            ifd += struct.pack("<HHI", tag, ftype, count) + payload.ljust(4, b"\0")
        else:
            ifd += struct.pack("<HHII", tag, ftype, count, extra_offset + len(extra))
            extra += payload
        if len(extra) & 1:
            extra += b"\0"  # values start on word boundaries
    ifd += struct.pack("<I", 0)  # no next IFD
    return bytes(ifd + extra)


def write_tiff_file(path, tags: dict[int, tuple[int, Any]], image: bytes) -> None:
    """Write a one-IFD little-endian TIFF: `tags` maps tag -> (type, value); the strip tags
    (StripOffsets, StripByteCounts) are filled in here. The IFD comes first, as in camera files,
    so a truncated copy still opens and its missing pixels are detected."""
    tags = dict(tags)
    tags[273] = (LONG, 0)  # StripOffsets: the IFD's size does not depend on it
    tags[279] = (LONG, len(image))  # StripByteCounts
    ifd_size = len(_ifd_bytes(tags, 8))
    image_offset = 8 + ifd_size + (-ifd_size) % 16
    tags[273] = (LONG, image_offset)
    ifd = _ifd_bytes(tags, 8)
    with open(path, "wb") as f:
        f.write(b"II*\0" + struct.pack("<I", 8))
        f.write(ifd)
        f.write(b"\0" * (image_offset - 8 - len(ifd)))
        f.write(image)


# ---- frame fields ---------------------------------------------------------------------------------
def _resolve(data, like, cfa, black_level, white_level, meta) -> tuple[np.ndarray, str, np.ndarray, float, dict]:
    """Explicit arguments win over the `like` frame's fields."""
    if not isinstance(data, np.ndarray):
        raise InputError(f"expected a numpy array to write, got {type(data).__name__}")
    bayer.check_bayer_array(data)
    if like is not None:
        cfa = cfa if cfa is not None else getattr(like, "cfa", None)
        black_level = black_level if black_level is not None else getattr(like, "black_level", None)
        white_level = white_level if white_level is not None else getattr(like, "white_level", None)
        meta = {**(getattr(like, "meta", None) or {}), **(meta or {})}
    missing_args = [k for k, v in (("cfa", cfa), ("black_level", black_level), ("white_level", white_level))
                    if v is None]
    if missing_args:
        raise InputError(f"writing a RAW file needs {', '.join(missing_args)}: pass like=frame or the values")
    cfa = bayer.parse_cfa(cfa)
    black, white = bayer.check_levels(black_level, white_level, 4)
    return data, cfa, black, white, dict(meta or {})


def _to_uint16(data: np.ndarray, white: float, what: str) -> np.ndarray:
    """Sensor values as uint16 DN; refuses what would not round-trip."""
    if white > 65535:
        raise InputError(f"white_level {white} does not fit a 16-bit {what}; write .npy instead")
    if data.dtype == np.uint16:
        return data
    if data.dtype.kind == "f":
        if white <= 1.0:
            raise InputError(
                f"float data with white_level {white} is normalised, not in sensor units; a {what} holds "
                f"16-bit DN: scale it to the sensor's levels or write .npy instead"
            )
        return np.clip(np.rint(data), 0, 65535).astype(np.uint16)
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi > 65535:
        raise InputError(f"values {lo}..{hi} do not fit a 16-bit {what}; write .npy instead")
    return data.astype(np.uint16)


def _matrix(m) -> list[float] | None:
    if m is None:
        return None
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (3, 3) or not np.all(np.isfinite(a)) or not np.any(a):
        return None
    return a.ravel().tolist()


def _neutral(meta: dict) -> list[float] | None:
    n = meta.get("as_shot_neutral")
    if n is None and meta.get("wb") is not None:
        wb = [float(v) for v in meta["wb"]]
        if len(wb) >= 3 and all(v > 0 for v in wb[:3]):
            n = [wb[1] / wb[0], 1.0, wb[1] / wb[2]]
    if n is None:
        return None
    n = [float(v) for v in n]
    return n if len(n) == 3 and all(v > 0 for v in n) else None


def _ascii(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s.encode("ascii", "replace").decode("ascii") or None


# ---- DNG ------------------------------------------------------------------------------------------
# DNG tags with their own meta keys: meta["dng"] must not name them (one place for each value)
_OWN_KEYS = {"ColorMatrix1": "color_matrix", "CalibrationIlluminant1": "calibration_illuminant",
             "AsShotNeutral": "as_shot_neutral", "UniqueCameraModel": "unique_camera_model"}


def _dng_version(v) -> tuple[int, int, int, int]:
    """The version written: 1.4, or the source's when newer (its 1.6/1.7 profile tags need it)."""
    if v is None:
        return DNG_VERSION
    try:
        t = tuple(int(x) for x in (v if not isinstance(v, str) else v.split(".")))
    except (TypeError, ValueError):
        t = ()
    if len(t) != 4 or not all(0 <= x <= 255 for x in t):
        raise InputError(f"meta['dng']['DNGVersion'] must be 4 numbers 0..255 such as [1, 6, 0, 0], got {v!r}")
    return max(DNG_VERSION, t)


def _carried_value(name: str, spec: CarriedTag, value, height: int, width: int) -> tuple[int, Any]:
    """(TIFF type, value) of one meta["dng"] entry, checked against what the tag holds."""
    where = f"meta['dng']['{name}']"
    if spec.type == TEXT:
        if isinstance(value, (bytes, bytearray)):
            return BYTE, bytes(value).rstrip(b"\0") + b"\0"
        text = str(value)
        return (ASCII, text) if text.isascii() else (BYTE, text.encode("utf-8") + b"\0")
    if spec.type == UNDEFINED:
        if not isinstance(value, (bytes, bytearray)) or not value:
            raise InputError(f"{where} must be non-empty bytes (a binary DNG block), got "
                             f"{type(value).__name__}; pass the bytes read from the source or remove it")
        return UNDEFINED, bytes(value)
    try:
        vals = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        vals = np.array([np.nan])
    if vals.size == 0 or not np.all(np.isfinite(vals)):
        raise InputError(f"{where} must be finite numbers, got {str(value)[:60]}; fix or remove it")
    need = {"width": width, "height": height}.get(spec.count, spec.count)  # type: ignore[arg-type]
    if need is not None and vals.size != need:
        per = f" (one per {'column' if spec.count == 'width' else 'row'} of the {width}x{height} image written)" \
            if isinstance(spec.count, str) else ""
        raise InputError(f"{where} has {vals.size} values, the DNG tag holds {need}{per}; fix or remove it")
    ftype = spec.type
    whole = bool(np.all(vals == np.round(vals)))
    if ftype == INT_OR_RATIONAL:
        ftype = LONG if whole else RATIONAL
    if ftype in (SHORT, LONG, RATIONAL) and np.any(vals < 0):
        raise InputError(f"{where} must not be negative, got {vals.tolist()[:9]}; fix or remove it")
    if ftype in (SHORT, LONG) and (not whole or np.any(vals > (65535 if ftype == SHORT else 2 ** 32 - 1))):
        raise InputError(f"{where} must be whole numbers that fit the tag, got {vals.tolist()[:9]}; fix or remove it")
    return ftype, vals.tolist()


def _carried_tags(carried: dict, height: int, width: int) -> dict[int, tuple[int, Any]]:
    tags: dict[int, tuple[int, Any]] = {}
    for name, value in carried.items():
        if value is None:
            continue
        if name in _OWN_KEYS:
            raise InputError(f"meta['dng'] names {name}, which is written from meta['{_OWN_KEYS[name]}']; "
                             f"put the value there")
        spec = CARRIED_TAGS.get(name)
        if spec is None:
            raise InputError(f"meta['dng'] names {name!r}, which is not a DNG tag the writer carries; remove it "
                             f"(the tags carried are listed in rawdenoise.dng.CARRIED_TAGS)")
        tags[spec.code] = _carried_value(name, spec, value, height, width)
    _check_crop(carried, height, width)
    return tags


def _check_crop(carried: dict, height: int, width: int) -> None:
    """The default crop must lie inside the image written (the reader maps it to the visible area)."""
    if carried.get("DefaultCropOrigin") is None and carried.get("DefaultCropSize") is None:
        return
    x, y = (float(v) for v in np.ravel(carried.get("DefaultCropOrigin", (0, 0))))
    cw, ch = (float(v) for v in np.ravel(carried.get("DefaultCropSize", (width - x, height - y))))
    if cw <= 0 or ch <= 0 or x + cw > width or y + ch > height:
        raise InputError(
            f"DefaultCropOrigin ({x:g}, {y:g}) with DefaultCropSize {cw:g}x{ch:g} in meta['dng'] does not fit the "
            f"{width}x{height} image written; give a crop inside it or remove both tags"
        )


def dng_tags(height: int, width: int, cfa: str, black: Iterable[float], white: float, meta: dict) -> dict:
    """IFD0 tags of a CFA DNG (one uncompressed 16-bit strip) with the colour and rendering tags of
    `meta` (see the module docstring and CARRIED_TAGS)."""
    make, model = _ascii(meta.get("make")), _ascii(meta.get("model"))
    unique = _ascii(meta.get("unique_camera_model")) or " ".join(p for p in (make, model) if p) or "Unknown camera"
    carried = dict(meta.get("dng") or {})
    version = _dng_version(carried.pop("DNGVersion", None))
    matrix = _matrix(meta.get("color_matrix"))
    # the illuminant belongs to the matrix: the source's is kept with its matrix, and a matrix given
    # without one is taken as D65 (LibRaw's camera tables are); the XYZ->sRGB fallback is for D65
    given = meta.get("calibration_illuminant")
    illuminant = (int(given) if given is not None else CALIBRATION_D65) if matrix else CALIBRATION_D65
    black = [float(b) for b in black]
    tags: dict[int, tuple[int, Any]] = {
        254: (LONG, 0),  # NewSubfileType: the main image
        256: (LONG, width),
        257: (LONG, height),
        258: (SHORT, 16),
        259: (SHORT, 1),  # no compression
        262: (SHORT, PHOTOMETRIC_CFA),
        274: (SHORT, int(meta.get("orientation") or 1)),
        277: (SHORT, 1),
        278: (LONG, height),  # RowsPerStrip: one strip
        284: (SHORT, 1),
        305: (ASCII, "rawdenoise"),
        33421: (SHORT, (2, 2)),  # CFARepeatPatternDim
        33422: (BYTE, bytes(_CFA_CODES[c] for c in cfa)),  # CFAPattern
        50706: (BYTE, version),  # DNGVersion
        50707: (BYTE, (1, 1, 0, 0)),  # DNGBackwardVersion
        50708: (ASCII, unique),  # UniqueCameraModel
        50710: (BYTE, (0, 1, 2)),  # CFAPlaneColor
        50711: (SHORT, 1),  # CFALayout: rectangular
        50713: (SHORT, (2, 2)),  # BlackLevelRepeatDim
        50714: (RATIONAL, black) if any(not b.is_integer() for b in black) else (LONG, [int(b) for b in black]),
        50717: (LONG, int(round(white))),  # WhiteLevel
        50721: (SRATIONAL, matrix or [v for row in XYZ_TO_SRGB for v in row]),  # ColorMatrix1
        50778: (SHORT, illuminant),  # CalibrationIlluminant1
    }
    # the white balance is given once: AsShotNeutral, or the source's AsShotWhiteXY
    if meta.get("as_shot_neutral") is not None:
        carried.pop("AsShotWhiteXY", None)
    neutral = None if carried.get("AsShotWhiteXY") is not None else (_neutral(meta) or [1.0, 1.0, 1.0])
    if neutral is not None:
        tags[50728] = (RATIONAL, neutral)  # AsShotNeutral
    tags.update(_carried_tags(carried, height, width))
    if make:
        tags[271] = (ASCII, make)
    if model:
        tags[272] = (ASCII, model)
    exif: dict[int, tuple[int, Any]] = {}
    if meta.get("exposure_time"):
        exif[33434] = (RATIONAL, float(meta["exposure_time"]))  # ExposureTime
    if meta.get("iso"):
        exif[34855] = (SHORT, min(65535, int(round(float(meta["iso"])))))  # ISOSpeedRatings
    if exif:
        exif[36864] = (UNDEFINED, b"0231")  # ExifVersion
        tags[34665] = (LONG, exif)  # Exif IFD pointer
    return tags


def write_dng(path, data: np.ndarray, like=None, *, cfa=None, black_level=None, white_level=None,
              meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write an uncompressed CFA DNG (1.4, or the source's newer version) of a 2-D Bayer frame; `like`
    is a RawFrame whose CFA, levels and metadata (camera, ISO, exposure, colour matrix, white balance,
    orientation, the source DNG's profile and rendering tags in meta["dng"]) are used unless given
    explicitly; `meta` is merged over the frame's, key by key. Returns the path written."""
    data, cfa, black, white, meta = _resolve(data, like, cfa, black_level, white_level, meta)
    if white < 1:
        raise InputError(f"white_level {white} is normalised; a DNG holds 16-bit sensor values")
    pixels = _to_uint16(data, white, "DNG")
    h, w = pixels.shape
    tags = dng_tags(h, w, cfa, black, white, meta)
    image = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        write_tiff_file(tmp, tags, image)
    return path


def write_tiff(path, data: np.ndarray, like=None, *, cfa=None, black_level=None, white_level=None,
               meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write the mosaic as a 16-bit greyscale TIFF; CFA and levels go into ImageDescription (JSON)."""
    data, cfa, black, white, meta = _resolve(data, like, cfa, black_level, white_level, meta)
    pixels = _to_uint16(data, white, "TIFF")
    h, w = pixels.shape
    desc = json.dumps({"cfa": cfa, "black_level": [float(b) for b in black], "white_level": white})
    tags = {
        256: (LONG, w), 257: (LONG, h), 258: (SHORT, 16), 259: (SHORT, 1),
        262: (SHORT, PHOTOMETRIC_BLACK_IS_ZERO), 270: (ASCII, desc), 277: (SHORT, 1), 278: (LONG, h),
        284: (SHORT, 1), 305: (ASCII, "rawdenoise"),
    }
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        write_tiff_file(tmp, tags, np.ascontiguousarray(pixels, dtype="<u2").tobytes())
    return path


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def write_npy(path, data: np.ndarray, like=None, *, cfa=None, black_level=None, white_level=None,
              meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write the array as `.npy` (any supported dtype, values kept exactly) and a JSON sidecar
    `X.json` with cfa, levels and the known metadata, readable by `read_raw`."""
    data, cfa, black, white, meta = _resolve(data, like, cfa, black_level, white_level, meta)
    path = Path(path)
    side = path.with_suffix(".json")
    sidecar = {"cfa": cfa, "black_level": [float(b) for b in black], "white_level": white}
    for k in ("make", "model", "iso", "exposure_time", *META_SIDECAR_KEYS):
        if meta.get(k) is not None:
            sidecar[k] = dng_meta_to_json(meta[k]) if k == "dng" else _jsonable(meta[k])
    if side.exists() and not overwrite:
        raise InputError(f"{side} already exists; pass --overwrite (overwrite=True) to replace it")
    with atomic_output(path, overwrite=overwrite) as tmp, atomic_output(side, overwrite=overwrite) as tmp_side:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(data), allow_pickle=False)
        tmp_side.write_text(json.dumps(sidecar, indent=1))
    return path


WRITERS = {".dng": write_dng, ".tif": write_tiff, ".tiff": write_tiff, ".npy": write_npy}


def write_output(path, data: np.ndarray, like=None, *, overwrite: bool = False, **fields) -> Path:
    """Write `data` in the format its suffix names: .dng, .tif/.tiff or .npy."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITERS:
        raise InputError(f"cannot write {Path(path).name!r}: output suffix {suffix!r} is not one of "
                         f"{', '.join(WRITERS)}")
    return WRITERS[suffix](path, data, like, overwrite=overwrite, **fields)
