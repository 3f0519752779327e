"""Tile planning + gathering + stitching cost with a free predictor (the SDK's own overhead)."""

import numpy as np
import pytest

from benchmarks.frames import SIZES_MP
from rawdenoise.tiling import plan_tiles, run_tiled


@pytest.mark.parametrize("size", ["2MP", "12MP"])
@pytest.mark.parametrize("tile,overlap", [(256, 32), (512, 32)])
def test_plan_and_stitch(benchmark, size, tile, overlap):
    h, w = (s // 2 for s in SIZES_MP[size])
    x = np.random.default_rng(0).random((4, h, w), dtype=np.float32)

    def go():
        plan = plan_tiles(h, w, tile=tile, overlap=overlap, multiple=16)
        return run_tiled(lambda b: b, x, plan, batch=4)

    plan = plan_tiles(h, w, tile=tile, overlap=overlap, multiple=16)
    benchmark.extra_info.update(tiles=plan.n_tiles, compute_ratio=round(plan.compute_ratio, 3))
    out = benchmark(go)
    assert out.shape == x.shape
