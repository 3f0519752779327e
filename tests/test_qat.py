"""tools.qat: fake quantization equal to ONNX Q/DQ arithmetic, its export, and a QAT run."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from converters.onnx_model import zero_points_are_zero
from rawdenoise import Denoiser, zoo
from rawdenoise.errors import InputError
from rawdenoise.spec import METADATA_KEY, ModelSpec
from tools import qat, train

TARGETS = ("cpu", "tensorrt")


# ---- (1) the fake quantizers are ONNX Runtime's QuantizeLinear -> DequantizeLinear ------------------
def ort_qdq(x, scale, zero, axis=None):
    """x through an ONNX QuantizeLinear -> DequantizeLinear pair in ONNX Runtime, fusion off."""
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"), numpy_helper.from_array(zero, "z")]
    kw = {} if axis is None else {"axis": axis}
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw)], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def awkward(rng, scale, n=20000):
    """Values at ties (x / scale = k + 0.5, as near as float32 gets), far out of range, and random."""
    s = np.asarray(scale, np.float32).reshape(-1)[:, None]
    k = rng.integers(-300, 300, (s.shape[0], n))
    ties = ((k + 0.5) * s).astype(np.float32)
    wide = (rng.normal(0, 200, (s.shape[0], n)) * s).astype(np.float32)
    return np.concatenate([ties, wide], axis=1)


@pytest.mark.parametrize("target", TARGETS)
def test_activation_fake_quant_is_ort_qdq_bit_for_bit(target, rng):
    t = qat.TARGETS[target]
    for lo, hi in ((-3.7, 11.2), (-0.013, 250.0), (0.0, 1.0)):
        scale, zero = qat.act_qparams(lo, hi, t)
        x = awkward(rng, scale).ravel()
        zp = np.array(zero, np.uint8 if t.act_min == 0 else np.int8)
        want = ort_qdq(x, scale, zp)
        got = qat.fake_quant(torch.from_numpy(x), torch.tensor(scale), torch.tensor(float(zero)), t.act_min,
                             t.act_max).numpy()
        np.testing.assert_array_equal(got, want)
        # the learned-range quantizer: ORT's Q/DQ with the scale and zero point of its current range
        q = qat.ActQuant(t, learn=True)
        q.rmin.fill_(lo)
        q.rmax.fill_(hi)
        q.start_from_calibration()
        q.mode = "quant"
        scale, zero = qat.act_qparams(*(float(v.detach()) for v in q.range()), t)
        got = q(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_array_equal(got, ort_qdq(x, scale, np.array(zero, zp.dtype)))
        assert q.scale.item() == scale and q.zero_point.item() == zero
    # torch's own kernel multiplies by 1/scale and rounds some ties the other way: that is why
    # tools.qat has its own
    x = awkward(rng, np.float32(0.0137)).ravel()
    theirs = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), 0.0137, 0, -128, 127).numpy()
    assert np.any(theirs != ort_qdq(x, np.float32(0.0137), np.array(0, np.int8)))


@pytest.mark.parametrize("axis", (0, 1))
def test_per_channel_fake_quant_is_ort_qdq_bit_for_bit(axis, rng):
    scales = rng.uniform(1e-3, 0.1, 6).astype(np.float32)
    x = awkward(rng, scales, n=500).reshape(6, 2, 10, 50)
    x = np.ascontiguousarray(np.moveaxis(x, 0, axis))
    want = ort_qdq(x, scales, np.zeros(6, np.int8), axis=axis)
    shape = [1, 1, 1, 1]
    shape[axis] = 6
    got = qat.fake_quant(torch.from_numpy(x), torch.from_numpy(scales).view(shape), torch.zeros(()), -128, 127)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("target", TARGETS)
def test_scales_and_integer_weights_are_those_onnx_runtime_computes(target, rng):
    from onnxruntime.quantization import quant_utils as qu

    t = qat.TARGETS[target]
    # activations: the range -> (scale, zero point) of ORT's quantizer
    qtype = TensorProto.UINT8 if t.act_min == 0 else TensorProto.INT8
    qmin, qmax = qu.get_qmin_qmax_for_qType(qtype, symmetric=t.act_symmetric)
    for lo, hi in ((-3.7, 11.2), (0.5, 2.0), (-40.0, -1.0), (-1e-3, 7e4)):
        zero, scale = qu.compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax, t.act_symmetric)
        assert qat.act_qparams(lo, hi, t) == (np.float32(scale), int(zero))
    # weights: per output channel, quantize_data with ORT's reduce_range (cpu) or symmetric range
    w = torch.from_numpy(rng.normal(0, 0.1, (5, 3, 3, 3)).astype(np.float32))
    w[2] = 0  # a dead channel
    s = qat.weight_scales(w, 0, t.weight_qmax)
    ints = qat.weight_ints(w, s, 0, t.weight_qmax)
    for c in range(5):
        zp, scale, q = qu.quantize_data(w[c].numpy().ravel(), TensorProto.INT8, True, reduce_range=target == "cpu")
        assert np.float32(scale) == s[c].item() and zp == 0
        np.testing.assert_array_equal(ints[c].numpy().ravel(), q)
    assert int(ints.abs().max()) == t.weight_qmax


# ---- (2) a fake-quantized UNet against its exported Q/DQ file -----------------------------------------
def calibrated_unet(target, residual="float", learn=False, seed=0):
    torch.manual_seed(seed)
    net = zoo.create("unet", width=4, depth=2)
    qm = qat.QuantUNet(net, target, residual, learn_ranges=learn)
    g = torch.Generator().manual_seed(seed)
    qm.calibrate([torch.rand(2, 4, 32, 32, generator=g) * 20 - 1 for _ in range(3)])
    return qm.eval()


def session(model, exact: bool):
    opts = ort.SessionOptions()
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported():
    spec = zoo.default_spec("unet", width=4, depth=2)
    out = {}
    for target in TARGETS:
        qm = calibrated_unet(target, learn=True)
        out[target] = (qm, qat.export_qdq(qm, spec))
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_exported_file_computes_the_fake_quantized_network(exported, target, record_property):
    qm, model = exported[target]
    x = torch.rand(2, 4, 40, 56, generator=torch.Generator().manual_seed(3)) * 20 - 1   # dynamic N/H/W
    with torch.no_grad():
        want = qm(x).numpy()
    span = float(want.max() - want.min())
    exact = session(model, exact=True).run(None, {"input": x.numpy()})[0]
    assert np.abs(exact - want).max() <= 1e-5 * span
    fused = session(model, exact=False).run(None, {"input": x.numpy()})[0]
    rel = float(np.abs(fused - want).max() / span)
    # kept in the test report (junit), not printed into the suite's output
    record_property("fused_max_error_of_range", rel)
    record_property("fused_identical_share", float(np.mean(fused == want)))
    if target == "cpu":
        # u8 activations x 7-bit weights: ORT's x86 kernels reproduce the Q/DQ arithmetic closely
        assert rel < 1e-3


# ---- (3) placement: what converters.quantize writes for the same FP32 model -------------------------------
def qdq_places(model) -> set:
    """Where a graph quantizes: ('act', producer op, its index among ops of that type) for activations,
    ('weight'|'bias', conv op, index) for constants, ('input',) for the network input."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    order: dict[str, int] = {}
    index = {}
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            index[n.name] = (n.op_type, order.setdefault(n.op_type, 0))
            order[n.op_type] += 1
    places = set()
    for n in graph.node:
        if n.op_type == "QuantizeLinear":
            src = producer.get(n.input[0])
            places.add(("input",) if src is None else ("act",) + index[src.name])
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:
            for user in graph.node:
                if user.op_type in ("Conv", "ConvTranspose") and n.output[0] in user.input:
                    places.add(("weight" if list(user.input).index(n.output[0]) == 1 else "bias",) + index[user.name])
    return places


