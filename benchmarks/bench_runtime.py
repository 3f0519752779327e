"""Denoiser.run end to end vs the bare runner on the same packed tiles, per runtime and frame size.

The group of each case holds both timings: their ratio is the SDK's overhead. Accuracy of each
runtime against torch FP32 (max abs error in DN, PSNR) goes into extra_info.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from benchmarks.frames import LEVELS, SIZES_MP, frame, model_paths, quantized
from rawdenoise import Denoiser
from rawdenoise.tiling import iter_tiles

RUNTIMES = ["torch", "torch-channels-last", "onnxruntime-fp32", "onnxruntime-int8", "tensorrt", "torch-cuda"]


def _has(mod):
    return importlib.util.find_spec(mod) is not None


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench_models")
    return {**model_paths(), "workdir": workdir}


def int8_model(models) -> Path:
    """The FP32 ONNX model quantised (QDQ, QInt8) on calibration tiles of a 2 MP frame."""
    if "int8" not in models:
        models["int8"] = quantized(models["onnx"], models["workdir"])
    return models["int8"]


def open_denoiser(runtime: str, models) -> Denoiser:
    if runtime == "torch":
        return Denoiser.load(models["pt"])
    if runtime == "torch-channels-last":
        return Denoiser.load(models["pt"], channels_last=True)
    if runtime == "onnxruntime-fp32":
        return Denoiser.load(models["onnx"])
    if runtime == "onnxruntime-int8":
        return Denoiser.load(int8_model(models))
    if runtime == "torch-cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU")
        return Denoiser.load(models["pt"], device="cuda")
    if runtime == "tensorrt":
        if not _has("tensorrt"):
            pytest.skip("TensorRT is not installed")
        pytest.skip("TensorRT benchmark needs an engine built on this GPU (converters.onnx2trt)")
    raise AssertionError(runtime)


def tile_batches(dn: Denoiser, raw: np.ndarray) -> list[np.ndarray]:
    """The exact batches Denoiser.run feeds the runner for this frame."""
    x = dn.prepare(raw, **LEVELS).x
    tiles = [t for _, _, t in iter_tiles(x, dn.plan(x))]
    return [np.stack(tiles[i:i + dn.batch]) for i in range(0, len(tiles), dn.batch)]


def _rounds(size):
    return 1 if size == "50MP" else 3


@pytest.mark.parametrize("size", list(SIZES_MP))
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_denoiser_run(benchmark, runtime, size, models):
    raw = frame(size)
    with open_denoiser(runtime, models) as dn:
        benchmark.group = f"{size}-{runtime}"
        benchmark.extra_info.update(megapixels=raw.size / 1e6, tile=str(dn.tile), overlap=dn.overlap, batch=dn.batch)
        out = benchmark.pedantic(dn.run, args=(raw,), kwargs=LEVELS, rounds=_rounds(size), warmup_rounds=0)
        if size == "2MP":
            with Denoiser.load(models["pt"]) as ref:
                want = ref.run(raw, **LEVELS).astype(np.float64)
            err = out.astype(np.float64) - want
            rng = LEVELS["white_level"] - 512
            mse = float(np.mean((err / rng) ** 2))
            benchmark.extra_info.update(max_err_dn=float(np.abs(err).max()),
                                        psnr_vs_torch_db=float(10 * np.log10(1 / mse)) if mse > 0 else float("inf"))


@pytest.mark.parametrize("size", ["2MP", "12MP"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bare_runner(benchmark, runtime, size, models):
    raw = frame(size)
    with open_denoiser(runtime, models) as dn:
        batches = tile_batches(dn, raw)
        infer = dn.runtime.infer

        def go():
            for b in batches:
                infer(b)

        benchmark.group = f"{size}-{runtime}"
        benchmark.extra_info.update(megapixels=raw.size / 1e6, tiles=sum(len(b) for b in batches))
        benchmark.pedantic(go, rounds=_rounds(size), warmup_rounds=0)


@pytest.mark.parametrize("tiling", ["default-tile", "untiled"])
def test_tiling_cost_12mp(benchmark, tiling, models):
    """Default tile and overlap vs one untiled pass (ONNX Runtime FP32): the price of tiling."""
    raw = frame("12MP")
    with Denoiser.load(models["onnx"], tile=0 if tiling == "untiled" else None) as dn:
        benchmark.group = "12MP-tiling-cost"
        benchmark.extra_info.update(tile=str(dn.tile), overlap=dn.overlap)
        benchmark.pedantic(dn.run, args=(raw,), kwargs=LEVELS, rounds=2, warmup_rounds=0)


@pytest.mark.parametrize("ensemble", [1, 2, 8])
def test_self_ensemble_2mp(benchmark, ensemble, models):
    """`run(ensemble=N)` (ONNX Runtime FP32): N passes plus turning and averaging the frames."""
    raw = frame("2MP")
    with Denoiser.load(models["onnx"]) as dn:
        benchmark.group = "2MP-self-ensemble"
        benchmark.extra_info.update(orientations=ensemble)
        benchmark.pedantic(dn.run, args=(raw,), kwargs={**LEVELS, "ensemble": ensemble}, rounds=2, warmup_rounds=0)
