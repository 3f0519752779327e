"""Bayer mosaics: CFA phase, per-channel levels, packing to 4 channels and back (pure numpy).

Every 2x2 phase (RGGB, BGGR, GRBG, GBRG) is a one-pixel shift of every other. A frame is packed to
a model's channel order by mirroring one same-colour row/column in front where the phases differ
(and one behind where the size is odd), so that each packed 2x2 block is laid out exactly like the
model's training data: R, the green on the red row (Gr), the green on the blue row (Gb) and B keep
their identity and their relative position. `unpack` is the exact inverse and crops the extension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
INTEGER_DTYPES = (np.uint8, np.uint16, np.uint32, np.int32)
FLOAT_DTYPES = (np.float32, np.float64)
SUPPORTED_DTYPES = INTEGER_DTYPES + FLOAT_DTYPES


def _sites(pattern: str) -> tuple[str, str, str, str]:
    """Site names of a 2x2 pattern in raster order; greens are named by their row partner."""
    p = pattern
    out = []
    for row in (p[0:2], p[2:4]):
        for col, c in enumerate(row):
            if c == "G":
                out.append("Gr" if row[1 - col] == "R" else "Gb")
            else:
                out.append(c)
    return tuple(out)  # type: ignore[return-value]


def parse_cfa(cfa, color_desc: str | bytes = "RGBG") -> str:
    """Normalise a CFA description to one of RGGB, BGGR, GRBG, GBRG.

    Accepts the pattern string (any case) or a rawpy-style 2x2 array of indices into `color_desc`
    (rawpy's `raw_pattern` with `color_desc`, where indices 1 and 3 are both green).
    """
    if isinstance(color_desc, bytes):
        color_desc = color_desc.decode("ascii", "replace")
    if isinstance(cfa, str):
        s = cfa.strip().upper()
    else:
        arr = np.asarray(cfa)
        if arr.shape != (2, 2) or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(
                f"cfa pattern array must be 2x2 integers (rawpy raw_pattern), got shape {arr.shape} "
                f"dtype {arr.dtype}; use one of {', '.join(BAYER_PATTERNS)}"
            )
        try:
            s = "".join(color_desc[int(i)] for i in arr.ravel()).upper()
        except IndexError:
            raise InputError(f"cfa pattern {arr.tolist()} indexes outside color_desc {color_desc!r}") from None
    if s not in BAYER_PATTERNS:
        raise InputError(f"cfa {cfa!r} is not a 2x2 Bayer pattern; use one of {', '.join(BAYER_PATTERNS)}")
    return s


def phase_offset(frame_cfa: str, model_order: str) -> tuple[int, int]:
    """(dy, dx) such that the frame extended by dy rows on top and dx columns on the left has the
    model's phase: frame site at (r - dy, c - dx) mod 2 == model site at (r, c)."""
    f, m = _sites(frame_cfa), _sites(model_order)
    for dy in (0, 1):
        for dx in (0, 1):
            if all(f[2 * ((r - dy) % 2) + (c - dx) % 2] == m[2 * r + c] for r in (0, 1) for c in (0, 1)):
                return dy, dx
    raise AssertionError(f"no shift maps {frame_cfa} to {model_order}")  # all Bayer phases are shifts


@dataclass(frozen=True)
class BayerGeometry:
    """How a frame maps to its packed form: original size and the one-pixel extensions."""

    height: int
    width: int
    dy: int  # rows mirrored in front
    dx: int  # columns mirrored in front

    @property
    def packed_shape(self) -> tuple[int, int]:
        return (self.height + self.dy + 1) // 2, (self.width + self.dx + 1) // 2

    def frame_site(self, channel: int) -> int:
        """Index (2x2 raster order of the frame's CFA) of the site packed into `channel`."""
        r, c = divmod(channel, 2)
        return 2 * ((r - self.dy) % 2) + (c - self.dx) % 2


def geometry(shape: tuple[int, int], cfa: str, model_order: str) -> BayerGeometry:
    dy, dx = phase_offset(cfa, model_order)
    return BayerGeometry(int(shape[0]), int(shape[1]), dy, dx)


def check_bayer_array(raw) -> np.ndarray:
    """Validate a 2-D Bayer frame; returns it as an ndarray without copying."""
    if not isinstance(raw, np.ndarray):
        raise InputError(f"expected a numpy array for the Bayer frame, got {type(raw).__name__}")
    if raw.dtype.type not in SUPPORTED_DTYPES:
        allowed = ", ".join(np.dtype(t).name for t in SUPPORTED_DTYPES)
        raise InputError(f"Bayer frame dtype {raw.dtype} is not supported; use one of {allowed}")
    if raw.ndim != 2:
        hint = " (an RGB image? this model takes a 2-D Bayer mosaic)" if raw.ndim == 3 else ""
        raise InputError(f"expected a 2-D Bayer frame (H x W), got shape {raw.shape}{hint}")
    if raw.shape[0] < 2 or raw.shape[1] < 2:
        raise InputError(f"Bayer frame {raw.shape} is smaller than one 2x2 CFA cell")
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InputError("Bayer frame contains NaN or Inf values; replace them (e.g. np.nan_to_num) first")
    return raw


def check_levels(black_level, white_level, n_sites: int = 4) -> tuple[np.ndarray, float]:
    """Validate levels: black is a scalar or one value per CFA site; returns (black[n], white)."""
    black = np.asarray(black_level, dtype=np.float64).ravel()
    if black.size == 1:
        black = np.repeat(black, n_sites)
    if black.size != n_sites:
        raise InputError(
            f"black_level must be a scalar or {n_sites} values (one per CFA site, in the 2x2 order of "
            f"the cfa), got {black.size} values"
        )
    try:
        white = float(white_level)
    except (TypeError, ValueError):
        raise InputError(f"white_level must be a number, got {white_level!r}") from None
    if not np.all(np.isfinite(black)) or not np.isfinite(white):
        raise InputError(f"levels must be finite, got black={black.tolist()} white={white}")
    if np.any(black < 0):
        raise InputError(f"black_level must be >= 0, got {black.tolist()}")
    if np.any(black >= white):
        raise InputError(
            f"black_level {black.tolist()} must be below white_level {white}; check the sensor's levels"
        )
    return black, white


def _extend(raw: np.ndarray, g: BayerGeometry) -> np.ndarray:
    """Mirror same-colour rows/columns so the frame has the model's phase and even size."""
    bottom = (g.height + g.dy) % 2
    right = (g.width + g.dx) % 2
    if g.dy == g.dx == bottom == right == 0:
        return raw
    # 'reflect' (x[-1] = x[1]) keeps the CFA parity: the mirrored pixel is two away, same colour.
    return np.pad(raw, ((g.dy, bottom), (g.dx, right)), mode="reflect")


_BLOCK_BYTES = 1 << 18  # row blocks of ~256 KB: the passes over one block stay in cache


def row_blocks(rows: int, row_bytes: int):
    """Slices of consecutive rows, each about _BLOCK_BYTES, so several passes touch cache only
    (measured: unpack of 50 MP 128 -> 90 ms; packing reads strided uint16 and gained nothing)."""
    step = max(1, _BLOCK_BYTES // max(1, row_bytes))
    for i in range(0, rows, step):
        yield slice(i, min(i + step, rows))


def pack(raw: np.ndarray, g: BayerGeometry, black: np.ndarray, white: float,
         out: np.ndarray | None = None, clip: bool = False, gain: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Normalise (x - black_c) / (white - black_c) and pack to float32 (4, H/2, W/2).

    `black` is per site of the frame's CFA; channels come out in the model's order. The input
    is never written to. Values are not clipped unless `clip` (clipping biases dark means).
    The network's input scaling `* gain + offset` is folded into the same pass.
    """
    ext = _extend(raw, g)
    h2, w2 = g.packed_shape
    if out is None:
        out = np.empty((4, h2, w2), dtype=np.float32)
    for ch in range(4):
        r, c = divmod(ch, 2)
        _normalise(ext[r::2, c::2], out[ch], black[g.frame_site(ch)], white, clip, gain, offset)
    return out


def _normalise(src: np.ndarray, dst: np.ndarray, b: float, white: float, clip: bool, gain: float,
               offset: float) -> None:
    """dst = (src - b) / (white - b) * gain + offset in float32, clipped to [0, 1] before the gain if `clip`."""
    np.subtract(src, np.float32(b), out=dst, dtype=np.float32, casting="unsafe")
    if clip:
        dst *= np.float32(1.0 / (white - b))
        np.clip(dst, 0.0, 1.0, out=dst)
    scale = gain if clip else gain / (white - b)
    if scale != 1.0:
        dst *= np.float32(scale)
    if offset != 0.0:
        dst += np.float32(offset)


def pack_rows(raw: np.ndarray, g: BayerGeometry, black: np.ndarray, white: float, starts, rows: int) -> np.ndarray:
    """`pack(...)[:, i:i + rows]` for each i in `starts`, concatenated, without packing the rest.

    Bands must lie inside packed rows 1 .. H/2 - 2, where no row is mirrored: a band starting at
    packed row i is frame rows 2i - dy onward, already in the model's row phase, so it is packed
    with no row extension and the frame's black levels moved to the band's own sites.
    """
    h2, w2 = g.packed_shape
    starts = [int(i) for i in starts]
    if any(i < 1 or i + rows > h2 - 1 for i in starts):
        raise InputError(f"row bands must lie in packed rows 1..{h2 - 2}, got starts {starts} of {rows} rows")
    gb = BayerGeometry(2 * rows, g.width, 0, g.dx)
    black_band = np.empty(4)
    for ch in range(4):
        black_band[gb.frame_site(ch)] = black[g.frame_site(ch)]
    out = np.empty((4, len(starts) * rows, w2), np.float32)
    for j, i in enumerate(starts):
        r0 = 2 * i - g.dy
        pack(raw[r0:r0 + 2 * rows], gb, black_band, white, out=out[:, j * rows:(j + 1) * rows])
    return out


def unpack(packed: np.ndarray, g: BayerGeometry, black: np.ndarray, white: float,
           dtype=np.float32, out: np.ndarray | None = None, gain: float = 1.0, offset: float = 0.0,
           origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Inverse of `pack`: undo the scaling, de-normalise, crop the extension, cast to `dtype`.

    Integer outputs are rounded and clipped to [0, white]; float outputs are returned unclipped.
    `packed` may be any block of the packed frame whose top-left is at packed `origin`; its
    pixels are written into `out` (the whole frame), so tiles can be unpacked as they arrive.
    """
    out = _output_frame(g, dtype, out)
    for ch in range(4):
        _unpack_site(packed[ch], origin, ch, g, black, white, gain, offset, out)
    return out


def _output_frame(g: BayerGeometry, dtype, out: np.ndarray | None) -> np.ndarray:
    dtype = np.dtype(dtype)
    if out is None:
        return np.empty((g.height, g.width), dtype=dtype)
    if out.shape != (g.height, g.width) or out.dtype != dtype:
        raise InputError(f"output frame must be {g.height} x {g.width} {dtype}, got {out.shape} {out.dtype}")
    return out


def _unpack_site(plane: np.ndarray, origin: tuple[int, int], ch: int, g: BayerGeometry, black: np.ndarray,
                 white: float, gain: float, offset: float, out: np.ndarray) -> None:
    """Write a block of the packed plane of channel `ch` (top-left at packed `origin`) into `out`."""
    integer = out.dtype.kind in "ui"
    work = np.float64 if out.dtype == np.float64 else np.float32
    r, c = divmod(ch, 2)
    b = black[g.frame_site(ch)]
    py, px = origin
    # packed row i is frame row 2i + r - dy: keep the rows of this block inside the frame
    # (the mirrored first row/column of the extension, and a mirrored last one, are dropped)
    rows = _frame_lines(py, plane.shape[0], r - g.dy, g.height)
    cols = _frame_lines(px, plane.shape[1], c - g.dx, g.width)
    if not rows or not cols:
        return
    src = plane[rows.start - py:rows.stop - py, cols.start - px:cols.stop - px]
    dst = out[2 * rows.start + r - g.dy::2, 2 * cols.start + c - g.dx::2][:len(rows), :len(cols)]
    # (y - offset) / gain * (white - b) + b in one multiply-add
    scale = (white - b) / gain
    for blk in row_blocks(len(rows), np.dtype(work).itemsize * len(cols)):
        val = np.multiply(src[blk], scale, dtype=work)
        val += b - offset * scale
        if integer:
            round_to_sensor(val, white)
        dst[blk] = val


def to_mosaic(raw: np.ndarray, g: BayerGeometry, black: np.ndarray, white: float, clip: bool = False,
              gain: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """The one-channel counterpart of `pack`: float32 (1, H', W') at full resolution, in the model's
    phase (the same one-pixel extension as packing), each site normalised with its own black level."""
    ext = _extend(raw, g)
    out = np.empty((1,) + ext.shape, np.float32)
    for ch in range(4):
        r, c = divmod(ch, 2)
        _normalise(ext[r::2, c::2], out[0, r::2, c::2], black[g.frame_site(ch)], white, clip, gain, offset)
    return out


def from_mosaic(block: np.ndarray, g: BayerGeometry, black: np.ndarray, white: float, dtype=np.float32,
                out: np.ndarray | None = None, gain: float = 1.0, offset: float = 0.0,
                origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Inverse of `to_mosaic` for a (1, bh, bw) block at `origin` of the extended frame, written into
    `out`; rounding as in `unpack`. Tile cores need not start on the 2x2 grid: each site's pixels
    of the block form a block of that site's packed plane, which `unpack` already knows how to place."""
    out = _output_frame(g, dtype, out)
    py, px = origin
    for ch in range(4):
        r, c = divmod(ch, 2)
        i0, j0 = (r - py) % 2, (c - px) % 2          # first line of this site inside the block
        plane = block[0, i0::2, j0::2]
        _unpack_site(plane, ((py + i0 - r) // 2, (px + j0 - c) // 2), ch, g, black, white, gain, offset, out)
    return out


def round_to_sensor(val: np.ndarray, white: float) -> np.ndarray:
    """In place: the integer DN a float value becomes (rounded, clipped to [0, white])."""
    np.rint(val, out=val)
    np.clip(val, 0, white, out=val)
    return val


def _frame_lines(start: int, n: int, shift: int, size: int) -> range:
    """Packed lines start..start+n-1 whose frame line 2i + shift lies in [0, size)."""
    first = max(start, (1 - shift) // 2 if shift < 0 else 0)
    stop = min(start + n, (size - 1 - shift) // 2 + 1)
    return range(first, max(first, stop))