def residual_source(model) -> str:
    """What the Slice of the global residual reads: the graph input or a DequantizeLinear."""
    producer = {o: n for n in model.graph.node for o in n.output}
    (sl,) = [n for n in model.graph.node if n.op_type == "Slice"]
    src = producer.get(sl.input[0])
    return "input" if src is None else src.op_type


@pytest.fixture(scope="module")
def ptq_reference(tmp_path_factory):
    """converters.quantize of a tiny UNet's FP32 ONNX file, both targets, and the .pt it came from."""
    from converters.quantize import quantize
    from converters.torch2onnx import export_artifact

    d = tmp_path_factory.mktemp("ptq")
    torch.manual_seed(0)
    zoo.save(zoo.create("unet", width=4, depth=2), d / "unet.pt")
    export_artifact(d / "unet.pt", d / "unet.onnx")
    rng = np.random.default_rng(5)
    for i in range(2):
        np.save(d / f"c{i}.npy", rng.integers(256, 16000, (128, 192)).astype(np.uint16))
        (d / f"c{i}.json").write_text(json.dumps({"cfa": "RGGB", "black_level": 256, "white_level": 16383}))
    out = {}
    for target in TARGETS:
        quantize(d / "unet.onnx", d / f"{target}.onnx", [d / "c0.npy", d / "c1.npy"], method="minmax", samples=4,
                 holdout=1, tile=(64, 64), target=target, quantize_bias=target == "cpu")
        out[target] = onnx.load(str(d / f"{target}.onnx"))
    return d / "unet.pt", out


