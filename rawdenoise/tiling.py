"""Seam-free tiled inference over any predictor callable (pure numpy).

The frame (C x H x W network input) is conceptually reflect-padded at the bottom/right to a
multiple of the model's size multiple; tiles of one shape are cut from that padded frame at
origins that are multiples of the size multiple (so pooling grids line up with the untiled
pass) and the last row/column of tiles is shifted back inside. Each output pixel is taken from
the tile in which it lies farthest from a cut edge. With overlap >= the receptive-field radius
every kept pixel saw exactly the context it sees in the untiled pass: tiled == untiled.

Tiles are gathered `batch` at a time into one reused buffer, so working memory beyond the input
and output frames is O(batch x tile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .errors import InputError

Predictor = Callable[..., np.ndarray]
# receives a tile's kept core (C_out, rows, cols) and its top-left in the frame
TileSink = Callable[[np.ndarray, int, int], None]
# a network's extra inputs for a batch of tiles and their top-left corners in the frame
InputFill = Callable[[np.ndarray, list], dict]


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class AxisPlan:
    """Tiles along one axis: origins in the padded frame and the [start, end) each one keeps."""

    size: int
    padded: int          # length of the axis the tiles cover: the frame, its margins and padding
    tile: int
    origins: tuple[int, ...]              # in frame coordinates: negative inside the front margin
    keep: tuple[tuple[int, int], ...]
    start: int = 0       # first position of the covered axis: -margin


def overlap_needed(overlap: int, multiple: int) -> int:
    """How much neighbouring tiles must overlap for cores split on the model's grid (see plan_axis)."""
    return overlap + round_up(overlap, multiple)


def plan_axis(size: int, tile: int, overlap: int, multiple: int, pad_to_tile: bool = False,
              margin: int = 0) -> AxisPlan:
    """Tiles along one axis of a frame mirrored by `margin` (a multiple of `multiple`) at both ends
    and padded behind to the grid; origins and kept spans are in frame coordinates."""
    padded = round_up(size, multiple) + 2 * margin
    if pad_to_tile and tile:
        padded = max(padded, tile)
    if tile == 0 or tile >= padded:
        return AxisPlan(size, padded, padded, (-margin,), ((0, size),), -margin)
    # The receptive radius is that of blocks on the model's grid (after a stride-2 layer odd rows
    # reach further than even ones), so kept cores start and end on the grid: a core starting at
    # grid point p needs `overlap` rows of its tile above p, the core ending at p needs `overlap`
    # rows of its tile below p, and p must be a multiple of the grid: tiles overlap by `need`.
    lead = round_up(overlap, multiple)
    need = overlap_needed(overlap, multiple)
    stride = (tile - need) // multiple * multiple
    if stride < multiple:
        lo = round_up(need + multiple, multiple)
        raise InputError(
            f"tile {tile} is too small for overlap {overlap}: with the model's size multiple {multiple} a tile "
            f"must be at least {lo}; use a larger tile or tile=0 (no tiling)"
        )
    if not pad_to_tile:
        tile, stride = _balance(padded, tile, stride, need, multiple)
    origins = list(range(0, padded - tile, stride)) + [padded - tile]
    # each pixel belongs to the tile whose nearest cut edge is farthest: split each overlap near its
    # middle, on the grid, inside [next origin + lead, previous end - overlap]
    bounds = [0] + [b + lead + (a + tile - b - need) // 2 // multiple * multiple
                    for a, b in zip(origins[:-1], origins[1:])] + [padded]
    kept_origins, keep = [], []
    for o, a, b in zip(origins, bounds[:-1], bounds[1:]):
        a, b = max(a - margin, 0), min(b - margin, size)     # frame coordinates; margins are not kept
        if b > a:
            kept_origins.append(o - margin)
            keep.append((a, b))
    return AxisPlan(size, padded, tile, tuple(kept_origins), tuple(keep), -margin)


