"""Calibration tiles from real RAW files, prepared exactly as `Denoiser.run` prepares them.

INT8 quantization (ONNX Runtime `quantize_static`, TensorRT's legacy calibrator) needs samples of
what the network really sees: packed, black/white-normalised, scaled (k-sigma / manifest
scaling) tiles of the shape the deployed model runs on. `CalibrationTiles` reads RAW files one at
a time (paths, folders, globs), runs the same level resolution, packing, affine transform, tile
plan and tile fetch as `Denoiser.run`, and keeps only a bounded number of tiles per frame, so
memory stays at about one frame plus the kept tiles.

The same object feeds ONNX Runtime (`get_next()` / `rewind()`) and TensorRT (`batches(n)`), and
holds back a disjoint set of tiles for measuring the accuracy of the quantized model.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import InputError
from .fileio import sha256_file
from .spec import ModelSpec
from .tiling import iter_tiles

# suffixes picked up when a folder is given (camera RAW files plus the SDK's .npy + sidecar frames)
RAW_SUFFIXES = (".npy", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".rw2", ".orf", ".pef", ".srw",
                ".3fr", ".iiq", ".x3f", ".nrw", ".raw", ".bin")


def expand_sources(sources: Iterable[Any]) -> list[Path]:
    """Files named by paths, folders (RAW suffixes, not recursive) and glob patterns; sorted, unique.

    An in-memory frame (array or RawFrame-like object) is passed through unchanged.
    """
    out: list[Any] = []
    seen: set[str] = set()

    def add(p):
        key = str(Path(p).resolve())
        if key not in seen:
            seen.add(key)
            out.append(Path(p))

    for src in sources:
        if not isinstance(src, (str, os.PathLike)):
            out.append(src)
            continue
        s = str(src)
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in RAW_SUFFIXES)
            if not found:
                raise InputError(f"calibration folder {p} holds no RAW files ({', '.join(RAW_SUFFIXES)})")
            for q in found:
                add(q)
        elif p.is_file():
            add(p)
        elif glob.has_magic(s):
            found = sorted(Path(q) for q in glob.glob(s, recursive=True) if Path(q).is_file())
            if not found:
                raise InputError(f"calibration pattern {s!r} matches no file")
            for q in found:
                add(q)
        else:
            raise InputError(f"calibration source {s!r} is not a file, a folder or a glob pattern")
    if not out:
        raise InputError("no calibration sources given; pass RAW files, folders or glob patterns")
    return out


class _SpecRunner:
    """The minimum a Denoiser needs to resolve levels and plan tiles: a manifest and a shape."""

    name = "calibration"
    device = "cpu"

    def __init__(self, spec: ModelSpec, static_hw):
        self.spec = spec
        self._static = static_hw

    def activate(self):
        return self

    def deactivate(self):
        pass

    def static_hw(self):
        return self._static

    def preferred_batch(self) -> int:
        return 1

    @property
    def dynamic_shapes(self) -> bool:
        return self._static is None

    def infer(self, batch):  # never called: calibration only prepares inputs
        raise AssertionError("calibration runner cannot infer")


# held-back tiles whose brightest pixel stays below this share of white are also measured brightened
# to white, so that the accuracy report sees highlights whatever exposure the frames happen to have
# (the network input's range itself is widened to [0, white]: CalibrationTiles.input_range)
HIGHLIGHT_REACH = 0.9


@dataclass(frozen=True)
class FrameScale:
    """How one frame's network units relate to its sensor units, and its noise: what a tile needs
    to be measured in DN, or re-noised, once its frame is gone."""

    dn_per_unit: float     # (white - mean black) / gain: network units -> DN
    peak_dn: float         # white - mean black
    gain: float = 1.0      # network input = normalised * gain + offset
    offset: float = 0.0
    noise: tuple[float, float] | None = None   # (k, sigma^2) in normalised units, when known
    highlight: bool = False   # the tile is a held-back tile brightened to white (`brightened`)

    def brightened(self, tile: np.ndarray) -> np.ndarray | None:
        """The tile as a brighter exposure whose brightest pixel is at white, or None when it
        already reaches HIGHLIGHT_REACH of white (or holds no signal)."""
        top = (float(tile.max()) - self.offset) / self.gain    # normalised: 1.0 is white
        if top >= HIGHLIGHT_REACH or top <= 1e-3:
            return None
        f = 1.0 / top
        return ((tile - np.float32(self.offset)) * np.float32(f) + np.float32(self.offset)).astype(np.float32)


@dataclass(frozen=True)
class PreparedFrame:
    """Network input of one frame and how to read it (FrameScale)."""

    x: np.ndarray          # (C, h, w) float32, exactly what Denoiser.run tiles
    scale: FrameScale
    source: str


class CalibrationTiles:
    """Stream calibration tiles from RAW sources.

    `tile` is the (H, W) the deployed model runs on (default: the manifest's tile); `samples`
    bounds the calibration tiles over all frames, `holdout` the held-back tiles kept for accuracy
    checks (never used for calibration). Levels/CFA/ISO overrides win over file metadata, as in
    `Denoiser.run`. Tiles per frame are drawn with a fixed seed, so runs are reproducible.
    """

    def __init__(self, sources, spec: ModelSpec, *, tile=None, overlap: int | None = None,
                 samples: int = 64, holdout: int = 8, input_name: str = "input", cfa=None,
                 black_level=None, white_level=None, iso=None, progress: bool = False, seed: int = 0):
        from .denoiser import Denoiser

        if samples < 1 or holdout < 0:
            raise InputError(f"samples must be >= 1 and holdout >= 0, got samples={samples} holdout={holdout}")
        self.files = expand_sources(sources)
        self.spec = spec
        tile = spec.tile if tile is None else tile
        static = (int(tile), int(tile)) if isinstance(tile, (int, np.integer)) else tuple(int(t) for t in tile)
        if static == (0, 0):
            static = None  # whole frames (only sensible for small frames)
        self.static_hw = static
        # a Denoiser on a manifest-only runner: its own level resolution and affine, no model
        self._dn = Denoiser(_SpecRunner(spec, static), tile=0 if static is None else None, overlap=overlap,
                           batch=1)
        self.samples = int(samples)
        self.holdout = int(holdout)
        self.input_name = input_name
        self.overrides = dict(cfa=cfa, black_level=black_level, white_level=white_level, iso=iso)
        self.progress = progress
        self.seed = int(seed)
        self._held: list[tuple[np.ndarray, FrameScale]] | None = None
        self._input_range = (math.inf, -math.inf)
        self._reader: Iterator[np.ndarray] | None = None

    # ---- preparation (mirrors the first half of Denoiser.run) ------------------------------
    def prepare(self, raw) -> PreparedFrame:
        """Network input of one frame, from `Denoiser.prepare` itself."""
        p = self._dn.prepare(raw, **self.overrides)
        peak = p.levels.white - float(np.mean(p.levels.black))
        src = str(raw) if isinstance(raw, (str, os.PathLike)) else type(raw).__name__
        scale = FrameScale(float(peak / p.gain), float(peak), float(p.gain), float(p.offset),
                           p.noise or _blind_noise(p.x, p.gain, p.offset))
        return PreparedFrame(p.x, scale, src)

    def plan(self, x: np.ndarray):
        return self._dn.plan(x)

    # ---- selection ---------------------------------------------------------------------------
    def _quota(self, i: int, total: int) -> int:
        n = len(self.files)
        return total // n + (1 if i < total % n else 0)

    def _walk(self, want_calib: bool = True) -> Iterator[tuple[str, np.ndarray, FrameScale]]:
        """('calib' | 'held', tile, its frame's scale) over all frames, one frame in memory at a time."""
        files = self.files
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(files), unit="frame", desc="calibration")
        try:
            for i, src in enumerate(files):
                k_cal = self._quota(i, self.samples) if want_calib else 0
                k_held = self._quota(i, self.holdout)
                if k_cal or k_held:
                    frame = self.prepare(src)
                    plan = self.plan(frame.x)
                    order = np.random.default_rng(self.seed + i).permutation(plan.n_tiles)
                    # held-back tiles are reserved first, at most half of the frame's tiles
                    n_held = min(k_held, plan.n_tiles // 2)
                    n_cal = min(self._quota(i, self.samples), plan.n_tiles - n_held)
                    held = set(order[:n_held].tolist())
                    cal = set(order[n_held:n_held + n_cal].tolist()) if want_calib else set()
                    scale = frame.scale
                    for j, (_, _, t) in enumerate(iter_tiles(frame.x, plan)):
                        role = "calib" if j in cal else "held" if j in held else None
                        if role is None:
                            continue
                        yield role, t, scale
                        self._input_range = (min(self._input_range[0], scale.offset),
                                             max(self._input_range[1], scale.gain + scale.offset))
                        bright = scale.brightened(t) if role == "held" else None
                        if bright is not None:    # highlights, for the accuracy report
                            yield role, bright, replace(scale, highlight=True)
                    del frame
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    # ---- consumers ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[np.ndarray]:
        """Calibration tiles (C, th, tw), float32; caches the held-back tiles on the way."""
        held: list[tuple[np.ndarray, FrameScale]] = []
        for role, t, dn in self._walk():
            if role == "calib":
                yield t
            else:
                held.append((t, dn))
        self._held = held

    def batches(self, batch: int, *, drop_last: bool = True) -> Iterator[np.ndarray]:
        """(batch, C, th, tw) arrays for a fixed-batch calibrator (TensorRT)."""
        if batch < 1:
            raise InputError(f"batch must be >= 1, got {batch}")
        buf: list[np.ndarray] = []
        for t in self:
            buf.append(t)
            if len(buf) == batch:
                yield np.stack(buf)
                buf = []
        if buf and not drop_last:
            yield np.stack(buf)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """ONNX Runtime CalibrationDataReader protocol: one (1, C, th, tw) tile per call, None at the end."""
        if self._reader is None:
            self._reader = iter(self)
        t = next(self._reader, None)
        return None if t is None else {self.input_name: t[None]}

    def rewind(self) -> None:
        self._reader = None

    def held_back(self) -> tuple[np.ndarray, list[FrameScale]]:
        """Held-back tiles (N, C, th, tw) and each tile's frame scale."""
        if self._held is None:
            self._held = [(t, sc) for role, t, sc in self._walk(want_calib=False) if role == "held"]
        if not self._held:
            return np.empty((0, self.spec.in_channels, 0, 0), np.float32), []
        return np.stack([t for t, _ in self._held]), [sc for _, sc in self._held]

    def source_hashes(self) -> dict[str, str]:
        """sha256 of each calibration file (and of its .json sidecar when it has one)."""
        out = {}
        for p in self.files:
            if isinstance(p, Path):
                out[str(p)] = sha256_file(p)
                side = p.with_suffix(".json")
                if p.suffix.lower() == ".npy" and side.is_file():
                    out[str(side)] = sha256_file(side)
        return out

    def __len__(self) -> int:
        """Upper bound of calibration tiles (frames may hold fewer tiles than their quota)."""
        return self.samples

    def input_range(self) -> tuple[float, float]:
        """What the network input can hold for the frames read so far: black (0) to white (1) after
        the manifest's scaling, [offset, gain + offset], widest over the frames. A quantized model's
        input range must cover it whatever the frames' own pixels reach: the input also feeds the
        global residual, so a clipped input range clips the output's highlights."""
        return self._input_range

    @property
    def tile_shape(self) -> tuple[int, int] | None:
        return self.static_hw


def _blind_noise(x: np.ndarray, gain: float, offset: float) -> tuple[float, float] | None:
    """The frame's (k, sigma^2) estimated from its normalised network input: the Poisson-Gaussian
    fit, else signal-independent noise of the details' robust variance; None for a noise-free frame."""
    from .errors import NoiseEstimateError
    from .noise import estimate_noise, robust_variance

    norm = (x - np.float32(offset)) * np.float32(1.0 / gain)
    try:
        return estimate_noise(norm)
    except NoiseEstimateError:
        var = robust_variance(norm)
        return (0.0, var) if var > 0 else None


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB between two arrays for a signal peak `peak` (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)
