"""Normalise + pack and unpack + de-normalise + clip + cast throughput."""

import numpy as np
import pytest

from benchmarks.frames import SIZES_MP, frame
from rawdenoise import bayer

BLACK = np.full(4, 512.0)


@pytest.mark.parametrize("size", list(SIZES_MP))
def test_pack(benchmark, size):
    raw = frame(size)
    g = bayer.geometry(raw.shape, "GRBG", "RGGB")  # a phase shift: the harder case
    benchmark.extra_info["megapixels"] = raw.size / 1e6
    out = benchmark(bayer.pack, raw, g, BLACK, 16383.0)
    assert out.shape[0] == 4


@pytest.mark.parametrize("size", list(SIZES_MP))
def test_unpack(benchmark, size):
    raw = frame(size)
    g = bayer.geometry(raw.shape, "GRBG", "RGGB")
    packed = bayer.pack(raw, g, BLACK, 16383.0)
    benchmark.extra_info["megapixels"] = raw.size / 1e6
    out = benchmark(bayer.unpack, packed, g, BLACK, 16383.0, np.uint16)
    assert out.dtype == np.uint16


@pytest.mark.parametrize("size", list(SIZES_MP))
def test_blind_noise_estimate(benchmark, size):
    """The default model's per-frame cost when no ISO is given: k and sigma^2 from the frame."""
    from rawdenoise.noise import estimate_noise_bayer

    raw = frame(size)
    g = bayer.geometry(raw.shape, "GRBG", "RGGB")
    benchmark.extra_info["megapixels"] = raw.size / 1e6
    k, s2 = benchmark(estimate_noise_bayer, raw, g, BLACK, 16383.0)
    assert k > 0
