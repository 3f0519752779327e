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
    from converters.torch2onnx import export

    path = tmp_path_factory.mktemp("models") / "unet.onnx"
    export(tiny_unet_pt, path)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
