"""Achieved model FLOP rate of the CPU runners against this machine's measured SGEMM rate."""

from __future__ import annotations


import numpy as np
import pytest

from benchmarks.flops import conv_flops, sgemm_gflops
from benchmarks.frames import model_paths


@pytest.fixture(scope="module")
def paths():
    return model_paths()


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_flop_rate_vs_sgemm(benchmark, runtime, paths):
    import runtimes

    src = paths["onnx"] if runtime == "onnxruntime" else paths["pt"]
    with runtimes.load(src) as r:
        tile = r.spec.tile or 512
        x = np.random.default_rng(0).random((1, r.spec.in_channels, tile, tile), dtype=np.float32)
        flops = conv_flops(paths["onnx"], *x.shape)
        r.infer(x)
        benchmark.group = "flop-rate"
        benchmark.pedantic(r.infer, args=(x,), rounds=5, warmup_rounds=1)
        best = benchmark.stats.stats.min
    gemm = sgemm_gflops()
    achieved = flops / best / 1e9
    ratio = achieved / max(gemm.values())
    benchmark.extra_info.update(model_gflop_per_tile=flops / 1e9, achieved_gflops=achieved,
                                sgemm_gflops=gemm, ratio_to_sgemm=ratio)
    print(f"\n{runtime}: {achieved:.1f} GFLOP/s achieved, SGEMM {gemm}, ratio {ratio:.2f}")
