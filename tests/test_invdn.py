"""InvDN: the zoo module against independent constructions, its published weight files read as
published, and parity with a Paddle InvDN built from the Paddle reproduction's structure (run in
a subprocess: this process never imports paddle)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import has

torch = pytest.importorskip("torch")

from converters.import_weights import convert  # noqa: E402
from rawdenoise import Denoiser, zoo  # noqa: E402
from rawdenoise.errors import ConversionError, ModelFileError  # noqa: E402

SCRIPTS = Path(__file__).parent / "framework_scripts"
RTOL = 1e-4


def test_haar_transform_matches_2x2_blocks_written_out(rng):
    from rawdenoise.zoo.invdn import _Haar

    x = rng.standard_normal((2, 3, 8, 10))
    haar = _Haar(3).double()
    with torch.no_grad():
        y = haar(torch.from_numpy(x)).numpy()
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    bands = [(a + b + c + d) / 4, (a - b + c - d) / 4, (a + b - c - d) / 4, (a - b - c + d) / 4]
    want = np.concatenate(bands, axis=1)          # all mean bands first, then each difference band
    np.testing.assert_allclose(y, want, atol=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(haar.inverse(torch.from_numpy(y)).numpy(), x, atol=1e-12)


def test_blocks_run_backwards_exactly():
    torch.manual_seed(0)
    m = zoo.create("invdn", blocks=(2, 1)).double()
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64)
    with torch.no_grad():
        y = m.encode(x)
        assert y.shape == (1, 48, 4, 6)
        np.testing.assert_allclose(m.decode(y).numpy(), x.numpy(), atol=1e-10)


def test_manifest_declares_the_latent():
    spec = zoo.default_spec("invdn")
    (z,) = spec.inputs
    assert (z.name, z.kind, z.channels, z.stride, z.std) == ("z", "gaussian", 45, 4, 1.0)
    assert spec.multiple == 4 and spec.layout == "rgb" and spec.receptive_radius > 0


def official_state_dict(seed=0):
    """A state_dict as the official training code saves it (network.state_dict(), CPU tensors)."""
    torch.manual_seed(seed)
    return zoo.create("invdn").state_dict()


def test_official_pth_loads_strictly(tmp_path):
    sd = official_state_dict()
    assert list(sd)[:2] == ["operations.0.haar_weights", "operations.1.F.conv1.weight"]
    assert len(sd) == 290 and sum(v.numel() for v in sd.values()) == 2_641_200
    torch.save(sd, tmp_path / "InvDN.pth")
    spec = convert(tmp_path / "InvDN.pth", "invdn", tmp_path / "invdn.pt")
    assert spec.origin["framework"] == "torch" and spec.inputs[0].name == "z"
    module, _ = zoo.load(tmp_path / "invdn.pt")
    for k, v in module.state_dict().items():
        assert torch.equal(v, sd[k]), k
    bad = dict(sd)
    bad["operations.1.F.conv1.weight"] = torch.zeros(64, 9, 5, 5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match="operations.1.F.conv1.weight"):
        convert(tmp_path / "bad.pth", "invdn", tmp_path / "bad.pt")
    del bad["operations.1.F.conv1.weight"]
    torch.save(bad, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match="operations.1.F.conv1.weight"):
        convert(tmp_path / "missing.pth", "invdn", tmp_path / "missing.pt")
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "missing.pt").exists()


def test_latent_is_positional_so_tiles_are_exact(rng):
    torch.manual_seed(1)
    module = zoo.create("invdn", blocks=(1, 1))
    spec = zoo.default_spec("invdn", blocks=(1, 1))
    spec = spec.replace(receptive_radius=zoo.measure_receptive_radius(module, spec))
    img = rng.random((90, 70, 3)).astype(np.float32)
    whole = Denoiser.from_module(module, spec, tile=0).run(img)
    tiled = Denoiser.from_module(module, spec, tile=spec.receptive_radius * 2 + 24).run(img)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    np.testing.assert_array_equal(Denoiser.from_module(module, spec, tile=0).run(img), whole)


# ---- the Paddle reproduction ---------------------------------------------------------------------
H, W = 32, 48


@pytest.fixture(scope="module")
def paddle_run(tmp_path_factory):
    if not has("paddle"):
        pytest.skip("paddlepaddle is not installed")
    work = tmp_path_factory.mktemp("invdn_paddle")
    (work / "export").mkdir()
    rng = np.random.default_rng(4)
    np.save(work / "input.npy", rng.random((1, 3, H, W), dtype=np.float32))
    np.save(work / "z.npy", rng.standard_normal((1, 45, H // 4, W // 4)).astype(np.float32))
    np.save(work / "noise.npy", rng.standard_normal((1, 45, H, W)).astype(np.float32))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, str(SCRIPTS / "paddle_invdn.py"), str(work)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return work


def assert_close(got_hwc, want_nchw):
    want = want_nchw[0].transpose(1, 2, 0).astype(np.float64)
    scale = max(1.0, float(np.ptp(want)))
    assert float(np.abs(got_hwc - want).max()) <= RTOL * scale


@pytest.mark.paddle
def test_paddle_checkpoint_through_torch_and_onnx(paddle_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from converters.torch2onnx import export_artifact

    work = paddle_run
    spec = convert(work / "model_best.pdparams", "invdn", tmp_path / "invdn.pt", framework="paddle")
    assert spec.origin["format"] == "pdparams"
    export_artifact(tmp_path / "invdn.pt", tmp_path / "invdn.onnx")
    img = np.load(work / "input.npy")[0].transpose(1, 2, 0)
    z = np.load(work / "z.npy")[0]
    want = np.load(work / "output.npy")
    for path in (tmp_path / "invdn.pt", tmp_path / "invdn.onnx"):
        with Denoiser.load(path, tile=0, border=0) as dn:
            assert_close(dn.run(img, inputs={"z": z}), want)


@pytest.mark.paddle
def test_paddle_exported_model_with_its_own_noise_input(paddle_run, tmp_path):
    pytest.importorskip("onnxruntime")
    if not has("paddle2onnx"):
        pytest.skip("paddle2onnx is not installed")
    from converters.paddle2onnx import convert as paddle2onnx

    work = paddle_run
    spec_in = {"name": "invdn-paddle", "layout": "rgb", "multiple": 4, "receptive_radius": 600, "tile": 1280,
               "inputs": [{"name": "noise", "kind": "gaussian", "channels": 45, "stride": 1, "concat": True}]}
    spec, _ = paddle2onnx(work / "export" / "model", spec_in, tmp_path / "invdn_paddle.onnx")
    assert spec.in_channels == 48 and spec.data_channels == 3
    img = np.load(work / "input.npy")[0].transpose(1, 2, 0)
    with Denoiser.load(tmp_path / "invdn_paddle.onnx", tile=0, border=0) as dn:
        assert_close(dn.run(img, inputs={"noise": np.load(work / "noise.npy")[0]}), np.load(work / "output_jit.npy"))
        # its latent is the 4x4 mean of 16 unit normals: std 0.25, where the official model draws std 1
        drawn = dn.run(img)
    assert drawn.shape == img.shape and np.isfinite(drawn).all()


def test_paddle_checkpoint_nesting_is_read_for_its_state_dict(tmp_path):
    """Without paddle: a {"iter", "state_dict", "optimizer"} pickle as paddle.save writes it."""
    import pickle

    sd = {k: ("param_" + str(i), v.numpy()) for i, (k, v) in enumerate(official_state_dict().items())}
    opt = {"conv2d_0.w_0_moment1_0": ("m", np.zeros(3, np.float32)), "LR_Scheduler": {"last_epoch": 3}}
    with open(tmp_path / "model_best.pdparams", "wb") as f:
        pickle.dump({"iter": 7, "state_dict": sd, "optimizer": opt}, f, protocol=4)
    spec = convert(tmp_path / "model_best.pdparams", "invdn", tmp_path / "p.pt", framework="paddle")
    assert spec.origin["format"] == "pdparams"
    with open(tmp_path / "code.pdparams", "wb") as f:
        f.write(b"\x80\x04cos\nsystem\n.")
    with pytest.raises(ModelFileError, match="os.system"):
        convert(tmp_path / "code.pdparams", "invdn", tmp_path / "c.pt", framework="paddle")
