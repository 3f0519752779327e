import importlib.util

import numpy as np
import pytest


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="session")
def tiny_unet_pt(tmp_path_factory):
    """A small random-weight RAW UNet saved as a .pt artifact."""
    pytest.importorskip("torch")
    import torch
    from rawdenoise import zoo

    torch.manual_seed(0)
    module = zoo.create("unet", width=8, depth=2)
    path = tmp_path_factory.mktemp("models") / "unet.pt"
    zoo.save(module, path)
    return path


@pytest.fixture(scope="session")
def tiny_unet_onnx(tiny_unet_pt, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from converters.torch2onnx import export_artifact

    path = tmp_path_factory.mktemp("models") / "unet.onnx"
    export_artifact(tiny_unet_pt, path)
    return path


@pytest.fixture(scope="session")
def identity_pt(tmp_path_factory):
    """A UNet whose weights are all zero: its global residual makes it the identity."""
    torch = pytest.importorskip("torch")
    from rawdenoise import zoo

    module = zoo.create("unet", width=4, depth=1)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        x = torch.rand(2, 4, 16, 20)
        assert torch.equal(module(x), x)  # really the identity, before relying on it
    path = tmp_path_factory.mktemp("model") / "identity.pt"
    zoo.save(module, path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors on shared cores: a second thread mostly waits for the first."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def linear_dng(rng):
    """Writes a demosaiced (LinearRaw, 3 samples per pixel) DNG: a RAW file with no CFA."""
    from rawdenoise import dng

    def write(path):
        data = rng.integers(0, 4096, (24, 32, 3)).astype("<u2")
        tags = dng.dng_tags(24, 32, "RGGB", [0] * 4, 4095, {})
        for t in (33421, 33422, 50710, 50711, 50713):  # the CFA and level tags
            tags.pop(t)
        tags.update({262: (dng.SHORT, dng.PHOTOMETRIC_LINEAR_RAW), 277: (dng.SHORT, 3),
                     258: (dng.SHORT, (16, 16, 16)), 50714: (dng.LONG, 0)})
        dng.write_tiff_file(path, tags, data.tobytes())
        return path

    return write