def _balance(padded: int, tile: int, stride: int, need: int, multiple: int) -> tuple[int, int]:
    """The smallest tile that covers the axis with as many tiles as `tile` needs, neighbours
    overlapping by at least `need`.

    Shifting the last tile back inside the frame can waste most of a tile; spreading the same
    number of tiles evenly shrinks them instead (a dynamic-shape runner takes any tile size).
    """
    n = -(-(padded - tile) // stride) + 1
    t = round_up(-(-(padded + (n - 1) * need) // n), multiple)
    while True:
        s = (t - need) // multiple * multiple
        if s >= multiple and (n - 1) * s + t >= padded:
            return t, s
        t += multiple


def suggest_tile(radius: int, multiple: int, max_ratio: float = 1.25, minimum: int = 256) -> int:
    """Smallest tile (a multiple of `multiple`, >= `minimum`) whose overlap costs at most
    `max_ratio` x the untiled compute when the overlap equals the receptive-field radius."""
    t = round_up(max(minimum, overlap_needed(radius, multiple) + multiple), multiple)
    while True:
        stride = (t - overlap_needed(radius, multiple)) // multiple * multiple
        if stride >= multiple and (t / stride) ** 2 <= max_ratio:
            return t
        t += multiple


@dataclass(frozen=True)
class TilePlan:
    rows: AxisPlan
    cols: AxisPlan
    overlap: int

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.tile, self.cols.tile

    @property
    def n_tiles(self) -> int:
        return len(self.rows.origins) * len(self.cols.origins)

    @property
    def compute_ratio(self) -> float:
        """Pixels the network processes relative to one untiled pass over the padded frame."""
        return self.n_tiles * self.rows.tile * self.cols.tile / (self.rows.padded * self.cols.padded)

    def tiles(self) -> Iterator[tuple[int, int, tuple[int, int], tuple[int, int]]]:
        """(y0, x0, (keep_y0, keep_y1), (keep_x0, keep_x1)) in raster order."""
        for y0, ky in zip(self.rows.origins, self.rows.keep):
            for x0, kx in zip(self.cols.origins, self.cols.keep):
                yield y0, x0, ky, kx


def plan_tiles(height: int, width: int, *, tile: int | tuple[int, int], overlap: int, multiple: int,
               pad_to_tile: bool = False, margin: int = 0) -> TilePlan:
    """Plan tiles of `tile` x `tile` (or `(th, tw)`; 0 = one pass over the whole padded frame).

    `pad_to_tile` pads frames smaller than a tile up to the tile, so a fixed-shape engine sees
    one shape only. `margin` mirrors the frame by that many pixels on every side before the network
    sees it, so that pixels at the frame's edges have context as interior ones do (and not the
    network's own zero padding); it must be a multiple of `multiple`.
    """
    th, tw = (tile, tile) if isinstance(tile, (int, np.integer)) else (int(tile[0]), int(tile[1]))
    if multiple < 1:
        raise InputError(f"multiple must be >= 1, got {multiple}")
    if overlap < 0:
        raise InputError(f"overlap must be >= 0, got {overlap}")
    smallest = round_up(overlap_needed(overlap, multiple) + multiple, multiple)  # that tiles at all
    for t in (th, tw):
        if t < 0 or t % multiple:
            near = [v for v in (t // multiple * multiple, round_up(max(t, 1), multiple)) if v >= smallest]
            use = " or ".join(map(str, near)) if near else f"{smallest} or more (overlap {overlap} needs it)"
            raise InputError(f"tile {t} is not a non-negative multiple of {multiple}; use {use}, or 0 for no tiling")
    if height < 1 or width < 1:
        raise InputError(f"cannot tile an empty frame ({height} x {width})")
    if margin < 0 or margin % multiple:
        raise InputError(f"margin must be a non-negative multiple of {multiple}, got {margin}")
    return TilePlan(plan_axis(height, th, overlap, multiple, pad_to_tile, margin),
                    plan_axis(width, tw, overlap, multiple, pad_to_tile, margin), overlap)


def _check_frame(x: np.ndarray, plan: TilePlan, who: str) -> None:
    if x.ndim != 3:
        raise InputError(f"{who} expects a C x H x W array, got shape {x.shape}")
    if (plan.rows.size, plan.cols.size) != x.shape[1:]:
        raise InputError(f"tile plan is for {plan.rows.size} x {plan.cols.size}, frame is {x.shape[1]} x {x.shape[2]}")


def _reflect_index(start: int, n: int, size: int) -> np.ndarray:
    """Indices start..start+n-1 reflected into [0, size) like numpy.pad(mode='reflect')."""
    i = np.arange(start, start + n)
    if size == 1:
        return np.zeros(n, dtype=np.intp)
    period = 2 * (size - 1)
    i = np.abs(i) % period
    return np.where(i >= size, period - i, i)


def fetch_tile(x: np.ndarray, y0: int, x0: int, th: int, tw: int, dst: np.ndarray) -> None:
    """Copy the tile at (y0, x0) of the reflect-padded frame into dst without padding the frame
    (origins may be negative: the frame is mirrored in front too).

    The part inside the frame is a plain slice copy; only the rows and columns beyond its edges
    are gathered by index (a gather of the whole tile is several times slower).
    """
    _, h, w = x.shape
    top, bottom = min(max(-y0, 0), th), max(min(h - y0, th), 0)     # tile rows [top, bottom) are in the frame
    left, right = min(max(-x0, 0), tw), max(min(w - x0, tw), 0)
    bottom, right = max(bottom, top), max(right, left)
    dst[:, top:bottom, left:right] = x[:, y0 + top:y0 + bottom, x0 + left:x0 + right]
    if (top, bottom, left, right) == (0, th, 0, tw):
        return
    ri, ci = _reflect_index(y0, th, h), _reflect_index(x0, tw, w)
    for r0, r1 in ((0, top), (bottom, th)):
        if r1 > r0:
            dst[:, r0:r1] = x[:, ri[r0:r1, None], ci[None, :]]
    for c0, c1 in ((0, left), (right, tw)):
        if c1 > c0 and bottom > top:
            dst[:, top:bottom, c0:c1] = x[:, y0 + top:y0 + bottom, ci[c0:c1]]


def _ramp(n: int, width: int, lead: bool, trail: bool) -> np.ndarray:
    """1-D blend weight: rises over `width` px at sides facing another tile, 1 elsewhere."""
    w = np.ones(n, dtype=np.float32)
    if width > 0:
        r = (np.arange(width, dtype=np.float32) + 0.5) / width
        if lead:
            w[:width] = np.minimum(w[:width], r)
        if trail:
            w[n - width:] = np.minimum(w[n - width:], r[::-1])
    return w


def run_tiled(predict: Predictor, x: np.ndarray, plan: TilePlan, *, batch: int = 1,
              out_channels: int | None = None, blend: str = "crop", progress: bool = False,
              out: np.ndarray | None = None, sink: TileSink | None = None,
              inputs: InputFill | None = None) -> np.ndarray | None:
    """Run `predict` over the tiles of `plan` and stitch a (out_channels, H, W) float32 result.

    `predict` maps float32 (N, C, th, tw) to (N, C_out, th, tw); with `inputs`, it is called as
    `predict(batch, inputs(batch, origins))`, the network's extra inputs for those tiles (origins are
    the tiles' top-left corners in the frame). `blend="crop"` keeps each pixel
    from one tile (exact); `blend="feather"` averages overlapping tiles with linear ramps, for
    models with global context where no overlap makes tiles exact. With `sink` (crop only), each
    tile's kept core goes to `sink(core, y0, x0)` as it arrives and no frame is stitched here:
    the caller writes it straight into its final form (one pass less over the frame).
    """
    _check_frame(x, plan, "run_tiled")
    if blend not in ("crop", "feather"):
        raise InputError(f"blend {blend!r} is not one of crop, feather")
    if sink is not None and blend != "crop":
        raise InputError("a tile sink needs blend='crop' (feathered tiles must be summed first)")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    c, h, w = x.shape
    co = c if out_channels is None else out_channels
    if sink is not None:
        out = None
    elif out is None:
        out = np.zeros((co, h, w), dtype=np.float32) if blend == "feather" else np.empty((co, h, w), np.float32)
    elif blend == "feather":
        out[...] = 0
    th, tw = plan.tile_shape
    tiles = list(plan.tiles())
    buf = np.empty((min(batch, len(tiles)), c, th, tw), dtype=np.float32)
    weight = np.zeros((h, w), dtype=np.float32) if blend == "feather" else None

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tiles), unit="tile", desc="denoise")
    try:
        for first in range(0, len(tiles), buf.shape[0]):
            group = tiles[first:first + buf.shape[0]]
            for k, (y0, x0, _, _) in enumerate(group):
                fetch_tile(x, y0, x0, th, tw, buf[k])
            tiles_in = buf[:len(group)]
            if inputs is None:
                pred = np.asarray(predict(tiles_in))
            else:
                pred = np.asarray(predict(tiles_in, inputs(tiles_in, [(y0, x0) for y0, x0, _, _ in group])))
            if pred.shape != (len(group), co, th, tw):
                raise InputError(
                    f"predictor returned shape {pred.shape}, expected {(len(group), co, th, tw)}"
                )
            for k, (y0, x0, (ky0, ky1), (kx0, kx1)) in enumerate(group):
                if sink is not None:
                    sink(pred[k, :, ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0], ky0, kx0)
                elif blend == "crop":
                    out[:, ky0:ky1, kx0:kx1] = pred[k, :, ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
                else:
                    _accumulate(out, weight, pred[k], y0, x0, plan)
            if bar is not None:
                bar.update(len(group))
    finally:
        if bar is not None:
            bar.close()
    if weight is not None:
        out /= weight
    return out


def _accumulate(out, weight, tile_pred, y0, x0, plan: TilePlan) -> None:
    th, tw = plan.tile_shape
    h, w = weight.shape
    ramp = plan.overlap
    rows, cols = plan.rows, plan.cols
    wy = _ramp(th, min(ramp, th // 2), y0 > rows.start, y0 + th < rows.start + rows.padded)
    wx = _ramp(tw, min(ramp, tw // 2), x0 > cols.start, x0 + tw < cols.start + cols.padded)
    # the part of the tile inside the frame (margins and padding are not kept)
    ya, yb, xa, xb = max(y0, 0), min(y0 + th, h), max(x0, 0), min(x0 + tw, w)
    wt = wy[ya - y0:yb - y0, None] * wx[None, xa - x0:xb - x0]
    out[:, ya:yb, xa:xb] += tile_pred[:, ya - y0:yb - y0, xa - x0:xb - x0] * wt
    weight[ya:yb, xa:xb] += wt


def iter_tiles(x: np.ndarray, plan: TilePlan) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (y0, x0, tile) for every tile of `plan`, cut exactly as `run_tiled` cuts them.

    Each tile is a fresh float32 (C, th, tw) array (reflect padding beyond the frame edge), so
    callers such as calibration readers can keep a few without holding the frame.
    """
    _check_frame(x, plan, "iter_tiles")
    c = x.shape[0]
    th, tw = plan.tile_shape
    for y0, x0, _, _ in plan.tiles():
        dst = np.empty((c, th, tw), dtype=np.float32)
        fetch_tile(x, y0, x0, th, tw, dst)
        yield y0, x0, dst
