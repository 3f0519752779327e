"""ONNX Runtime INT8 Q/DQ quantization calibrated on RAW frames."""

import hashlib
import json
import math

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from converters.quantize import layers, main, quantize  # noqa: E402
from rawdenoise.denoiser import Denoiser  # noqa: E402
from rawdenoise.errors import InputError  # noqa: E402
from rawdenoise.spec import METADATA_KEY, ModelSpec  # noqa: E402

BLACK, WHITE = 256, 16383


def scene(rng, h, w, phase=0.0):
    """A smooth scene plus shot/read noise: what a RAW denoiser is calibrated on."""
    yy, xx = np.mgrid[0:h, 0:w]
    clean = BLACK + 5000 * (1.2 + np.sin(xx / 13.0 + phase) * np.cos(yy / 19.0))
    return np.clip(clean + rng.normal(0, 40, clean.shape), 0, WHITE).astype(np.uint16)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(7)
    for i in range(2):
        np.save(d / f"c{i}.npy", scene(rng, 160, 224, phase=i))
        (d / f"c{i}.json").write_text(json.dumps({"cfa": "RGGB", "black_level": BLACK, "white_level": WHITE}))
    return d


@pytest.fixture(scope="module")
def int8_model(tiny_unet_onnx, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "unet.int8.onnx"
    rep = quantize(tiny_unet_onnx, out, [calib_dir], method="minmax", samples=8, holdout=4, tile=(64, 64),
                   target="tensorrt")
    return out, rep


def _init(model, name):
    for i in model.graph.initializer:
        if i.name == name:
            return onnx.numpy_helper.to_array(i)
    return None


def test_qdq_structure_int8_per_channel_symmetric(int8_model):
    path, _ = int8_model
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    zero_points = [_init(m, n.input[2]) for n in m.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    zero_points = [z for z in zero_points if z is not None]
    # activations and weights int8; only biases (if quantized) are int32, as QDQ prescribes
    assert sum(z.dtype == np.int8 for z in zero_points) >= 4
    assert all(z.dtype in (np.int8, np.int32) for z in zero_points)
    q_zero = [_init(m, n.input[2]) for n in m.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert q_zero and all(z is not None and z.dtype == np.int8 for z in q_zero)
    assert all(np.all(z == 0) for z in zero_points)  # symmetric
    conv_weights = {n.input[1] for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    per_channel = 0
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights:
            scale = _init(m, n.input[1])
            per_channel += scale is not None and scale.ndim == 1 and scale.size > 1
    assert per_channel >= len(conv_weights) - 1  # every conv weight with >1 output channel


def test_manifest_int8_with_calibration_hashes(int8_model, calib_dir):
    path, rep = int8_model
    m = onnx.load(str(path))
    spec = ModelSpec.from_json({p.key: p.value for p in m.metadata_props}[METADATA_KEY])
    assert spec.precision == "int8"
    want = {hashlib.sha256(p.read_bytes()).hexdigest() for p in calib_dir.glob("*.npy")}
    assert want <= set(spec.origin["calibration_sha256"])
    assert spec.notes["quantization"]["method"] == "minmax"
    # every tile of these frames stays below 90 % of white, so each held-back tile is also measured
    # brightened to white, and those copies say so (their correction SNR is reported apart)
    assert rep.n_calib == 8 and rep.n_held == 8
    from rawdenoise.calibration import CalibrationTiles
    tiles = CalibrationTiles([calib_dir], spec, tile=(64, 64), samples=8, holdout=4)
    held, scales = tiles.held_back()
    assert [s.highlight for s in scales] == [False, True] * 4
    for (t, s), (b, _) in zip(list(zip(held, scales))[::2], list(zip(held, scales))[1::2]):
        top = (b.max() - s.offset) / s.gain
        assert top == pytest.approx(1.0, rel=1e-5) and (t.max() - s.offset) / s.gain < 0.9
    assert math.isfinite(rep.accuracy.highlight_correction_snr_db)


def _frame_psnr(got, ref):
    return 10 * math.log10((WHITE - BLACK) ** 2 / np.mean((got.astype(np.float64) - ref) ** 2))


def test_tensorrt_target_close_to_fp32_in_qdq_arithmetic(int8_model, tiny_unet_onnx):
    """The symmetric model's Q/DQ arithmetic (what TensorRT runs), on a frame calibration never saw,
    through the SDK's own prepare / tiles / finish."""
    import onnxruntime as ort

    from converters.quantize import qdq_session
    from rawdenoise.tiling import run_tiled

    path, rep = int8_model
    raw = scene(np.random.default_rng(99), 192, 256, phase=2.5)
    kw = dict(cfa="RGGB", black_level=BLACK, white_level=WHITE)
    with Denoiser.load(tiny_unet_onnx, tile=64) as dn:
        ref = dn.run(raw, **kw).astype(np.float64)
        p = dn.prepare(raw, **kw)
        sess = qdq_session(ort, str(path), exact=True)
        y = run_tiled(lambda b: sess.run(None, {"input": b})[0], p.x, dn.plan(p.x), out_channels=4)
        got = dn.finish(y, p)
    assert _frame_psnr(got, ref) > 40.0
    # Denoiser on ONNX Runtime CPU runs a TensorRT-target model as that exact Q/DQ arithmetic, not
    # through ORT's fused signed-activation kernels (which saturate on x86 without VNNI)
    with Denoiser.load(path, tile=64) as dq:
        assert dq.runtime.session.get_session_options().graph_optimization_level == \
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        np.testing.assert_array_equal(dq.run(raw, **kw), got)
    # the command's own held-back measurement agrees with this independent one in magnitude
    assert rep.accuracy.psnr_db > 40.0 and rep.accuracy.max_err_dn < 0.05 * (WHITE - BLACK)


def test_cli_prints_accuracy_and_fails_cleanly(tiny_unet_onnx, calib_dir, tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    rc = main([str(tiny_unet_onnx), "-o", str(out), "--calib", str(calib_dir / "*.npy"), "--method", "percentile",
               "--samples", "4", "--holdout", "2", "--tile", "64", "64", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "PSNR" in text and "dB" in text and "DN" in text
    rc = main([str(tiny_unet_onnx), "-o", str(tmp_path / "x.onnx"), "--calib", str(tmp_path / "none*.dng")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "matches no file" in err
    assert not (tmp_path / "x.onnx").exists()


def test_refuses_quantized_input(int8_model, calib_dir, tmp_path):
    with pytest.raises(InputError, match="already quantized"):
        quantize(int8_model[0], tmp_path / "again.onnx", [calib_dir], samples=2)


@pytest.mark.slow
def test_entropy_differs_from_minmax_with_more_bins(int8_model, tiny_unet_onnx, calib_dir, tmp_path):
    """With ORT's default 128 bins entropy picks min/max ranges; with more bins it clips outliers."""
    ent = tmp_path / "e.onnx"
    quantize(tiny_unet_onnx, ent, [calib_dir], method="entropy", samples=8, holdout=0, tile=(64, 64))

    def act_scales(p):
        m = onnx.load(str(p))
        return {n.input[0]: float(_init(m, n.input[1])) for n in m.graph.node
                if n.op_type == "QuantizeLinear" and _init(m, n.input[1]) is not None and _init(m, n.input[1]).ndim == 0}

    a, b = act_scales(int8_model[0]), act_scales(ent)
    common = set(a) & set(b)
    assert common and any(not math.isclose(a[k], b[k], rel_tol=1e-3) for k in common)


def test_global_residual_sum_stays_in_float(int8_model):
    """The output is input + correction: the sum is not rounded to 8 bits before it leaves."""
    import onnx as onnx_mod

    from converters.quantize import residual_path

    path, _ = int8_model
    m = onnx.load(str(path))
    producers = {o: n for n in m.graph.node for o in n.output}
    last = producers[m.graph.output[0].name]
    assert last.op_type == "Add"  # not DequantizeLinear: the sum is float
    assert last.name in residual_path(onnx_mod.load(str(path)))


@pytest.fixture(scope="module")
def cpu_int8_model(tiny_unet_onnx, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qcpu") / "unet.cpu.int8.onnx"
    quantize(tiny_unet_onnx, out, [calib_dir], method="minmax", samples=8, holdout=0, tile=(64, 64),
             target="cpu", float_ends=True)
    return out


def test_cpu_target_unsigned_asymmetric_activations_and_float_ends(cpu_int8_model, tiny_unet_onnx):
    from converters.quantize import end_convs

    m = onnx.load(str(cpu_int8_model))
    q_zero = [_init(m, n.input[2]) for n in m.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert q_zero and all(z.dtype == np.uint8 for z in q_zero)
    assert any(np.any(z != 128) for z in q_zero)  # asymmetric: ranges follow the data (ReLU >= 0)
    # the first and last convolution take float weights (no DequantizeLinear feeds them)
    ends = end_convs(onnx.load(str(tiny_unet_onnx)))
    assert len(ends) == 2
    producers = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.name in ends:
            assert producers.get(n.input[1]) is None or producers[n.input[1]].op_type != "DequantizeLinear"
    quantized = [n for n in m.graph.node if n.op_type == "Conv" and n.name not in ends]
    assert quantized and all(producers[n.input[1]].op_type == "DequantizeLinear" for n in quantized)
    # 7-bit weights: u8 x s8 pair sums stay clear of int16 saturation on CPUs without VNNI
    for n in quantized:
        w = _init(m, producers[n.input[1]].input[0])
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 64
    spec = ModelSpec.from_json({p.key: p.value for p in m.metadata_props}[METADATA_KEY])
    assert spec.notes["quantization"]["target"] == "cpu"
    assert "QUInt8 asymmetric" in spec.notes["quantization"]["format"]


def test_cpu_target_close_to_fp32_through_denoiser(cpu_int8_model, tiny_unet_onnx):
    """The asymmetric model on ONNX Runtime's own integer kernels, as users run it."""
    raw = scene(np.random.default_rng(99), 192, 256, phase=2.5)
    kw = dict(cfa="RGGB", black_level=BLACK, white_level=WHITE)
    with Denoiser.load(tiny_unet_onnx, tile=64) as dn:
        ref = dn.run(raw, **kw).astype(np.float64)
    with Denoiser.load(cpu_int8_model, tile=64) as dn:
        got = dn.run(raw, **kw)
    assert _frame_psnr(got, ref) > 40.0


def test_cpu_target_integer_kernels_match_qdq_arithmetic(cpu_int8_model, tiny_unet_onnx):
    """ORT's fused integer kernels compute what the Q/DQ graph says (no int16 saturation)."""
    import onnxruntime as ort

    from converters.quantize import qdq_session

    x = np.random.default_rng(3).uniform(0.05, 0.7, size=(1, 4, 64, 64)).astype(np.float32)
    fused = qdq_session(ort, str(cpu_int8_model), exact=False).run(None, {"input": x})[0]
    exact = qdq_session(ort, str(cpu_int8_model), exact=True).run(None, {"input": x})[0]
    scale = np.abs(exact).max()
    assert np.abs(fused - exact).max() <= 0.02 * scale


def test_tensorrt_refuses_asymmetric_int8(cpu_int8_model, int8_model, tmp_path):
    from converters.onnx_model import zero_points_are_zero

    assert zero_points_are_zero(onnx.load(str(int8_model[0])))
    assert not zero_points_are_zero(onnx.load(str(cpu_int8_model)))
    with pytest.raises(InputError, match="--target tensorrt"):
        from converters.onnx2trt import build_engine

        from types import SimpleNamespace

        build_engine(cpu_int8_model, tmp_path / "x.engine", trt=SimpleNamespace(__version__="10.8.0"))


def test_calibration_covers_highlights_the_frames_never_reach(tiny_unet_onnx, tmp_path, monkeypatch):
    """Calibration frames that stay below 40 % of white must still give an INT8 model whose input
    range reaches white (after the manifest's scaling): the input also feeds the global residual, so
    a short range would clip every highlight of the output."""
    import rawdenoise.calibration as calibration
    from onnx import numpy_helper

    rng = np.random.default_rng(3)
    dark = tmp_path / "dark"
    dark.mkdir()
    for i in range(2):
        frame = BLACK + 0.4 * (scene(rng, 160, 224, phase=i).astype(np.float64) - BLACK) / 1.5
        np.save(dark / f"d{i}.npy", frame.astype(np.uint16))
        (dark / f"d{i}.json").write_text(json.dumps({"cfa": "RGGB", "black_level": BLACK, "white_level": WHITE}))
    assert np.load(dark / "d0.npy").max() < 0.45 * WHITE

    def input_range_top(widened):
        if not widened:   # what the calibration frames alone give
            monkeypatch.setattr(calibration.CalibrationTiles, "input_range", lambda self: (math.inf, -math.inf))
        out = tmp_path / f"q{widened}.onnx"
        quantize(tiny_unet_onnx, out, [dark], method="minmax", samples=8, holdout=2, tile=(64, 64), overwrite=True)
        m = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == m.graph.input[0].name)
        scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])
        return (255 - zero) * scale                      # the largest input value it represents

    # this model's input is the normalised frame: white is 1.0
    assert input_range_top(True) >= 0.99
    assert input_range_top(False) < 0.5                  # the frames alone never reach highlights


def test_a_large_held_back_error_warns(capsys):
    from converters.qdq_accuracy import Accuracy
    from converters.quantize import QuantReport

    ok = QuantReport("m.onnx", 8, 4, Accuracy(55.0, 30.0, 2.0, 0.002, 30.0, 0.05, 10.0))
    bad = QuantReport("m.onnx", 8, 4, Accuracy(31.0, 9270.0, 40.0, 0.57, 3.0, 2.0, 10.0))
    assert ok.warning() is None and "9270 DN" in bad.warning() and "57.0 %" in bad.warning()


# ---- accuracy without a clean reference, and the accuracy-targeted search -----------------------------
def test_held_back_accuracy_against_independent_figures(rng):
    """An identity 'FP32' model: re-noised tiles come back with their noise, so the PSNR a biased
    'INT8' model loses is 10 log10(1 + bias^2 / noise variance) (gain 1, black 0, white 1)."""
    from converters.qdq_accuracy import HeldBack
    from rawdenoise.calibration import FrameScale

    spec = ModelSpec(multiple=8, tile=32, receptive_radius=4)
    tiles = rng.uniform(0.2, 0.8, (6, 4, 32, 32)).astype(np.float32)
    k, s2 = 1e-3, 1e-4
    scales = [FrameScale(1000.0, 1000.0, 1.0, 0.0, (k, s2))] * len(tiles)
    held = HeldBack(lambda x: x.copy(), spec, tiles, scales)
    same = held.measure(lambda x: x.copy())
    assert same.loss_db == 0 and math.isinf(same.correction_snr_db) and math.isinf(same.psnr_db)
    bias = 0.01
    a = held.measure(lambda x: x + np.float32(bias))
    var = np.mean([k * np.mean(t) + s2 for t in tiles])
    assert a.loss_db == pytest.approx(10 * math.log10(1 + bias ** 2 / var), abs=0.05)
    assert a.max_err_dn == pytest.approx(bias * 1000, rel=1e-4) and a.psnr_db == pytest.approx(40.0, abs=1e-3)
    # the identity's correction is zero: any error is infinitely large against it
    assert a.correction_snr_db == -math.inf or a.correction_snr_db < -100


def test_layers_group_each_convolution_with_its_activation(tiny_unet_onnx):
    """A convolution left in float alone would still be rounded to 8 bits at its activation's
    Q/DQ: the unit of mixed precision is the convolution with its activation chain."""
    from converters.quantize import residual_path
    m = onnx.load(str(tiny_unet_onnx))
    residual = residual_path(m)
    units = layers(m, residual)
    by_name = {n.name: n for n in m.graph.node}
    convs = [n.name for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert [u for u in units if by_name[u].op_type in ("Conv", "ConvTranspose")] == convs
    every = [node for unit in units.values() for node in unit]
    assert len(every) == len(set(every)) and not set(every) & set(residual)     # a partition
    for name, unit in units.items():
        for prev, node in zip(unit, unit[1:]):
            assert by_name[node].op_type in ("Relu", "LeakyRelu", "Clip") and by_name[node].input[0] == by_name[prev].output[0]
    # every computing node outside the residual path is in some unit: all units in float is FP32
    assert {n.name for n in m.graph.node if n.op_type not in ("Shape", "Constant")} - set(residual) <= set(every)


def test_accuracy_targeted_mixed_precision(tiny_unet_onnx, calib_dir, tmp_path):
    lines = []
    out = tmp_path / "mixed.onnx"
    plain = quantize(tiny_unet_onnx, tmp_path / "plain.onnx", [calib_dir], method="minmax", samples=8, holdout=4,
                     tile=(64, 64))
    want = plain.accuracy.correction_snr_db + 2.0          # a target the plain INT8 model misses
    rep = quantize(tiny_unet_onnx, out, [calib_dir], method="minmax", samples=8, holdout=4, tile=(64, 64),
                   max_loss_db=0.05, min_correction_snr_db=want, log=lines.append)
    units = layers(onnx.load(str(tiny_unet_onnx)), [])
    assert lines[0].startswith("INT8 (0 layers in float)") and any("sensitivity" in l for l in lines)
    steps = rep.notes["mixed_precision"]["steps"]
    assert [len(s["float"]) for s in steps] == list(range(len(steps)))      # one more layer per step
    assert rep.float_layers == steps[-1]["float"] and set(rep.float_layers) <= set(units)
    assert rep.float_nodes == [node for name in rep.float_layers for node in units[name]]
    assert len(steps) > 1 and not any(s["correction_snr_db"] >= want for s in steps[:-1])  # stops when met
    assert rep.accuracy.meets(0.05, want) or len(rep.float_layers) == len(units)
    # the layers kept in float read float weights and are not rounded inside (between a
    # convolution and its activation); what they hand to a quantized layer is rounded there
    m = onnx.load(str(out))
    producers = {o: n for n in m.graph.node for o in n.output}
    consumers = {i: n for n in m.graph.node for i in n.input}
    for n in m.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and n.name in rep.float_nodes:
            w = producers.get(n.input[1])
            assert w is None or w.op_type != "DequantizeLinear", n.name
    written = {n.name: n for n in m.graph.node}
    for name in rep.float_layers:
        for node in units[name][:-1]:
            assert consumers[written[node].output[0]].op_type != "QuantizeLinear", node
    # more in float: never further from FP32 on the correction than the plain INT8 model
    assert steps[-1]["correction_snr_db"] >= steps[0]["correction_snr_db"] - 0.5


def test_named_float_layers_reproduce_a_point_of_the_search(tiny_unet_onnx, calib_dir, tmp_path):
    units = layers(onnx.load(str(tiny_unet_onnx)), [])
    first = next(iter(units))
    rep = quantize(tiny_unet_onnx, tmp_path / "one.onnx", [calib_dir], method="minmax", samples=8, holdout=4,
                   tile=(64, 64), float_layers=[first])
    assert rep.float_layers == [first] and rep.notes["float_layers"] == {first: units[first]}
    m = onnx.load(str(tmp_path / "one.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    conv = next(n for n in m.graph.node if n.name == first)
    assert producers.get(conv.input[1]) is None or producers[conv.input[1]].op_type != "DequantizeLinear"
    assert getattr(producers.get(conv.input[0]), "op_type", None) != "DequantizeLinear"   # the input is not rounded
    with pytest.raises(InputError, match=r"--float-layers: no layer 'nope' in .*; its layers are "):
        quantize(tiny_unet_onnx, tmp_path / "x.onnx", [calib_dir], samples=8, holdout=4, tile=(64, 64),
                 float_layers=["nope"])
    assert not (tmp_path / "x.onnx").exists()


def test_correction_snr_of_highlight_tiles_is_reported_apart(rng):
    """Tiles brightened to white carry brightened noise and test clipping: their correction error
    is reported on its own instead of swamping the figure of the tiles as shot."""
    from dataclasses import replace

    from converters.qdq_accuracy import HeldBack
    from rawdenoise.calibration import FrameScale

    spec = ModelSpec(multiple=8, tile=32, receptive_radius=4)
    tiles = rng.uniform(0.2, 0.8, (4, 4, 32, 32)).astype(np.float32)
    shot = FrameScale(1000.0, 1000.0, 1.0, 0.0, (1e-3, 1e-4))
    scales = [shot, shot, replace(shot, highlight=True), replace(shot, highlight=True)]
    fp32 = lambda x: x * np.float32(0.9)                 # correction -0.1 x
    held = HeldBack(fp32, spec, tiles, scales)

    def int8(x):                                         # 1 % off as shot, 50 % off on highlight tiles
        err = np.float32(0.5) if x.max() > 0 and held_is_highlight(x) else np.float32(0.01)
        return x * np.float32(0.9) - err * np.float32(0.1) * x

    def held_is_highlight(x):
        return any(np.array_equal(x[0], t) for t in tiles[2:])

    a = held.measure(int8)
    assert a.correction_snr_db == pytest.approx(40.0, abs=1e-3)             # 10 log10(1 / 0.01^2)
    assert a.highlight_correction_snr_db == pytest.approx(6.02, abs=1e-2)   # 10 log10(1 / 0.5^2)
    only_shot = HeldBack(fp32, spec, tiles[:2], scales[:2]).measure(int8)
    assert math.isnan(only_shot.highlight_correction_snr_db)
    assert only_shot.correction_snr_db == pytest.approx(40.0, abs=1e-3)
