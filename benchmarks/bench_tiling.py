"""Tile planning + gathering + stitching cost with a free predictor (the SDK's own overhead)."""

import numpy as np
import pytest

from benchmarks.frames import SIZES_MP, frame, model_paths
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


@pytest.mark.parametrize("path", ["stitch-then-unpack", "unpack-each-tile"])
def test_tiles_to_raw_12mp(benchmark, path):
    """The output half of Denoiser.run with a free predictor, on the default model's tile plan:
    stitching a float frame and unpacking it, or unpacking each tile into the output (what run does)."""
    from rawdenoise import Denoiser, bayer

    raw = frame("12MP")
    black = np.full(4, 512.0)
    g = bayer.geometry(raw.shape, "RGGB", "RGGB")
    x = bayer.pack(raw, g, black, 16383.0)
    with Denoiser.load(model_paths()["onnx"]) as dn:
        plan = dn.plan(x)
    out = np.empty(raw.shape, np.uint16)

    def stitched():
        return bayer.unpack(run_tiled(lambda b: b, x, plan), g, black, 16383.0, np.uint16, out=out)

    def per_tile():
        run_tiled(lambda b: b, x, plan,
                  sink=lambda core, y0, x0: bayer.unpack(core, g, black, 16383.0, np.uint16, out=out, origin=(y0, x0)))
        return out

    benchmark.extra_info.update(tiles=plan.n_tiles)
    got = benchmark(stitched if path == "stitch-then-unpack" else per_tile)
    np.testing.assert_array_equal(got, raw)
