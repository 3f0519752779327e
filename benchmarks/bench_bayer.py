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