@pytest.mark.parametrize("target", TARGETS)
def test_qdq_placement_matches_converters_quantize(ptq_reference, target):
    pt, ptq = ptq_reference
    module, spec = zoo.load(pt)
    for residual, source in (("dequantized", "DequantizeLinear"), ("float", "input")):
        qm = qat.QuantUNet(module, target, residual)
        qm.calibrate([torch.rand(1, 4, 32, 32)])
        model = qat.export_qdq(qm, spec)
        assert qdq_places(model) == qdq_places(ptq[target])
        # the global residual: the Add stays float in both; converters.quantize (and residual
        # "dequantized") feed it the dequantized input, residual "float" the graph input
        assert residual_source(ptq[target]) == "DequantizeLinear" and residual_source(model) == source
        assert [n.op_type for n in model.graph.node if n.op_type == "Add"] == ["Add"]
    assert zero_points_are_zero(ptq[target]) == zero_points_are_zero(model) == (target == "tensorrt")


@pytest.mark.parametrize("target", TARGETS)
def test_file_holds_exactly_the_trained_scales_and_weights(exported, target):
    qm, model = exported[target]
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    seen = set()
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            key = n.input[1].removeprefix("q.").removesuffix(".scale")
            q = qm.q[key]
            assert values[n.input[1]] == q.scale.numpy() and values[n.input[2]] == q.zero_point.item()
            assert values[n.input[2]].dtype == (np.uint8 if target == "cpu" else np.int8)
            seen.add(key)
    assert seen == set(qm.q.keys())
    # weights: DequantizeLinear of the INT8 initializers is the fake-quantized weight, bit for bit
    dq_out = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    for node, (name, conv) in zip(convs, qm.conv_layers()):
        dq = dq_out[node.input[1]]
        ints, scale = values[dq.input[0]], values[dq.input[1]]
        assert ints.dtype == np.int8 and np.abs(ints).max() <= qat.TARGETS[target].weight_qmax
        axis = 1 if node.op_type == "ConvTranspose" else 0
        shape = [1] * ints.ndim
        shape[axis] = -1
        in_q = qm.quantizer("input")   # any quantizer: the weight does not depend on it
        wq, _, _ = qm.quantized_params(conv, in_q)
        np.testing.assert_array_equal(ints.astype(np.float32) * scale.reshape(shape), wq.detach().numpy())
        assert (len(node.input) > 2 and node.input[2] in dq_out) == (target == "cpu"), name


# ---- (4) a QAT run ---------------------------------------------------------------------------------
TINY = {"name": "tiny", "arch": "unet", "arch_kwargs": {"width": 4, "depth": 2}, "patch": 16, "batch": 4,
        "steps": 30, "lr": 3e-3, "min_lr": 1e-4, "warmup": 5, "pool_size": 2, "scene_size": 64, "val_isos": [1600],
        "val_n": 2, "val_every": 1000, "checkpoint_every": 3, "threads": 1, "tile": 64, "iso_range": [800, 6400]}


@pytest.fixture(scope="module")
def fp32_init(tmp_path_factory):
    return train.Trainer(train.TrainConfig.from_dict(TINY), tmp_path_factory.mktemp("fp32"), log=lambda *_: None).run()


def qat_config(init, **qat_opts):
    return train.TrainConfig.from_dict({**TINY, "steps": 8, "lr": 5e-4, "init": str(init),
                                        "qat": {"target": "cpu", "calibration_batches": 3, **qat_opts}})


