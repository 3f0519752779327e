"""converters.tf2onnx: TensorFlow/Keras networks of shapes the zoo does not have, saved natively
(SavedModel via model.export, Keras 3 .keras), become rawdenoise ONNX models.

TensorFlow runs only in subprocesses (this process may share a session with paddle tests):
framework_scripts/tf_byon.py builds every network with random weights and runs it on a fixed
frame's network input; a second process converts them all through converters.tf2onnx (the CLI's
`main(argv)` and the Python `convert`). Here, only ONNX Runtime runs: `Denoiser.run` on each file
against TF's output, mapped back to the frame by the manifest's inverse transform written below
in float64 numpy, independently of the SDK.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import has

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "framework_scripts"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
TF_MISSING = not (has("tensorflow") and has("tf2onnx"))


def needs_tf(test):
    reason = "tensorflow or tf2onnx is not installed (pip install 'rawdenoise[tf]')"
    return pytest.mark.tf(pytest.mark.skipif(TF_MISSING, reason=reason)(test))


H, W = 56, 88                     # a multiple of every network's size multiple (so no padding)
BLACK, WHITE = 64.0, 1023.0
MOSAIC_BLACK = [60.0, 62.0, 64.0, 66.0]   # per site, in the 2x2 order of the CFA
MOSAIC_CFA = "BGGR"               # the model's channel order: the reference phase
NOISE = (0.012, 3e-4)             # (k, sigma^2) in normalised units, for the noise-map network
ATOL = 1e-4                       # vs TF, relative to the output range
TILE_ATOL = 1e-5                  # tiled vs untiled, relative to the output range

SPECS = {
    "rgb": {"name": "byon_rgb", "layout": "rgb"},
    "mosaic": {"name": "byon_mosaic", "layout": "mosaic", "channel_order": MOSAIC_CFA},
    "gray": {"name": "byon_gray", "layout": "rgb", "in_channels": 1,
             "inputs": [{"name": "noise_sigma", "kind": "noise_level", "channels": 1, "stride": 1, "form": "std"}]},
}
SOURCES = {"rgb": "rgb_sm", "mosaic": "mosaic.keras", "gray": "gray_sm"}

# Converts a list of jobs in one process (one TensorFlow import for all): each job is a CLI argv
# for main(), or {"api": [src, spec mapping, dst]} for convert(); records rc, stdout, stderr.
DRIVER = r"""
import contextlib, io, json, sys, traceback
from converters.tf2onnx import convert, main
results = []
for job in json.load(open(sys.argv[1])):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if isinstance(job, dict):
                spec, diffs = convert(*job["api"])
                print(json.dumps({"diffs": diffs, "sha256": spec.origin["sha256"]}))
                rc = 0
            else:
                rc = main(job)
        except BaseException:
            rc = -1
            traceback.print_exc()
    results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


# ---- the frames, and the manifest's transforms written independently ---------------------------
def frames():
    rng = np.random.default_rng(11)

    def sensor(*shape):
        return (BLACK + (WHITE - BLACK) * rng.random(shape)).astype(np.float32)

    return {"rgb": sensor(H, W, 3), "mosaic": sensor(H, W), "gray": sensor(H, W)}


