import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from converters import torch2onnx  # noqa: E402
from rawdenoise import ModelSpec  # noqa: E402
from rawdenoise.errors import ConversionError  # noqa: E402
from rawdenoise.spec import METADATA_KEY  # noqa: E402


def test_cli_exports_with_manifest_and_dynamic_shapes(tiny_unet_pt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert torch2onnx.main([str(tiny_unet_pt), "-o", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    m = onnx.load(out)
    meta = {p.key: p.value for p in m.metadata_props}
    spec = ModelSpec.from_json(meta[METADATA_KEY])
    assert spec.name == "unet" and spec.origin["pt_sha256"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 4, "H", "W"]
    # refuses to overwrite without --overwrite
    assert torch2onnx.main([str(tiny_unet_pt), "-o", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_static_export(tiny_unet_pt, tmp_path):
    out = tmp_path / "s.onnx"
    assert torch2onnx.main([str(tiny_unet_pt), "-o", str(out), "--static", "64", "64", "--no-simplify"]) == 0
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 4, 64, 64]
    from rawdenoise import Denoiser

    dn = Denoiser.load(out)
    assert dn.tile == (64, 64) and not dn.runtime.dynamic_shapes
    raw = np.random.default_rng(0).random((150, 300)).astype(np.float32)
    ref = Denoiser.load(tiny_unet_pt, tile=64).run(raw, cfa="RGGB")
    assert np.abs(dn.run(raw, cfa="RGGB") - ref).max() < 1e-4


def test_parity_failure_writes_nothing(tiny_unet_pt, tmp_path):
    out = tmp_path / "p.onnx"
    with pytest.raises(ConversionError, match="nothing was written"):
        torch2onnx.export_artifact(tiny_unet_pt, out, atol=0.0 - 1.0)
    assert not out.exists() and not list(tmp_path.glob(".*part"))


def test_errors_are_one_line(tmp_path, capsys):
    assert torch2onnx.main([str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err