@pytest.mark.parametrize("target, scales", [("cpu", "learned"), ("tensorrt", "calibrated")])
def test_qat_run_resumes_and_writes_an_int8_model(fp32_init, tmp_path, target, scales, rng):
    cfg = qat_config(fp32_init, target=target, scales=scales)
    straight = train.trainer_for(cfg, tmp_path / "a", log=lambda *_: None).run()
    assert straight == tmp_path / "a" / "model.int8.onnx"
    assert train.trainer_for(cfg, tmp_path / "b", log=lambda *_: None).run(until=5) is None
    resumed = train.trainer_for(cfg, tmp_path / "b", log=lambda *_: None).run()
    # same weights, same scales: the same file
    a, b = onnx.load(str(straight)), onnx.load(str(resumed))
    assert [numpy_helper.to_array(t).tobytes() for t in a.graph.initializer] == \
        [numpy_helper.to_array(t).tobytes() for t in b.graph.initializer]
    spec = ModelSpec.from_json({p.key: p.value for p in a.metadata_props}[METADATA_KEY])
    init_spec = zoo.read(fp32_init)["spec"]
    assert spec.precision == "int8" and spec.ksigma.anchor_iso == init_spec["ksigma"]["anchor_iso"]
    notes = spec.notes["qat"]
    assert notes["target"] == target and notes["init"]["sha256"] == train.sha256_file(fp32_init)
    assert set(notes["val_psnr"]) >= {"fp32", "start", "qat"} and ("trained with the weights" in notes["scales"]) == (
        scales == "learned")
    # default calibration: the top 3 stops of iso_range 800-6400
    assert "log-spaced over 800-6400" in notes["scales"] and len(notes["ranges"]) == len(qat.QuantUNet(
        zoo.create("unet", width=4, depth=2)).q)
    assert zero_points_are_zero(a) == (target == "tensorrt")
    raw = rng.integers(600, 9000, (64, 96)).astype(np.uint16)
    with Denoiser.load(straight) as dn:
        out = dn.run(raw, cfa="RGGB", black_level=512, white_level=16383, iso=1600)
    assert out.shape == raw.shape and out.dtype == raw.dtype


def test_fine_tuning_lowers_the_quantized_loss(fp32_init, tmp_path):
    cfg = qat_config(fp32_init, scales="calibrated")
    cfg.steps, cfg.lr = 25, 2e-3
    t = train.trainer_for(cfg, tmp_path, log=lambda *_: None)
    clean, noisy, isos = t.val_data.batch(77, 8)

    def l1():
        with torch.no_grad():
            y, g, o = t.forward(noisy, isos)
            return float(torch.nn.functional.l1_loss(y, torch.from_numpy(clean) * g + o))

    t.run(until=0)    # calibrates, trains nothing
    before = l1()
    t.run()
    assert l1() < before


# ---- (5) bad configurations: one clear line -------------------------------------------------------------
@pytest.mark.parametrize("qat_value, words", [
    ({"target": "gpu"}, "'gpu' is not one of cpu, tensorrt"),
    ({"target": "cpu", "calibration_batches": 0}, "calibration_batches must be an integer >= 1"),
    ({"target": "cpu", "calibration_iso_range": [3200, 100]}, "0 < low <= high"),
    ({"target": "cpu", "scales": "lsq"}, "'lsq' is not one of learned, calibrated"),
    ({"target": "cpu", "range_lr_scale": -1}, "range_lr_scale must be a number > 0"),
    ({"target": "cpu", "residual": "int8"}, "'int8' is not one of float, dequantized"),
    ({"target": "cpu", "bits": 4}, "unknown keys ['bits']"),
    ([1, 2], "must be an object"),
])
def test_bad_qat_config_values_are_one_clear_line(qat_value, words, tmp_path, capsys):
    with pytest.raises(InputError, match=None) as err:
        train.TrainConfig.from_dict({**TINY, "qat": qat_value})
    assert words in str(err.value)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**TINY, "qat": qat_value}))
    assert train.main(["--config", str(cfg), "-o", str(tmp_path / "run")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in lines[0]


def test_qat_needs_an_init_model_and_a_unet(fp32_init, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY))
    assert train.main(["--config", str(cfg), "-o", str(tmp_path / "run"), "--qat", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "set the config's 'init'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(InputError, match="supports the zoo UNet"):
        qat.QuantUNet(torch.nn.Conv2d(4, 4, 3))
