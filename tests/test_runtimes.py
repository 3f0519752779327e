import subprocess
import sys

import numpy as np
import pytest

import runtimes
from rawdenoise import Denoiser
from rawdenoise.errors import InputError, RawDenoiseError


def test_registry_names_and_suffixes():
    assert runtimes.names() == ["torch", "onnxruntime", "tensorrt"]
    assert runtimes.for_path("a/b/model.PT") == "torch"
    assert runtimes.for_path("m.onnx") == "onnxruntime"
    assert runtimes.for_path("m.engine") == runtimes.for_path("m.plan") == "tensorrt"
    with pytest.raises(InputError, match="suffix"):
        runtimes.for_path("m.h5")
    with pytest.raises(InputError, match="unknown runtime"):
        runtimes.canonical("tflite")


def test_available_gives_reasons():
    av = runtimes.available()
    assert set(av) == set(runtimes.names())
    for name, reason in av.items():
        assert reason is None or "pip install" in reason


def test_imports_stay_light():
    code = ("import sys, rawdenoise, runtimes; import rawdenoise.tiling, rawdenoise.bayer, rawdenoise.spec; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'rawpy', 'onnx', 'tensorflow', 'paddle') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_runner_contract(tiny_unet_pt, rng):
    pytest.importorskip("torch")
    runner = runtimes.get("torch")(tiny_unet_pt)
    with pytest.raises(InputError, match="not active"):
        runner.infer(np.zeros((1, 4, 16, 16), np.float32))
    with runner:
        out = runner.infer(rng.random((2, 4, 16, 32), dtype=np.float32))
        assert out.shape == (2, 4, 16, 32) and out.dtype == np.float32
        assert runner.last_inference_time > 0 and runner.calls == 1
        with pytest.raises(InputError, match="channels"):
            runner.infer(np.zeros((1, 3, 16, 16), np.float32))
        with pytest.raises(InputError, match="4-D"):
            runner.infer(np.zeros((4, 16, 16), np.float32))
        assert runner.dynamic_shapes and runner.io()["inputs"][0]["shape"][1] == 4
    assert not runner.is_active


def test_torch_fp16_on_cpu_is_refused(tiny_unet_pt):
    pytest.importorskip("torch")
    with pytest.raises(InputError, match="fp16 needs a CUDA"):
        Denoiser.load(tiny_unet_pt, precision="fp16")


def test_onnxruntime_matches_torch_through_denoiser(tiny_unet_pt, tiny_unet_onnx, rng):
    raw = rng.uniform(0, 1, size=(203, 311)).astype(np.float32)
    a = Denoiser.load(tiny_unet_pt, tile=64).run(raw, cfa="GRBG")
    b = Denoiser.load(tiny_unet_onnx, tile=64).run(raw, cfa="GRBG")
    assert np.abs(a - b).max() <= 1e-4
    raw16 = (raw * 4095).astype(np.uint16)
    a = Denoiser.load(tiny_unet_pt).run(raw16, cfa="RGGB", black_level=64, white_level=4095)
    b = Denoiser.load(tiny_unet_onnx, threads=1).run(raw16, cfa="RGGB", black_level=64, white_level=4095)
    assert np.abs(a.astype(int) - b).max() <= 1  # a rounding boundary at most


def test_onnx_runner_reports_io_and_spec(tiny_unet_onnx):
    with runtimes.load(tiny_unet_onnx) as r:
        io = r.io()
        assert io["inputs"][0]["shape"][1] == 4 and io["inputs"][0]["shape"][2] is None
        assert r.dynamic_shapes and r.spec.name == "unet"


def test_onnx_without_manifest_is_refused(tmp_path, tiny_unet_onnx):
    onnx = pytest.importorskip("onnx")
    m = onnx.load(tiny_unet_onnx)
    del m.metadata_props[:]
    onnx.save(m, tmp_path / "bare.onnx")
    with pytest.raises(RawDenoiseError, match="manifest"):
        Denoiser.load(tmp_path / "bare.onnx")


def test_missing_framework_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    with pytest.raises(RawDenoiseError, match=r"rawdenoise\[onnx\]"):
        runtimes.get("onnxruntime")
    assert "rawdenoise[onnx]" in runtimes.available()["onnxruntime"]


def test_a_precision_the_runner_cannot_give_is_an_error(tiny_unet_onnx, tiny_unet_pt):
    from rawdenoise import Denoiser
    from rawdenoise.errors import InputError, ModelFileError
    from rawdenoise.models import INT8_FILE, MODELS_DIR

    with pytest.raises(InputError, match="cannot run .* at precision int8: the model is fp32"):
        Denoiser.load(tiny_unet_onnx, precision="int8")
    with pytest.raises(InputError, match="precision"):
        Denoiser.load(tiny_unet_pt, precision="int8")
    assert Denoiser.load(tiny_unet_onnx, precision="fp32").runtime.precision == "fp32"
    # the default model: the INT8 file when it ships, never the FP32 one under another name
    if (MODELS_DIR / INT8_FILE).is_file():
        assert Denoiser.load("default", precision="int8").spec.precision == "int8"
    else:
        with pytest.raises(ModelFileError, match="no INT8 default model"):
            Denoiser.load("default", precision="int8")
