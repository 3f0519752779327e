"""Denoiser: wires validation, levels, packing, tiling and a runner. Orchestration only."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import bayer, rgb
from .ensemble import orientations, run_ensemble
from .errors import InputError, NoiseEstimateError, NoiseFallbackWarning, UnboundedContextWarning
from .extra_inputs import InputFiller, check_explicit
from .spec import ModelSpec
from .tiling import plan_tiles, round_up, run_tiled


# How far the frame is mirrored on every side before the network sees it (network-input pixels,
# rounded up to the model's multiple, at most the receptive radius): without it, pixels at the
# frame's edges see the network's own zero padding where interior pixels see neighbours.
BORDER = 8


@dataclass(frozen=True)
class Levels:
    """Resolved per-frame settings: CFA phase, black per CFA site, white, ISO."""

    cfa: str | None
    black: np.ndarray
    white: float
    iso: float | None
    iso_from_file: bool = False  # the ISO came from file metadata, not from the caller


@dataclass(frozen=True)
class Prepared:
    """A frame turned into network input, with what is needed to turn the output back."""

    x: np.ndarray                 # (C, h, w) float32 network input
    dtype: np.dtype               # the input frame's dtype
    levels: Levels
    geometry: bayer.BayerGeometry | None
    gain: float                   # network_input = normalised * gain + offset
    offset: float
    shape: tuple[int, ...] = ()   # the input frame's shape (the output has it too)
    noise: tuple[float, float] | None = None  # (k, sigma^2) in normalised units, where the model needs it


def _frame_fields(raw) -> tuple[np.ndarray, dict[str, Any]]:
    """Split a RawFrame-like object (or a path to a RAW file) into data and metadata."""
    if isinstance(raw, (str, os.PathLike)):
        from .rawio import read_raw

        raw = read_raw(raw)
    if isinstance(raw, np.ndarray):
        return raw, {}
    if hasattr(raw, "data") and hasattr(raw, "white_level"):
        meta = getattr(raw, "meta", None) or {}
        return np.asarray(raw.data), {
            "cfa": getattr(raw, "cfa", None),
            "black_level": getattr(raw, "black_level", None),
            "white_level": raw.white_level,
            "iso": meta.get("iso") if isinstance(meta, dict) else getattr(meta, "iso", None),
        }
    raise InputError(
        f"cannot denoise a {type(raw).__name__}; pass a numpy array, a RawFrame (rawdenoise.read_raw) "
        f"or a path to a RAW file"
    )


class Denoiser:
    """Denoise sensor frames with one model on one runner.

    >>> with Denoiser.load("unet.onnx") as dn:
    ...     clean = dn.run(raw, cfa="RGGB", black_level=512, white_level=16383)
    """

    def __init__(self, runner, *, tile: int | None = None, overlap: int | None = None,
                 batch: int | None = None, blend: str | None = None, border: int | None = None):
        runner.activate()
        self.runtime = runner
        self.spec: ModelSpec = runner.spec
        s = self.spec
        static = runner.static_hw()
        if static is not None:
            if tile not in (None, 0) and (tile, tile) != static:
                raise InputError(f"this model was built for {static[0]} x {static[1]} tiles; tile={tile} cannot run on it")
            self.tile: int | tuple[int, int] = static
        else:
            self.tile = s.tile if tile is None else int(tile)
        self.overlap = (s.receptive_radius if not s.unbounded else self._feather_overlap()) \
            if overlap is None else int(overlap)
        static_batch = getattr(runner, "static_batch", lambda: None)()
        if static_batch and batch not in (None, static_batch):
            raise InputError(f"this model was built for batch {static_batch}; batch={batch} cannot run on it")
        self.batch = static_batch or (runner.preferred_batch() if batch is None else int(batch))
        if self.batch < 1 or self.overlap < 0:
            raise InputError(f"batch must be >= 1 and overlap >= 0, got batch={self.batch} overlap={self.overlap}")
        # a model with global context (no finite receptive radius) cannot be tiled exactly: blend
        self.blend = blend or ("feather" if s.unbounded else "crop")
        # frame edges get mirrored context, as interior tiles get their neighbours (see BORDER); from
        # the model alone, so that tiled and untiled runs see the same frame
        reach = BORDER if s.unbounded else min(s.receptive_radius, BORDER)
        self.border = round_up(reach, s.multiple) if border is None else int(border)
        if self.border < 0 or self.border % s.multiple:
            raise InputError(f"border must be a non-negative multiple of the model's multiple {s.multiple}, "
                             f"got {self.border}")
        if s.unbounded and self.tile != 0:
            warnings.warn(f"{s.name}: the receptive field is unbounded ({s.notes.get('unbounded_by', 'global context')}), "
                          f"so tiles of {self.tile} are blended with feathered ramps over {self.overlap} pixels and "
                          f"differ slightly from one pass over the whole frame; pass tile=0 for that",
                          UnboundedContextWarning, stacklevel=3)
        # validate tile/overlap now rather than on the first frame: plan a frame that needs tiles
        side = max(self.tile if isinstance(self.tile, int) else max(self.tile), 3 * s.multiple) + s.multiple
        plan_tiles(side, side, tile=self.tile, overlap=self.overlap, multiple=s.multiple,
                   pad_to_tile=not runner.dynamic_shapes, margin=self.border)

    def _feather_overlap(self) -> int:
        """Overlap (and ramp width) of feathered tiles: an eighth of the tile, on the model's grid."""
        t = self.tile if isinstance(self.tile, int) else min(self.tile)
        return round_up(max(t // 8, 1), self.spec.multiple)

    @classmethod
    def load(cls, path, *, runtime: str | None = None, device: str | None = None, tile: int | None = None,
             overlap: int | None = None, batch: int | None = None, precision: str | None = None,
             threads: int | None = None, border: int | None = None, blend: str | None = None,
             **runner_options) -> "Denoiser":
        """Open a model file (.pt, .onnx, .engine/.plan) with the runtime its suffix implies."""
        import runtimes

        if str(path) == "default":
            from .models import default_model_path

            path = default_model_path(runtime, precision)
        path = Path(path)
        name = runtimes.canonical(runtime) if runtime else runtimes.for_path(path)
        runner = runtimes.get(name)(path, device=device, precision=precision, threads=threads, **runner_options)
        return cls(runner, tile=tile, overlap=overlap, batch=batch, border=border, blend=blend)

    @classmethod
    def from_module(cls, module, spec: ModelSpec, **kwargs) -> "Denoiser":
        """Wrap an in-memory torch module (e.g. straight after training)."""
        from runtimes.torch_runner import TorchRunner

        opts = {k: kwargs.pop(k) for k in ("device", "precision", "threads", "channels_last") if k in kwargs}
        return cls(TorchRunner(module, spec=spec, **opts), **kwargs)

    # ---- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        self.runtime.deactivate()

    def __enter__(self) -> "Denoiser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the job ----------------------------------------------------------------------------
    def resolve_levels(self, data: np.ndarray, meta: dict, cfa, black_level, white_level, iso) -> Levels:
        """Arguments win over file metadata; float frames default to black 0, white 1."""
        s = self.spec
        cfa = cfa if cfa is not None else meta.get("cfa")
        black = black_level if black_level is not None else meta.get("black_level")
        white = white_level if white_level is not None else meta.get("white_level")
        iso_from_file = iso is None and meta.get("iso") is not None
        iso = iso if iso is not None else meta.get("iso")
        if s.bayer:
            if cfa is None:
                raise InputError(
                    "cfa is required for a numpy Bayer frame: pass cfa='RGGB' (or BGGR, GRBG, GBRG), "
                    "the sensor's 2x2 pattern at the frame's top-left pixel"
                )
            cfa = bayer.parse_cfa(cfa)
            n_sites = 4
        else:
            cfa, n_sites = None, 1
        if white is None:
            white = 1.0 if data.dtype.kind == "f" else (rgb.default_white(data.dtype) if s.layout == "rgb" else None)
            if white is None:
                raise InputError(
                    f"white_level is required for a {data.dtype} Bayer frame: the sensor's saturation "
                    f"value in DN (e.g. 16383 for a 14-bit sensor), and black_level with it"
                )
        if black is None:
            if data.dtype.kind in "ui" and s.bayer:
                raise InputError(
                    f"black_level is required for a {data.dtype} Bayer frame: the sensor's black "
                    f"offset in DN (a scalar or 4 values in the 2x2 order of the cfa; 0 if already subtracted)"
                )
            black = 0.0
        black_arr, white_f = bayer.check_levels(black, white, n_sites)
        if iso is not None:
            iso = float(iso)
            if not np.isfinite(iso) or iso <= 0:
                raise InputError(f"iso must be a positive number, got {iso}")
        return Levels(cfa, black_arr, white_f, iso, iso_from_file)

    def _iso(self, levels: Levels) -> float | None:
        """The ISO the k-sigma transform may use (a blind model ignores ISOs read from files)."""
        if self.spec.noise_source == "frame" and levels.iso_from_file:
            return None
        return levels.iso

    def _noise(self, lv: Levels, noise, estimate) -> tuple[float, float] | None:
        """The frame's (k, sigma^2) in normalised units, where the model needs it and no ISO serves.

        A k-sigma model given an ISO uses the manifest's coefficients directly (`_affine`); a model
        that takes the noise level as an input gets it from the same coefficients. Otherwise it is
        estimated from the frame itself (`estimate()`).
        """
        s = self.spec
        takes_noise = any(i.kind == "noise_level" for i in s.inputs)
        if noise is not None:
            return tuple(float(v) for v in noise)
        if s.ksigma is None and not takes_noise:
            return None
        iso = self._iso(lv)
        if iso is not None and s.ksigma is not None:
            return s.ksigma.noise(iso) if takes_noise else None
        if iso is not None and not lv.iso_from_file:
            raise InputError(f"this model's manifest has no noise coefficients to turn iso={iso:g} into noise "
                             f"levels; pass noise=(k, sigma2) in normalised units, or no ISO to estimate it "
                             f"from the frame")
        try:
            return estimate()
        except NoiseEstimateError as e:
            # a flat, noise-free or tiny frame is a legitimate input: run it at the least noise the
            # model was trained for, and say so
            lowest = self._lowest_trained_noise()
            if lowest is None:
                raise
            noise, what = lowest
            warnings.warn(f"{str(e).split(';')[0]}; denoised at {what} (pass iso= or noise= to choose)",
                          NoiseFallbackWarning, stacklevel=4)
            return noise

    def _lowest_trained_noise(self) -> tuple[tuple[float, float], str] | None:
        """(k, sigma^2) at the lowest ISO the model was trained for, when its manifest says."""
        s = self.spec
        iso_range = (s.notes.get("config") or {}).get("iso_range") if isinstance(s.notes, dict) else None
        if s.ksigma is None or not iso_range:
            return None
        iso = float(min(iso_range))
        return s.ksigma.noise(iso), f"the lowest noise the model was trained for (ISO {iso:g} of its training profile)"

    def _affine(self, levels: Levels, noise) -> tuple[float, float]:
        """network_input = normalised * gain + offset (k-sigma transform and manifest scaling).

        The k-sigma transform needs the frame's noise: explicit or estimated `noise` (k, sigma^2 in
        normalised units), else the ISO with the manifest's coefficients. A model whose manifest
        says `noise_source="frame"` was not fitted to the camera that wrote the file, so a file's
        ISO is not used for it (only an explicit one).
        """
        s = self.spec
        gain, offset = 1.0, 0.0
        ks = s.ksigma
        if ks is not None:
            if noise is not None:
                k, s2 = noise
                gain, offset = ks.gain_offset(k=k * ks.v, sigma=s2 * ks.v ** 2)
            else:
                gain, offset = ks.gain_offset(iso=self._iso(levels))
        return gain * s.scale, offset * s.scale + s.offset

    def prepare(self, raw, *, cfa=None, black_level=None, white_level=None, iso=None, noise=None) -> "Prepared":
        """The first half of `run`: validate, resolve levels, normalise, pack and scale.

        Returns the network input frame and what `finish` needs to map the output back. Also used
        by INT8 calibration, so calibration tiles are exactly what the runner sees.
        """
        return self._prepare_fields(*_frame_fields(raw), cfa, black_level, white_level, iso, noise)

    def _prepare_fields(self, data: np.ndarray, meta: dict, cfa, black_level, white_level, iso, noise) -> "Prepared":
        s = self.spec
        if s.bayer:
            bayer.check_bayer_array(data)
        else:
            rgb.check_rgb_array(data, s.data_channels)
        lv = self.resolve_levels(data, meta, cfa, black_level, white_level, iso)
        geom = None
        if s.bayer:
            geom = bayer.geometry(data.shape, lv.cfa, s.channel_order)
            # blind: the noise is read from the Bayer frame itself, so that the input scaling
            # that depends on it still folds into the one packing pass
            from .noise import estimate_noise_bayer

            noise = self._noise(lv, noise, lambda: estimate_noise_bayer(data, geom, lv.black, lv.white))
            gain, offset = self._affine(lv, noise)
            x = self.encode(data, lv, geom, gain, offset)
        else:
            x = self.encode(data, lv, None, 1.0, 0.0)
            from .noise import estimate_noise

            noise = self._noise(lv, noise, lambda: estimate_noise(x))
            gain, offset = self._affine(lv, noise)
            if (gain, offset) != (1.0, 0.0):
                x *= np.float32(gain)
                x += np.float32(offset)
        return Prepared(x, data.dtype, lv, geom, gain, offset, data.shape, noise)

    def encode(self, data: np.ndarray, lv: Levels, geom, gain: float, offset: float) -> np.ndarray:
        """The frame as network input in the model's layout, normalised and scaled (`* gain + offset`)."""
        s = self.spec
        if s.layout == "bayer4":
            return bayer.pack(data, geom, lv.black, lv.white, clip=s.clip_input, gain=gain, offset=offset)
        if s.layout == "mosaic":
            return bayer.to_mosaic(data, geom, lv.black, lv.white, clip=s.clip_input, gain=gain, offset=offset)
        x = rgb.to_planar(data, float(lv.black[0]), lv.white, s.channel_order)
        if s.clip_input:
            np.clip(x, 0.0, 1.0, out=x)
        if (gain, offset) != (1.0, 0.0):
            x *= np.float32(gain)
            x += np.float32(offset)
        return x

    def plan(self, x: np.ndarray):
        """The tile plan `run` uses for a network-input frame `x` (C, h, w)."""
        _, h, w = x.shape
        return plan_tiles(h, w, tile=self.tile, overlap=self.overlap, multiple=self.spec.multiple,
                          pad_to_tile=not self.runtime.dynamic_shapes, margin=self.border)

    def finish(self, y: np.ndarray, p: "Prepared") -> np.ndarray:
        """The second half of `run`: residual, inverse scaling, unpack, de-normalise, cast (in place on y)."""
        s = self.spec
        lv = p.levels
        if s.bayer:
            out = np.empty((p.geometry.height, p.geometry.width), p.dtype)
            self._finish_block(y, 0, 0, p, out)
            return out
        if s.output == "residual":
            y += p.x[: s.out_channels]
        if (p.gain, p.offset) != (1.0, 0.0):
            y -= np.float32(p.offset)
            y *= np.float32(1.0 / p.gain)
        return rgb.from_planar(y, float(lv.black[0]), lv.white, p.dtype, s.channel_order,
                               shape=p.shape if s.out_channels == s.data_channels else None)

    def _finish_block(self, y: np.ndarray, y0: int, x0: int, p: "Prepared", out: np.ndarray) -> None:
        """`finish` for the block of network output at (y0, x0) of the network input, written into `out`."""
        s = self.spec
        if s.output == "residual":
            skip = p.x[: s.out_channels, y0:y0 + y.shape[1], x0:x0 + y.shape[2]]
            y = np.add(y, skip, out=y) if y.flags.writeable else y + skip
        lv = p.levels
        to_frame = bayer.unpack if s.layout == "bayer4" else bayer.from_mosaic
        to_frame(y, p.geometry, lv.black, lv.white, dtype=p.dtype, out=out, gain=p.gain, offset=p.offset,
                 origin=(y0, x0))

    def input_filler(self, p: "Prepared", inputs: Mapping[str, np.ndarray] | None = None,
                     draw: int = 0) -> InputFiller | None:
        """What fills the model's extra inputs for the tiles of prepared frame `p` (None: it has none)."""
        if not self.spec.inputs:
            if inputs:
                check_explicit(self.spec, p.x.shape[1:], inputs)  # names the inputs the model does not have
            return None
        return InputFiller(self.spec, p.x.shape[1:], noise=p.noise, gain=p.gain, offset=p.offset,
                           explicit=inputs, draw=draw)

    def infer(self, x: np.ndarray, *, progress: bool = False, sink=None, inputs=None) -> np.ndarray | None:
        """Network output for a whole network-input frame `x` (C, h, w), tiled and batched; with
        `sink`, each tile's kept core goes to `sink(core, y0, x0)` instead (see `run_tiled`);
        `inputs` fills the model's extra inputs per batch of tiles (`input_filler`)."""
        return run_tiled(self.runtime.infer, x, self.plan(x), batch=self.batch, out_channels=self.spec.out_channels,
                         blend=self.blend, progress=progress, sink=sink, inputs=inputs)

    def run(self, raw, *, cfa=None, black_level=None, white_level=None, iso=None, noise=None,
            inputs: Mapping[str, np.ndarray] | None = None, ensemble: int = 1, samples: int | None = None,
            progress: bool = False) -> np.ndarray:
        """Denoise one frame; returns the same shape and dtype, in sensor units.

        `raw` is a 2-D Bayer array (H x W x 3 for RGB models, H x W for grayscale), a RawFrame, or a
        RAW file path.
        `noise` = (k, sigma^2): the frame's Poisson-Gaussian parameters in normalised [0, 1] units,
        for models conditioned on the noise level (otherwise from `iso` or estimated).
        `inputs`: whole-frame values for extra inputs the manifest declares, by name, instead of the
        SDK's own (at the input's declared resolution of the network input; see `ModelSpec.inputs`).
        `ensemble` = 2, 4 or 8 averages the outputs over that many orientations of the frame
        (rawdenoise.ensemble), at that many times the cost.
        `samples`: for a model with random (gaussian) inputs, the number of draws whose outputs are
        averaged (Monte-Carlo), at that many times the cost; default: the manifest's `samples`.
        The input is never written to.
        """
        orientations(ensemble)              # a bad value fails before any work
        draws = self._draws(samples, inputs)
        data, meta = _frame_fields(raw)
        p = self._prepare_fields(data, meta, cfa, black_level, white_level, iso, noise)
        if ensemble != 1 and inputs:
            raise InputError("ensemble averages over turned frames, and explicit inputs cannot be turned with "
                             "them; drop inputs= or ensemble=")
        if ensemble != 1 or draws != 1:
            return run_ensemble(self, data, p, ensemble, draws=draws, inputs=inputs, progress=progress)
        fill = self.input_filler(p, inputs)
        if self.spec.bayer and self.blend == "crop":
            # each tile is unpacked into the output as it arrives: no float frame is stitched
            out = np.empty((p.geometry.height, p.geometry.width), p.dtype)
            self.infer(p.x, progress=progress, inputs=fill,
                       sink=lambda core, y0, x0: self._finish_block(core, y0, x0, p, out))
            return out
        return self.finish(self.infer(p.x, progress=progress, inputs=fill), p)

    def _draws(self, samples: int | None, inputs) -> int:
        """Monte-Carlo draws of the random inputs to average (1 for a model without any)."""
        random = [i.name for i in self.spec.inputs if i.kind == "gaussian"]
        n = self.spec.samples if samples is None else samples
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise InputError(f"samples must be a positive integer, got {n!r}")
        if samples is not None and samples > 1 and not random:
            raise InputError(f"samples={samples} averages draws of a model's random inputs, and this model has none")
        if random and inputs and set(random) <= set(inputs):  # the caller fixed every random input
            if samples is not None and samples > 1:
                raise InputError(f"samples={samples} draws the random inputs anew each time, but inputs= fixes all "
                                 f"of them; pass samples=1")
            return 1
        return int(n) if random else 1

    def __repr__(self) -> str:
        return (f"<Denoiser {self.spec.name} on {self.runtime!r} tile={self.tile} overlap={self.overlap} "
                f"batch={self.batch} blend={self.blend} border={self.border}>")
