"""Origin-framework parity: each architecture is built in Paddle and in TensorFlow/Keras with random
weights, saved natively, run there on a fixed input (in a subprocess; TF and Paddle never share a
process), then converted and run through Denoiser on torch and on its ONNX export.
The origin output, mapped back with the manifest's inverse transform written here in float64,
must match Denoiser.run within 1e-4."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import has

torch = pytest.importorskip("torch")

from converters.import_weights import convert  # noqa: E402
from rawdenoise.denoiser import Denoiser  # noqa: E402
from test_zoo_published import ksigma_ref  # noqa: E402

SCRIPTS = Path(__file__).parent / "framework_scripts"
ATOL = 1e-4
ISO = 3200


def run_script(name, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


# ---- inputs and the manifest's transforms, written independently of the SDK ----------------
def frame(arch, rng):
    if arch == "pmrid":
        return rng.random((128, 128)).astype(np.float32)  # RGGB Bayer in [0, 1]
    return rng.random((64, 64, 3)).astype(np.float32)  # RGB in [0, 1]


def network_input(arch, img):
    x = img.astype(np.float64)
    if arch == "pmrid":
        h, w = x.shape
        packed = x.reshape(h // 2, 2, w // 2, 2).transpose(1, 3, 0, 2).reshape(4, h // 2, w // 2)
        return (ksigma_ref(np.clip(packed, 0, 1), ISO) * 256.0)[None].astype(np.float32)
    x = x.transpose(2, 0, 1)[None]
    return (x - 0.5 if arch == "n2n" else x).astype(np.float32)


def expected_output(arch, y):
    y = y.astype(np.float64)[0]
    if arch == "pmrid":
        y = ksigma_ref(y / 256.0, ISO, inverse=True)
        _, hh, ww = y.shape
        return y.reshape(2, 2, hh, ww).transpose(2, 0, 3, 1).reshape(2 * hh, 2 * ww)
    y = y.transpose(1, 2, 0)
    return y + 0.5 if arch == "n2n" else y


def run_denoiser(model_path, arch, img):
    with Denoiser.load(model_path, tile=0, border=0) as dn:
        if arch == "pmrid":
            return dn.run(img, cfa="RGGB", black_level=0.0, white_level=1.0, iso=ISO)
        return dn.run(img)


def check(arch, src, workdir, img, onnx: bool, framework=None):
    pt = workdir / f"{Path(src).name}.pt"
    spec = convert(src, arch, pt, framework=framework)
    assert spec.origin["sha256"] and spec.origin["source_file"] == Path(src).name
    want = expected_output(arch, np.load(workdir / "output.npy"))
    got = run_denoiser(pt, arch, img)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= ATOL
    if onnx:
        from converters.torch2onnx import export_artifact

        export_artifact(pt, workdir / "model.onnx", simplify=False, check=False)  # ORT runs below anyway
        got_onnx = run_denoiser(workdir / "model.onnx", arch, img)
        assert float(np.abs(got_onnx - want).max()) <= ATOL
    return spec


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


def origin_run(data_dir, framework, arch, extra=()):
    work = data_dir / f"{framework}_{arch}"
    if not (work / "output.npy").exists():
        work.mkdir(exist_ok=True)
        img = frame(arch, np.random.default_rng(7))
        np.save(work / "frame.npy", img)
        np.save(work / "input.npy", network_input(arch, img))
        script = "paddle_forward.py" if framework == "paddle" else "tf_forward.py"
        run_script(script, arch, work, *extra)
    return work, np.load(work / "frame.npy")


@pytest.mark.paddle
@pytest.mark.skipif(not has("paddle"), reason="paddlepaddle is not installed")
@pytest.mark.parametrize("arch", ["n2n_paddle", "pmrid", "n2n"])
def test_paddle_origin(data_dir, arch):
    pytest.importorskip("onnxruntime")
    work, img = origin_run(data_dir, "paddle", arch)
    spec = check(arch, work / "weights.pdparams", work, img, onnx=True)
    assert spec.origin["framework"] == "paddle" and spec.origin["format"] == "pdparams"


@pytest.mark.tf
@pytest.mark.skipif(not (has("tensorflow") and has("h5py")), reason="tensorflow/h5py are not installed")
@pytest.mark.parametrize("fmt", ["checkpoint", "h5", "weights_h5", "keras"])
def test_tf_origin_n2n(data_dir, fmt):
    pytest.importorskip("onnxruntime")
    work, img = origin_run(data_dir, "tf", "n2n", ("--formats", "checkpoint,h5,weights_h5,keras"))
    src = {"checkpoint": work / "ckpt" / "model", "h5": work / "model.h5",
           "weights_h5": work / "model.weights.h5", "keras": work / "model.keras"}[fmt]
    spec = check("n2n", src, work, img, onnx=fmt == "checkpoint", framework="tf" if fmt == "h5" else None)
    assert spec.origin["framework"] == "tf"


@pytest.mark.tf
@pytest.mark.skipif(not has("tensorflow"), reason="tensorflow is not installed")
def test_tf_origin_pmrid_depthwise_and_transposed_layouts(data_dir):
    pytest.importorskip("onnxruntime")
    work, img = origin_run(data_dir, "tf", "pmrid", ("--formats", "checkpoint"))
    from converters.tf2torch import main

    assert main([str(work / "ckpt" / "model"), "--arch", "pmrid", "-o", str(work / "cli.pt")]) == 0
    check("pmrid", work / "ckpt" / "model", work, img, onnx=True)
