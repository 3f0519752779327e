"""Bring your own Paddle network: networks of shapes the zoo does not have are built in Paddle with
random weights and saved with paddle.jit.save (one subprocess: framework_scripts/paddle_byon.py),
converted with converters.paddle2onnx (subprocesses too: paddle is never imported here, since a
process that imported tensorflow first would crash on it), and run with Denoiser on ONNX Runtime.
The Paddle output, mapped back to the frame by the manifest's inverse transform written here in
float64, must equal the Denoiser output; tiled must equal untiled."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import has

pytestmark = [
    pytest.mark.paddle,
    pytest.mark.skipif(not (has("paddle") and has("paddle2onnx")),
                       reason="needs paddlepaddle and paddle2onnx (pip install --no-deps paddle2onnx==2.1.0)"),
]
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from converters import onnx_model  # noqa: E402
from converters import paddle2onnx as p2o  # noqa: E402  (imports paddle only when converting)
from rawdenoise.denoiser import Denoiser  # noqa: E402
from rawdenoise.errors import ConversionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "framework_scripts" / "paddle_byon.py"
PARITY = 1e-4      # of the output range: Paddle vs Denoiser on ONNX Runtime
TILING = 1e-5      # of the output range: tiled vs untiled
H, W = 64, 96
WHITE = 1023.0
RGB_BLACK = 64.0
MOSAIC_ORDER = "GRBG"
MOSAIC_BLACK = [64.0, 60.0, 62.0, 66.0]      # per site, in the 2x2 order of the frame's CFA
NOISE = (0.02, 4e-4)                        # (k, sigma^2) in normalised units

SPECS = {
    "rgb": {"name": "byon-rgb", "layout": "rgb"},
    "mosaic": {"name": "byon-mosaic", "layout": "mosaic", "channel_order": MOSAIC_ORDER, "output": "residual"},
    "gray": {"name": "byon-gray", "layout": "rgb", "in_channels": 1,
             "inputs": [{"name": "sigma", "kind": "noise_level", "channels": 1, "stride": 1, "form": "std"}]},
}


# ---- frames and the manifest's transforms, written independently of the SDK ------------------
def site_black(black, h, w):
    """Per-pixel black level of a Bayer frame: black[2 * (r % 2) + (c % 2)]."""
    b = np.asarray(black, np.float64).reshape(2, 2)
    return np.tile(b, (h // 2 + 1, w // 2 + 1))[:h, :w]


def frames():
    rng = np.random.default_rng(5)
    rgb = rng.uniform(RGB_BLACK, WHITE, (H, W, 3)).astype(np.float32)
    mosaic = (site_black(MOSAIC_BLACK, H, W) + rng.uniform(0, 900, (H, W))).astype(np.float32)
    gray = rng.random((H, W)).astype(np.float32)
    return {"rgb": rgb, "mosaic": mosaic, "gray": gray}


def network_inputs(name, frame):
    x = frame.astype(np.float64)
    if name == "rgb":
        return {"x": ((x - RGB_BLACK) / (WHITE - RGB_BLACK)).transpose(2, 0, 1)[None]}
    if name == "mosaic":   # the frame's CFA already is the model's channel order: no extension
        b = site_black(MOSAIC_BLACK, H, W)
        return {"x": ((x - b) / (WHITE - b))[None, None]}
    k, s2 = NOISE
    return {"img": x[None, None], "sigma": np.sqrt(k * np.maximum(x, 0) + s2)[None, None]}


def expected_output(name, y, inputs):
    y = y.astype(np.float64)[0]
    if name == "rgb":
        return y.transpose(1, 2, 0) * (WHITE - RGB_BLACK) + RGB_BLACK
    if name == "mosaic":   # output "residual": the network input is added back, then de-normalised
        b = site_black(MOSAIC_BLACK, H, W)
        return (y[0] + inputs["x"][0, 0]) * (WHITE - b) + b
    return y[0]


def denoise(path, name, frame, tile, cfa=MOSAIC_ORDER, black=MOSAIC_BLACK):
    with Denoiser.load(path, tile=tile, border=0) as dn:
        if name == "rgb":
            return dn.run(frame, black_level=RGB_BLACK, white_level=WHITE)
        if name == "mosaic":
            return dn.run(frame, cfa=cfa, black_level=black, white_level=WHITE)
        return dn.run(frame, noise=NOISE)


# ---- one Paddle run builds everything; conversions run side by side ----------------------------
def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                CUDA_VISIBLE_DEVICES="", GLOG_minloglevel="2")


CONVERT_API = """
import json, sys
from converters.paddle2onnx import convert
spec, diffs = convert(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], overwrite=False)
print(json.dumps({"spec": spec.to_dict(), "diffs": diffs}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The networks saved by Paddle, their inputs and Paddle's outputs: (folder, frames)."""
    d = tmp_path_factory.mktemp("byon")
    data = frames()
    for name, frame in data.items():
        (d / name).mkdir()
        np.savez(d / name / "input.npz", **{k: v.astype(np.float32) for k, v in network_inputs(name, frame).items()})
    (d / "gray_pdmodel").mkdir()
    (d / "stateful").mkdir()
    r = subprocess.run([sys.executable, str(SCRIPT), str(d)], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, data


@pytest.fixture(scope="module")
def work(saved):
    """...and converted: (folder, frames, what each conversion printed)."""
    d, data = saved
    for name in SPECS:
        (d / f"{name}.json").write_text(json.dumps(SPECS[name]))
    jobs = {  # the command line for three, the Python API for one
        "rgb": ["-m", "converters.paddle2onnx", d / "rgb" / "model", "--spec", d / "rgb.json", "-o", d / "rgb.onnx"],
        "mosaic": ["-m", "converters.paddle2onnx", d / "mosaic" / "model", "--spec", d / "mosaic.json",
                   "-o", d / "mosaic.onnx", "--opset", "17"],
        "gray": ["-c", CONVERT_API, d / "gray" / "model", json.dumps(SPECS["gray"]), d / "gray.onnx"],
        "gray_pdmodel": ["-m", "converters.paddle2onnx", d / "gray_pdmodel" / "model", "--spec", d / "gray.json",
                         "-o", d / "gray_pdmodel.onnx"],
    }
    procs = {k: subprocess.Popen([sys.executable, *map(str, v)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, v in jobs.items()}
    results = {}
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{k}: {err[-3000:]}"
        results[k] = out
    return d, data, results


def model_path(d, name):
    return d / f"{name}.onnx"


def manifest(path):
    with Denoiser.load(path, tile=0, border=0) as dn:
        return dn.spec


# ---- parity with Paddle -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rgb", "mosaic", "gray", "gray_pdmodel"])
def test_matches_paddle(work, name):
    d, data, results = work
    net = "gray" if name == "gray_pdmodel" else name
    inputs = network_inputs(net, data[net])
    want = expected_output(net, np.load(d / net / "output.npy"), inputs)
    got = denoise(model_path(d, name), net, data[net], tile=0)
    assert got.shape == want.shape and got.dtype == data[net].dtype
    span = float(want.max() - want.min())
    assert float(np.abs(got - want).max()) <= PARITY * span


@pytest.mark.parametrize("name", ["rgb", "mosaic", "gray"])
def test_tiled_equals_untiled(work, name):
    d, data, _ = work
    spec = manifest(model_path(d, name))
    tile = -(-(2 * spec.receptive_radius + 4 * spec.multiple) // spec.multiple) * spec.multiple
    frame = data[name]
    full = denoise(model_path(d, name), name, frame, tile=0)
    tiled = denoise(model_path(d, name), name, frame, tile=tile)
    span = float(full.max() - full.min())
    assert float(np.abs(tiled - full).max()) <= TILING * span


def test_mosaic_other_phase(work):
    """A frame whose CFA is not the model's order (RGGB, odd size): the SDK mirrors a column in
    front and a row/column at the end; tiled must still equal untiled."""
    d, data, _ = work
    frame = np.ascontiguousarray(data["mosaic"][:H - 1, 1:])     # GRBG without its first column: RGGB
    black = [MOSAIC_BLACK[1], MOSAIC_BLACK[0], MOSAIC_BLACK[3], MOSAIC_BLACK[2]]
    spec = manifest(model_path(d, "mosaic"))
    tile = -(-(2 * spec.receptive_radius + 4 * spec.multiple) // spec.multiple) * spec.multiple
    full = denoise(model_path(d, "mosaic"), "mosaic", frame, tile=0, cfa="RGGB", black=black)
    tiled = denoise(model_path(d, "mosaic"), "mosaic", frame, tile=tile, cfa="RGGB", black=black)
    assert full.shape == frame.shape
    assert float(np.abs(tiled - full).max()) <= TILING * float(full.max() - full.min())


@pytest.mark.parametrize("name", ["rgb", "mosaic", "gray"])
def test_probe_radius_within_measured(work, name):
    graph_analysis = pytest.importorskip("converters.graph_analysis")
    d, _, _ = work
    path = model_path(d, name)
    spec = manifest(path)
    image = onnx_model.image_input_name(onnx.load(str(path)), spec)
    probed = graph_analysis.probe_radius(path, in_channels=spec.in_channels, multiple=spec.multiple, image_input=image,
                                         extra_inputs={i.name: (i.channels, i.stride) for i in spec.inputs})
    assert spec.receptive_radius is not None and probed <= spec.receptive_radius
    assert "receptive_radius" in spec.notes["measured"]


# ---- the file itself ----------------------------------------------------------------------------
def test_manifest_origin_and_dynamic_shapes(work):
    d, _, results = work
    api = json.loads(results["gray"].strip().splitlines()[-1])
    assert api["diffs"]["max_abs_diff"] <= PARITY * api["diffs"]["output_range"]
    for name, fmt, program in [("rgb", "pir json", "rgb/model.json"), ("gray", "pir json", "gray/model.json"),
                               ("gray_pdmodel", "pdmodel", "gray_pdmodel/model.pdmodel")]:
        spec = manifest(model_path(d, name))
        params = (d / program).with_suffix(".pdiparams")
        assert spec.origin["framework"] == "paddle" and spec.origin["format"] == fmt
        assert spec.origin["source_file"] == Path(program).name
        assert spec.origin["sha256"] == hashlib.sha256(params.read_bytes()).hexdigest()
        assert spec.origin["paddle2onnx"] == "2.1.0" and spec.origin["opset"] == 17
        model = onnx.load(str(model_path(d, name)))
        for v in list(model.graph.input) + list(model.graph.output):
            dims = v.type.tensor_type.shape.dim
            assert [dims[a].HasField("dim_value") for a in (0, 2, 3)] == [False] * 3, v.name
    assert [i.name for i in manifest(model_path(d, "gray")).inputs] == ["sigma"]
    line = results["rgb"].strip()
    assert "\n" not in line and line.startswith(f"wrote {d / 'rgb.onnx'}: rgb, 3 -> 3 channels")
    assert "parity vs origin" in line


def leaky_alphas(model):
    return [next(a.f for a in n.attribute if a.name == "alpha") for n in model.graph.node if n.op_type == "LeakyRelu"]


def test_leaky_relu_slopes_repaired(work):
    """paddle2onnx 2.1.0 writes garbage LeakyRelu alphas for Paddle 3 programs (the slope is a
    double there); the converter writes the program's slopes back."""
    d, _, _ = work
    want = [float(np.float32(0.2)), float(np.float32(0.05))]
    raw = onnx.load(str(d / "rgb" / "raw.onnx"))
    assert len(leaky_alphas(raw)) == 2
    assert leaky_alphas(raw) != want, "paddle2onnx writes the right slopes now: the repair is not exercised"
    assert leaky_alphas(onnx.load(str(model_path(d, "rgb")))) == want
    assert manifest(model_path(d, "rgb")).origin["repaired"] == {"LeakyRelu.alpha": 2}
    assert leaky_alphas(onnx.load(str(model_path(d, "gray_pdmodel")))) == [float(np.float32(0.1))]
    pir = p2o.read_program(d / "rgb" / "model.json")
    assert p2o.repair_leaky_relu(raw, pir) == 2 and leaky_alphas(raw) == want


def test_leaky_relu_unmatched_refused(saved):
    d, _ = saved
    pir = p2o.read_program(d / "rgb" / "model.json")
    fewer = onnx.load(str(d / "rgb" / "raw.onnx"))
    node = next(n for n in fewer.graph.node if n.op_type == "LeakyRelu")
    fewer.graph.node.remove(node)
    with pytest.raises(ConversionError, match="2 leaky_relu ops but the ONNX graph 1 LeakyRelu"):
        p2o.repair_leaky_relu(fewer, pir)
    swapped = onnx.load(str(d / "rgb" / "raw.onnx"))
    first, second = [n for n in swapped.graph.node if n.op_type == "LeakyRelu"]
    first.input[0], second.input[0] = second.input[0], first.input[0]   # same count, wrong producers
    with pytest.raises(ConversionError, match="cannot be matched"):
        p2o.repair_leaky_relu(swapped, pir)


def test_eager_state_is_detected(saved):
    """A layer that stored a tensor in forward and ran before jit.save: the tensor is in the program."""
    d, _ = saved
    stale = p2o.eager_tensors(p2o.read_program(d / "stateful" / "model.json"))
    assert len(stale) == 1 and stale[0].startswith("eager_tmp_")
    for name in SPECS:
        assert p2o.eager_tensors(p2o.read_program(d / name / "model.json")) == []


# ---- user errors: one line, exit 1, nothing written; refused before paddle is imported ------------
@pytest.mark.parametrize("case", ["unknown_field", "layout_contradicts", "no_prefix", "extra_input_name"])
def test_bad_input(saved, tmp_path, capsys, case):
    d, _ = saved
    spec = {"unknown_field": {"layout": "rgb", "colour_space": "srgb"},
            "layout_contradicts": {"layout": "bayer4"},
            "no_prefix": {"layout": "rgb"},
            "extra_input_name": {**SPECS["gray"], "inputs": [{"name": "noise_map", "kind": "noise_level"}]}}[case]
    prefix = {"no_prefix": d / "nowhere" / "model", "extra_input_name": d / "gray" / "model"}.get(case,
                                                                                                d / "rgb" / "model")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out.onnx"
    imported = "paddle" in sys.modules
    rc = p2o.main([str(prefix), "--spec", str(tmp_path / "spec.json"), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "spec.json"]
    assert ("paddle" in sys.modules) == imported, "paddle was imported into the caller's process"
    assert err.startswith("paddle2onnx: error: ") and "\n" not in err
    assert {"unknown_field": "unknown fields ['colour_space']",
            "layout_contradicts": "3 channels); a 3-channel image fits layout 'rgb'",
            "no_prefix": "no Paddle model at prefix",
            "extra_input_name": "inputs are ['img', 'sigma']"}[case] in err


def test_missing_paddle2onnx_names_the_extra(saved, tmp_path, capsys, monkeypatch):
    import importlib.util

    d, _ = saved
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "paddle2onnx" else real(name, *a))
    (tmp_path / "spec.json").write_text(json.dumps(SPECS["rgb"]))
    rc = p2o.main([str(d / "rgb" / "model"), "--spec", str(tmp_path / "spec.json"), "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert rc == 1 and "pip install 'rawdenoise[paddle]'" in err and "--no-deps paddle2onnx==2.1.0" in err
    assert not (tmp_path / "o.onnx").exists()