def site_black(shape):
    """Per-pixel black level of a mosaic whose 2x2 pattern is MOSAIC_BLACK in raster order."""
    return np.tile(np.array(MOSAIC_BLACK).reshape(2, 2), (shape[0] // 2, shape[1] // 2))


def network_input(name, frame):
    """NHWC float32 network input of `frame` (the frame's CFA equals the mosaic model's order)."""
    x = frame.astype(np.float64)
    black = site_black(x.shape) if name == "mosaic" else BLACK
    x = (x - black) / (WHITE - black)
    return (x if x.ndim == 3 else x[..., None])[None].astype(np.float32)


def noise_map(x_nhwc):
    k, sigma2 = NOISE
    return np.sqrt(k * x_nhwc.astype(np.float64) + sigma2).astype(np.float32)


def expected(name, y_nhwc, frame):
    """TF's NHWC output mapped back to the frame's units (de-normalised; no clipping for floats)."""
    y = y_nhwc.astype(np.float64)[0]
    if name == "rgb":
        return y * (WHITE - BLACK) + BLACK
    black = site_black(frame.shape) if name == "mosaic" else BLACK
    return y[..., 0] * (WHITE - black) + black


def run_kwargs(name, cfa=MOSAIC_CFA):
    if name == "rgb":
        return {"black_level": BLACK, "white_level": WHITE}
    if name == "mosaic":
        return {"cfa": cfa, "black_level": MOSAIC_BLACK, "white_level": WHITE}
    return {"black_level": BLACK, "white_level": WHITE, "noise": NOISE}


def one_line_error(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tf2onnx: error: ") and "Traceback" not in text, text
    return lines[0]


# ---- fixtures: one TF process builds everything, one converts everything ------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    w = tmp_path_factory.mktemp("tf_byon")
    for name, frame in frames().items():
        np.save(w / f"{name}_in.npy", network_input(name, frame))
    np.save(w / "gray_noise.npy", noise_map(np.load(w / "gray_in.npy")))
    r = subprocess.run([sys.executable, str(SCRIPTS / "tf_byon.py"), str(w)], capture_output=True, text=True,
                       env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, spec in SPECS.items():
        (w / f"{name}.json").write_text(json.dumps(spec))
    (w / "bayer4.json").write_text(json.dumps({"layout": "bayer4"}))
    return w


@pytest.fixture(scope="module")
def converted(work):
    jobs = [[str(work / SOURCES[n]), "--spec", str(work / f"{n}.json"), "-o", str(work / f"{n}.onnx")]
            for n in ("rgb", "mosaic")]
    jobs.append({"api": [str(work / SOURCES["gray"]), SPECS["gray"], str(work / "gray.onnx")]})
    jobs.append([str(work / "rgb_sm"), "--spec", str(work / "bayer4.json"), "-o", str(work / "contradiction.onnx")])
    jobs.append([str(work / "rgb_custom.keras"), "--spec", str(work / "rgb.json"), "-o", str(work / "custom.onnx")])
    (work / "jobs.json").write_text(json.dumps(jobs))
    r = subprocess.run([sys.executable, "-c", DRIVER, str(work / "jobs.json"), str(work / "results.json")],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    return dict(zip(["rgb", "mosaic", "gray", "contradiction", "custom"], results))


def denoise(path, frame, name, tile, cfa=MOSAIC_CFA):
    from rawdenoise import Denoiser

    with Denoiser.load(path, tile=tile, border=0) as dn:
        return dn.run(frame, **run_kwargs(name, cfa)).astype(np.float64)


def small_tile(spec):
    """The smallest tile on the model's grid that leaves cores of a few multiples: several tiles."""
    m = spec.multiple
    return -(-(2 * spec.receptive_radius + 4 * m) // m) * m


# ---- parity, tiling, geometry ------------------------------------------------------------------
@needs_tf
@pytest.mark.parametrize("name", ["rgb", "mosaic", "gray"])
def test_converted_network_matches_tensorflow(work, converted, name):
    job = converted[name]
    assert job["rc"] == 0, job["err"]
    if name == "gray":  # the Python API: returns the manifest and the parity differences
        result = json.loads(job["out"])
        assert result["diffs"]["max_abs_diff"] <= 1e-4 * result["diffs"]["output_range"]
    else:  # the CLI: one line that says what was written and measured
        assert job["out"].startswith(f"wrote {work / (name + '.onnx')}: ") and "parity vs origin" in job["out"]
    frame = frames()[name]
    want = expected(name, np.load(work / f"{name}_out.npy"), frame)
    got = denoise(work / f"{name}.onnx", frame, name, tile=0)
    assert got.shape == want.shape == frame.shape
    span = float(want.max() - want.min())
    diff = float(np.abs(got - want).max())
    assert diff <= ATOL * span, f"{name}: ONNX Runtime vs TF {diff:.3g} (range {span:.3g})"


@needs_tf
@pytest.mark.parametrize("name", ["rgb", "mosaic", "gray"])
def test_tiled_equals_untiled(work, converted, name):
    # the rgb network's space_to_depth branch reads one row further for odd output rows than for a
    # 2x2 block on the model's grid: exact only because tile cores start and end on that grid
    assert converted[name]["rc"] == 0, converted[name]["err"]
    from rawdenoise import Denoiser

    path = work / f"{name}.onnx"
    spec = Denoiser.load(path, tile=0).spec
    assert {"multiple", "receptive_radius", "tile"} <= set(spec.notes["measured"])
    frame = frames()[name]
    untiled = denoise(path, frame, name, tile=0)
    tile = small_tile(spec)
    assert tile < min(H, W)
    tiled = denoise(path, frame, name, tile=tile)
    assert float(np.abs(tiled - untiled).max()) <= TILE_ATOL * float(untiled.max() - untiled.min())


@needs_tf
def test_mosaic_other_phase_tiles_exactly(work, converted):
    assert converted["mosaic"]["rc"] == 0, converted["mosaic"]["err"]
    from rawdenoise import Denoiser

    path = work / "mosaic.onnx"
    spec = Denoiser.load(path, tile=0).spec
    frame = frames()["mosaic"][:, 1:-2]  # odd width, and BGGR moved by one column: GBRG
    untiled = denoise(path, frame, "mosaic", 0, cfa="GBRG")
    tiled = denoise(path, frame, "mosaic", small_tile(spec), cfa="GBRG")
    assert untiled.shape == frame.shape
    assert float(np.abs(tiled - untiled).max()) <= TILE_ATOL * float(untiled.max() - untiled.min())


def _producer(model, name):
    return next((n for n in model.graph.node if name in n.output), None)


@needs_tf
@pytest.mark.parametrize("name", ["rgb", "mosaic", "gray"])
def test_graph_is_nchw_named_and_its_radius_holds(work, converted, name):
    import onnx

    from rawdenoise.spec import METADATA_KEY, ModelSpec

    assert converted[name]["rc"] == 0, converted[name]["err"]
    model = onnx.load(work / f"{name}.onnx")
    spec = ModelSpec.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    names = {"rgb": ["image"], "mosaic": ["mosaic"], "gray": ["image", "noise_sigma"]}[name]
    assert [i.name for i in model.graph.input] == names  # the Keras Input names
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        assert dims == ["N", spec.in_channels, "H", "W"], (vi.name, dims)
    # NCHW in and out, with no transposes left at the boundary (reshapes/identities passed through)
    inputs = {i.name for i in model.graph.input}
    assert not [n for n in model.graph.node if n.op_type == "Transpose" and inputs & set(n.input)]
    for out in model.graph.output:
        node = _producer(model, out.name)
        while node is not None and node.op_type in ("Identity", "Reshape"):
            node = _producer(model, node.input[0])
        assert node is not None and node.op_type != "Transpose"
    assert spec.origin["framework"] == "tf" and len(spec.origin["sha256"]) == 64
    assert spec.origin["format"] == ("keras" if name == "mosaic" else "saved_model")
    assert spec.origin["source_file"] == SOURCES[name] and spec.origin["tf2onnx"] and spec.origin["tensorflow"]
    from converters.graph_analysis import probe_radius

    extra = {i.name: (i.channels, i.stride) for i in spec.inputs}
    probed = probe_radius(model, in_channels=spec.in_channels, multiple=spec.multiple, image_input=names[0],
                          extra_inputs=extra)
    assert 0 < probed <= spec.receptive_radius, (probed, spec.receptive_radius)


# ---- refusals: one line, exit 1, nothing written ----------------------------------------------------
def cli(*args):
    r = subprocess.run([sys.executable, "-m", "converters.tf2onnx", *map(str, args)], capture_output=True,
                       text=True, env=ENV, cwd=ROOT, timeout=300)
    return r.returncode, r.stderr


@needs_tf
def test_layout_the_network_contradicts(work, converted):
    job = converted["contradiction"]
    line = one_line_error(job["err"])
    assert job["rc"] == 1 and "'image' has 3 channels" in line and "bayer4" in line and "layout 'rgb'" in line
    assert not (work / "contradiction.onnx").exists()


@needs_tf
def test_custom_keras_layer_is_refused_not_imported(work, converted):
    job = converted["custom"]
    line = one_line_error(job["err"])
    assert job["rc"] == 1 and "'SpaceDepth'" in line and "model.export" in line
    assert not (work / "custom.onnx").exists()


@needs_tf
def test_unknown_spec_fields(work, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"layout": "rgb", "tiles": 128}))
    out = tmp_path / "m.onnx"
    rc, err = cli(work / "rgb_sm", "--spec", spec, "-o", out)
    line = one_line_error(err)
    assert rc == 1 and "unknown fields ['tiles']" in line and "tile" in line
    assert not out.exists() and not list(tmp_path.glob(".*part"))


@needs_tf
@pytest.mark.parametrize("kind", ["folder", "h5"])
def test_source_neither_saved_model_nor_keras(work, tmp_path, kind):
    src = tmp_path / ("not_a_model" if kind == "folder" else "model.h5")
    if kind == "folder":
        src.mkdir()
        (src / "variables").mkdir()
    else:
        src.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    out = tmp_path / "m.onnx"
    rc, err = cli(src, "--spec", work / "rgb.json", "-o", out)
    line = one_line_error(err)
    assert rc == 1 and ("saved_model.pb" in line if kind == "folder" else "neither a SavedModel" in line)
    assert "model.export" in line and not out.exists()


# ---- without TensorFlow (no TF is imported: the import is blocked) -------------------------------------
def test_missing_tensorflow_names_the_extra(tmp_path, monkeypatch, capsys):
    from converters import tf2onnx

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    src = tmp_path / "sm"
    src.mkdir()
    (src / "saved_model.pb").write_bytes(b"")
    (tmp_path / "spec.json").write_text('{"layout": "rgb"}')
    out = tmp_path / "m.onnx"
    assert tf2onnx.main([str(src), "--spec", str(tmp_path / "spec.json"), "-o", str(out)]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "'tensorflow'" in line and "pip install 'rawdenoise[tf]'" in line and not out.exists()
