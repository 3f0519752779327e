"""Values for a network's extra inputs (noise maps, random latents, constants), tile by tile.

Each extra input declared in the manifest (`ModelSpec.inputs`) is filled for a batch of tiles
from what the tile is and where it lies, never from the order tiles are run in: a noise map is a
pointwise function of the tile's own pixels, a random latent is a function of the seed and the
absolute position in the frame, an explicit array is cut at the tile's place. So a tiled run
equals an untiled one, and two runs give the same output.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import InputError
from .spec import ExtraInput, ModelSpec
from .tiling import fetch_tile

def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 whose output bits all depend on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def positional_normal(seed: int, draw: int, channels: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """float32 (channels, h, w) of N(0, 1) values that depend only on (seed, draw, channel, row, column).

    A counter-based generator: each value is a hash of its coordinates turned into a normal deviate
    by Box-Muller, so any window of the infinite field can be drawn on its own, in any order.
    """
    key = _mix64(np.array([seed & 0xFFFFFFFF, draw & 0xFFFFFFFF], np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    base = key[:1] ^ (key[1:] * np.uint64(0xD1B54A32D192ED03))  # arrays: uint64 wrap-around is silent
    # 21 bits per coordinate (two's complement: positions in the mirrored margin are negative), so
    # positions -1 048 576 .. 1 048 575 and 2 097 151 channels all give distinct counters
    bits21 = np.int64(0x1FFFFF)
    c = np.arange(channels, dtype=np.uint64)[:, None, None]
    r = (np.arange(y0, y0 + h, dtype=np.int64) & bits21).astype(np.uint64)[None, :, None]
    q = (np.arange(x0, x0 + w, dtype=np.int64) & bits21).astype(np.uint64)[None, None, :]
    counter = (c << np.uint64(42)) | (r << np.uint64(21)) | q
    bits = _mix64(_mix64(counter ^ base))
    u1 = ((bits >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0**32
    u2 = ((bits & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 2.0**32
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


class InputFiller:
    """Fills every extra input of `spec` for a batch of tiles.

    `noise` = (k, sigma^2) of the frame in normalised units (needed by noise_level inputs);
    `gain`, `offset`: the frame's network input is normalised * gain + offset (noise maps are
    computed from the normalised signal); `frame_hw`: the network-input frame's height and width;
    `explicit`: name -> a whole-frame array given by the caller, (C, ceil(h/s), ceil(w/s)) for a map
    of stride s or (C,) for a per-image vector; `draw`: which Monte-Carlo draw of the random inputs.
    """

    def __init__(self, spec: ModelSpec, frame_hw: tuple[int, int], *, noise=None, gain: float = 1.0,
                 offset: float = 0.0, explicit: Mapping[str, np.ndarray] | None = None, draw: int = 0):
        self.spec = spec
        self.noise = None if noise is None else (float(noise[0]), float(noise[1]))
        self.gain, self.offset, self.draw = float(gain), float(offset), int(draw)
        self.explicit = check_explicit(spec, frame_hw, explicit or {})
        if self.noise is None and any(i.kind == "noise_level" and i.name not in self.explicit for i in spec.inputs):
            raise InputError("this model takes the noise level as an input: pass noise=(k, sigma2), an ISO, or "
                             "let it be estimated from the frame")

    def __call__(self, batch: np.ndarray, origins: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
        n, _, th, tw = batch.shape
        out = {}
        for inp in self.spec.inputs:
            arr = np.empty(inp.shape(n, th, tw), np.float32)
            for k, (y0, x0) in enumerate(origins):
                self._fill(inp, arr[k], batch[k], y0, x0)
            out[inp.name] = arr
        return out

    def _fill(self, inp: ExtraInput, dst: np.ndarray, tile: np.ndarray, y0: int, x0: int) -> None:
        s = inp.stride
        if inp.name in self.explicit:
            src = self.explicit[inp.name]
            if s is None:
                dst[...] = src
            else:
                fetch_tile(src, y0 // s, x0 // s, dst.shape[1], dst.shape[2], dst)
        elif inp.kind == "gaussian":
            if s is None:  # a per-image vector: the field's values at position (0, 0)
                z = positional_normal(inp.seed, self.draw, inp.channels, 0, 0, 1, 1)[:, 0, 0]
            else:
                z = positional_normal(inp.seed, self.draw, inp.channels, y0 // s, x0 // s, *dst.shape[1:])
            dst[...] = z * np.float32(inp.std)
        elif inp.kind == "constant":
            value = np.asarray(inp.value, np.float32)
            dst[...] = value.reshape((-1,) + (1,) * (dst.ndim - 1)) if value.ndim else value
        else:
            self._noise_level(inp, dst, tile)

    def _noise_level(self, inp: ExtraInput, dst: np.ndarray, tile: np.ndarray) -> None:
        k, sigma2 = self.noise
        if inp.form == "k_sigma2":
            dst[0], dst[1] = k * inp.scale, sigma2 * inp.scale
            return
        signal = (tile[:self.spec.data_channels] - np.float32(self.offset)) * np.float32(1.0 / self.gain)
        if inp.channels == 1:
            signal = signal.mean(axis=0, keepdims=True)
        var = np.maximum(signal, 0.0) * np.float32(k) + np.float32(sigma2)
        dst[...] = (np.sqrt(var) if inp.form == "std" else var) * np.float32(inp.scale)


def check_explicit(spec: ModelSpec, frame_hw: tuple[int, int], given: Mapping[str, np.ndarray]) -> dict:
    """Validate caller-given whole-frame inputs (copied to float32; the caller's arrays are not touched)."""
    declared = {i.name: i for i in spec.inputs}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise InputError(f"inputs {unknown} are not inputs of this model; its extra inputs are "
                         f"{sorted(declared) or 'none'}")
    h, w = frame_hw
    out = {}
    for name, arr in given.items():
        inp = declared[name]
        a = np.asarray(arr)
        want = (inp.channels,) if inp.stride is None else \
            (inp.channels, -(-h // inp.stride), -(-w // inp.stride))
        if a.shape != want:
            where = "per image" if inp.stride is None else f"at 1/{inp.stride} of the {h} x {w} network input"
            raise InputError(f"input {name!r} must have shape {want} ({where}), got {a.shape}")
        if a.dtype.kind not in "fiu" or not np.isfinite(a).all():
            raise InputError(f"input {name!r} must be finite numbers, got dtype {a.dtype}")
        out[name] = a.astype(np.float32)
    return out
