"""INT8 Q/DQ ONNX model calibrated on real RAW files (ONNX Runtime static quantization).

python -m converters.quantize MODEL.onnx -o MODEL.int8.onnx --calib SRC [SRC ...]
    [--target cpu|tensorrt] [--float-ends] [--method minmax|entropy|percentile] [--samples N]
    [--holdout N] [--tile H W]

Calibration tiles are read from RAW files (paths, folders, globs) through the same normalisation,
packing and tiling as `Denoiser.run`, one frame at a time. Weights are QInt8 per-channel
symmetric. Activations follow the target: `cpu` (asymmetric QUInt8, the operand ONNX Runtime's
x86 integer kernels are built around) or `tensorrt` (symmetric QInt8, zero points 0: the only
INT8 TensorRT 10 and 11 accept, which they take from Q/DQ nodes alone). The command prints the
accuracy against the FP32 model on held-back tiles.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rawdenoise.errors import ConversionError, InputError, missing
from rawdenoise.fileio import atomic_output
from rawdenoise.spec import METADATA_KEY

from rawdenoise.errors import run_cli

from .qdq_accuracy import Accuracy, HeldBack

METHODS = ("minmax", "entropy", "percentile")
# the default 128 histogram bins make entropy calibration pick the same ranges as min/max
ENTROPY_BINS = 2048
# held-back accuracy below which the command warns
WARN_PSNR_DB = 40.0
WARN_MAX_SHARE = 0.05
PERCENTILE = 99.999


@dataclass
class QuantReport:
    output: Path
    n_calib: int
    n_held: int
    accuracy: "Accuracy | None"                  # on the held-back tiles (None without any)
    notes: dict[str, Any] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)   # layers kept in float (`layers` keys)
    float_nodes: list[str] = field(default_factory=list)    # all their nodes

    def warning(self) -> str | None:
        """A loud line when the held-back error says the INT8 model loses the picture somewhere."""
        a = self.accuracy
        if a is None or (a.psnr_db >= WARN_PSNR_DB and a.max_err_share <= WARN_MAX_SHARE):
            return None
        return (f"INT8 differs from FP32 by up to {a.max_err_dn:.4g} DN ({100 * a.max_err_share:.1f} % of the "
                f"range; PSNR {a.psnr_db:.1f} dB) on held-back tiles: check the calibration frames (exposures, "
                f"ISOs) against the frames you will denoise, or keep sensitive layers in float (--max-loss-db)")

    def line(self) -> str:
        a = self.accuracy
        floats = f", {len(self.float_layers)} layers in float" if self.float_layers else ""
        if a is None:
            return f"wrote {self.output} ({self.n_calib} calibration tiles{floats}); no held-back tiles to measure accuracy"
        return (f"wrote {self.output}: INT8 vs FP32 on {self.n_held} held-back tiles: PSNR {a.psnr_db:.2f} dB, "
                f"max error {a.max_err_dn:.3g} DN, mean error {a.mean_err_dn:.3g} DN, correction SNR "
                f"{a.correction_snr_db:.1f} dB{_highlights(a)}, PSNR loss on re-noised tiles {a.loss_db:.3f} dB "
                f"({self.n_calib} calibration tiles{floats})")


def _ort():
    try:
        import onnx  # noqa: PLC0415
        import onnxruntime  # noqa: PLC0415
        from onnxruntime import quantization  # noqa: PLC0415
    except ImportError as e:
        raise missing(getattr(e, "name", None) or "onnxruntime", "onnx", "INT8 quantization") from None
    return onnx, onnxruntime, quantization


class _Reader:
    """ORT CalibrationDataReader over CalibrationTiles that counts what it served."""

    def __init__(self, tiles):
        self.tiles = tiles
        self.count = 0

    def get_next(self):
        item = self.tiles.get_next()
        if item is not None:
            self.count += 1
        return item

    def rewind(self):
        self.tiles.rewind()


def _calibration_method(q, method: str):
    return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile}[method]


def _calibration_ranges(q, model_path: Path, reader, method: str, tmpdir: Path, cache: Path, *,
                        symmetric: bool, input_name: str) -> None:
    """Collect activation ranges with our own calibrator settings and store them as an ORT cache
    file, the network input's widened to all it can hold (CalibrationTiles.input_range)."""
    cm = _calibration_method(q, method)
    extra: dict[str, Any] = {"symmetric": symmetric}
    if method == "entropy":
        extra.update(num_bins=ENTROPY_BINS, num_quantized_bins=128)
    elif method == "percentile":
        extra.update(num_bins=ENTROPY_BINS, percentile=PERCENTILE)
    from onnxruntime.quantization.calibrate import TensorData, create_calibrator, save_tensors_data  # noqa: PLC0415

    calibrator = create_calibrator(model_path, None, augmented_model_path=str(tmpdir / "augmented.onnx"),
                                   calibrate_method=cm, extra_options=extra)
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    lo, hi = reader.tiles.input_range()
    seen = ranges[input_name]
    if np.isfinite(lo) and np.isfinite(hi):
        low, high = min(float(np.min(seen.lowest)), lo), max(float(np.max(seen.highest)), hi)
        if symmetric:
            low, high = min(low, -high), max(high, -low)
        # the same array shape and dtype as ORT's own values
        fields = {k: v for k, v in seen.to_dict().items() if k != "CLS"}
        fields["lowest"] = np.full(np.shape(seen.lowest), low, np.asarray(seen.lowest).dtype)
        fields["highest"] = np.full(np.shape(seen.highest), high, np.asarray(seen.highest).dtype)
        ranges[input_name] = TensorData(**fields)
    save_tensors_data(ranges, cache)


def residual_path(model) -> list[str]:
    """Nodes that carry the network input straight to the output (a global residual).

    A denoiser's output is its input plus a small correction: quantizing the sum would round a
    14-bit frame to 8 bits. Those nodes stay in float (ORT still feeds them the dequantized
    input it shares with the first convolution; feeding them the float input measured worse,
    since the correction was computed from the quantized copy).
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    keep = []
    for out in graph.output:
        node = producers.get(out.name)
        if node is None or node.op_type not in ("Add", "Sub"):
            continue
        keep.append(node.name)
        for name in node.input:
            # the input itself, or a Slice/Identity/Cast of it
            src = producers.get(name)
            while src is not None and src.op_type in ("Slice", "Identity", "Cast", "Gather"):
                keep.append(src.name)
                name = src.input[0]
                src = producers.get(name)
    return keep


def qdq_session(ort, model, *, exact: bool):
    """An ONNX Runtime CPU session for a Q/DQ model. `exact` turns graph fusion off, so every
    QuantizeLinear/DequantizeLinear runs as written (the arithmetic TensorRT implements); fused,
    ORT runs its own integer kernels, whose accuracy depends on the CPU (on AVX2 without VNNI
    the signed-activation kernels saturate: on a small test network, 34 dB against FP32 where
    its Q/DQ arithmetic gives 56 dB)."""
    opts = ort.SessionOptions()
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def end_convs(model) -> list[str]:
    """The first convolution (reads the network input) and the last one (its output reaches a
    graph output through element-wise ops only): the layers whose 8-bit rounding shows most."""
    graph = model.graph
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    first = [n.name for n in convs if inputs & set(n.input)]
    last = []
    todo = [o.name for o in graph.output]
    seen = set()
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("Conv", "ConvTranspose"):
            last.append(node.name)
        elif node.op_type in ("Add", "Sub", "Mul", "Div", "Slice", "Identity", "Cast", "Clip", "Relu"):
            todo.extend(node.input)
    return list(dict.fromkeys(first + last))


# element-wise activations quantized together with the convolution that feeds them
_ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu"}
# nodes that only move shapes around: never worth a search step of their own
_SHAPE_OPS = {"Shape", "Constant", "ConstantOfShape", "Unsqueeze", "Squeeze", "Gather", "Cast", "Identity",
              "Range", "Expand"}


def layers(model, residual: list[str]) -> dict[str, list[str]]:
    """The units mixed precision keeps in float: each convolution with the activation chain it
    feeds (a convolution left in float alone would still have its output rounded to 8 bits by the
    activation's Q/DQ), and every other computing node on its own (pooling, concatenation, ...).
    Keyed by the first node's name, in graph order; the residual path is never a unit."""
    graph = model.graph
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    taken = set(residual)
    units: dict[str, list[str]] = {}
    for n in graph.node:
        if n.op_type not in ("Conv", "ConvTranspose") or n.name in taken:
            continue
        unit, out = [n.name], n.output[0]
        while len(consumers.get(out, [])) == 1 and consumers[out][0].op_type in _ACTIVATIONS:
            nxt = consumers[out][0]
            if nxt.name in taken:
                break
            unit.append(nxt.name)
            out = nxt.output[0]
        units[n.name] = unit
        taken.update(unit)
    for n in graph.node:
        if n.name not in taken and n.op_type not in _SHAPE_OPS:
            units[n.name] = [n.name]
    order = {n.name: i for i, n in enumerate(graph.node)}
    return dict(sorted(units.items(), key=lambda kv: order[kv[0]]))


# target -> (activation type, symmetric activations, 7-bit weights)
TARGETS = {
    # zero points of 0 everywhere: the only INT8 TensorRT accepts
    "tensorrt": ("QInt8", True, False),
    # unsigned asymmetric activations (ReLU outputs use all 256 levels; u8 x s8 is the operand
    # pair of ORT's x86 kernels) and weights within +-63: x86 CPUs without VNNI multiply-add u8 x s8
    # pairs into saturating int16, which 7-bit weights keep clear of (measured on AVX2: 47 dB
    # against FP32 with 8-bit weights, 57 dB with 7-bit, the same as the exact Q/DQ arithmetic)
    "cpu": ("QUInt8", False, True),
}


def quantize(src_onnx, dst_onnx, sources=None, *, tiles=None, method: str = "entropy", samples: int = 64,
             holdout: int = 8, tile=None, levels: dict | None = None, progress: bool = False,
             overwrite: bool = True, quantize_bias: bool = True, target: str = "cpu",
             float_ends: bool = False, float_layers: list[str] | None = None, max_loss_db: float | None = None,
             min_correction_snr_db: float | None = None, log=None) -> QuantReport:
    """Write a Q/DQ INT8 copy of `src_onnx` calibrated on RAW `sources` (or prepared `tiles`).

    `quantize_bias=False` keeps biases in float (no int32 DequantizeLinear), the form TensorRT
    fuses into its INT8 convolutions; ONNX Runtime CPU fuses int32 biases into QLinearConv.
    `target` picks the activation format (TARGETS); `float_ends` keeps the first and last
    convolution (with their activations) in float; `float_layers` names layers (`layers` keys, as a
    search prints them) to keep in float, which reproduces one point of a search. With `max_loss_db` and/or `min_correction_snr_db`,
    layers (`layers`) are kept in float, the most sensitive first, until the held-back tiles meet
    them (`search_float_layers`); `log` gets one line per step.
    """
    onnx, ort, q = _ort()
    from rawdenoise.calibration import CalibrationTiles  # noqa: PLC0415
    from .onnx_model import read_onnx  # noqa: PLC0415

    if method not in METHODS:
        raise InputError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise InputError(f"quantization target {target!r} is not one of {', '.join(TARGETS)}")
    act_type, act_symmetric, reduce_range = TARGETS[target]
    src_onnx, dst_onnx = Path(src_onnx), Path(dst_onnx)
    if dst_onnx.exists() and not overwrite:
        raise InputError(f"{dst_onnx} already exists; pass --overwrite to replace it")
    _model, spec, input_name, qdq = read_onnx(src_onnx)
    if qdq:
        raise InputError(f"{src_onnx} is already quantized (it has Q/DQ nodes); quantize the FP32 model")
    if spec.precision != "fp32":
        raise InputError(f"{src_onnx} is a {spec.precision} model; quantize the FP32 model")
    if spec.inputs:
        raise InputError(f"{src_onnx} takes extra inputs ({', '.join(i.name for i in spec.inputs)}), which "
                         f"calibration does not feed; quantize a model that takes the image only")
    targeted = max_loss_db is not None or min_correction_snr_db is not None
    if tiles is None:
        if not sources:
            raise InputError("no calibration data: pass --calib RAW files, folders or glob patterns")
        tiles = CalibrationTiles(sources, spec, tile=tile, samples=samples, holdout=holdout,
                                 input_name=input_name, progress=progress, **(levels or {}))
    tiles.input_name = input_name

    with tempfile.TemporaryDirectory(prefix="rawdenoise-quant-") as tmpd:
        tmp = Path(tmpd)
        pre = tmp / "pre.onnx"
        # symbolic shape inference cannot handle the dynamic H/W of a tiled model
        q.quant_pre_process(str(src_onnx), str(pre), skip_symbolic_shape=True)
        pre_model = onnx.load(str(pre))
        residual = residual_path(pre_model)
        units = layers(pre_model, residual)
        # a misspelt layer is refused before the calibration pass, not after it
        unknown = [name for name in (float_layers or []) if name not in units]
        if unknown:
            raise InputError(f"--float-layers: no layer {unknown[0]!r} in {src_onnx.name}; its layers are "
                             f"{', '.join(units)}")
        reader = _Reader(tiles)
        kwargs: dict[str, Any] = {}
        cm = _calibration_method(q, method)
        if "calibration_cache_path" in inspect.signature(q.quantize_static).parameters:
            cache = tmp / "ranges.json"
            _calibration_ranges(q, pre, reader, method, tmp, cache, symmetric=act_symmetric, input_name=input_name)
            kwargs["calibration_cache_path"] = str(cache)

        def build(float_layers: list[str]):
            """The Q/DQ model with the residual path and the nodes of `float_layers` left in float."""
            float_nodes = [node for name in float_layers for node in units[name]]
            qout = tmp / "q.onnx"
            reader.rewind()   # read again only where ORT has no calibration cache to take the ranges from
            try:
                q.quantize_static(str(pre), str(qout), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                                  nodes_to_exclude=residual + list(float_nodes), reduce_range=reduce_range,
                                  activation_type=getattr(q.QuantType, act_type), weight_type=q.QuantType.QInt8,
                                  calibrate_method=cm,
                                  extra_options={"ActivationSymmetric": act_symmetric, "WeightSymmetric": True,
                                                 "CalibTensorRangeSymmetric": act_symmetric,
                                                 "QuantizeBias": bool(quantize_bias)}, **kwargs)
            except (ValueError, RuntimeError) as e:
                raise ConversionError(f"ONNX Runtime quantization failed: {str(e).splitlines()[0][:300]}") from None
            return onnx.load(str(qout))

        float_layers = list(dict.fromkeys(
            list(float_layers or []) + ([c for c in end_convs(pre_model) if c in units] if float_ends else [])))
        qmodel = build(float_layers)
        n_calib = reader.count
        if n_calib == 0:
            raise InputError("the calibration sources gave no tiles; pass larger or more RAW files")

        # accuracy on tiles calibration never saw
        held_tiles, scales = tiles.held_back()
        accuracy, steps = None, []
        if len(held_tiles):
            ref_s = ort.InferenceSession(str(src_onnx), providers=["CPUExecutionProvider"])
            held = HeldBack(lambda x: ref_s.run(None, {input_name: x})[0], spec, held_tiles, scales)

            def measure(model) -> Accuracy:
                sess = qdq_session(ort, model.SerializeToString(), exact=target == "tensorrt")
                return held.measure(lambda x: sess.run(None, {input_name: x})[0])

            accuracy = measure(qmodel)
            if max_loss_db is not None and not held.clean:
                raise InputError("--max-loss-db needs the noise level of the held-back frames, and none could be "
                                 "measured (noise-free frames?); pass --iso, or use --min-correction-snr-db only")
            if targeted:
                qmodel, float_layers, accuracy, steps = search_float_layers(
                    build, measure, list(units), float_layers, qmodel, accuracy, max_loss_db,
                    min_correction_snr_db, log=log)
        elif targeted:
            raise InputError("--max-loss-db / --min-correction-snr-db need held-back tiles: pass --holdout N > 0")
        hashes = tiles.source_hashes()
        fmt = (f"QDQ {act_type} {'symmetric' if act_symmetric else 'asymmetric'} activations, "
               f"QInt8 per-channel symmetric {'7-bit ' if reduce_range else ''}weights"
               + (f", {len(float_layers)} layers in float" if float_layers else ""))
        notes = {"method": method, "tiles": n_calib, "sources": hashes, "target": target, "format": fmt,
                 "tile": list(tiles.tile_shape) if tiles.tile_shape else None}
        float_nodes = [node for name in float_layers for node in units[name]]
        if float_layers:
            notes["float_layers"] = {name: units[name] for name in float_layers}
        if steps:
            notes["mixed_precision"] = {"max_loss_db": max_loss_db, "min_correction_snr_db": min_correction_snr_db,
                                        "steps": steps}
        if accuracy is not None:
            notes["held_back"] = {k: (None if isinstance(v, float) and not math.isfinite(v) else round(v, 4))
                                  for k, v in vars(accuracy).items()}
        origin = dict(spec.origin)
        origin["fp32_onnx"] = src_onnx.name
        origin["calibration_sha256"] = sorted(set(hashes.values()))
        qspec = spec.replace(precision="int8", origin=origin, notes={**spec.notes, "quantization": notes})
        del qmodel.metadata_props[:]
        entry = qmodel.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, qspec.to_json()
        data = qmodel.SerializeToString()

    with atomic_output(dst_onnx, overwrite=overwrite) as tmpf:
        tmpf.write_bytes(data)
    return QuantReport(dst_onnx, n_calib, len(held_tiles), accuracy, notes, float_layers, float_nodes)


def _highlights(a: Accuracy) -> str:
    h = a.highlight_correction_snr_db
    return "" if math.isnan(h) else f" (on tiles brightened to white {h:.1f} dB)"


def _step_line(what: str, a: Accuracy) -> str:
    loss = f"{a.loss_db:.3f} dB" if math.isfinite(a.loss_db) else "n/a (no noise level known)"
    return (f"{what}: PSNR loss {loss}, correction SNR {a.correction_snr_db:.1f} dB{_highlights(a)}, "
            f"vs FP32 {a.psnr_db:.1f} dB, {a.ms_per_tile:.0f} ms per tile")


def search_float_layers(build, measure, candidates: list[str], float_layers: list[str], qmodel, accuracy: Accuracy,
                        max_loss_db: float | None, min_correction_snr_db: float | None, *, log=None):
    """Keep layers in float, most sensitive first, until the targets hold.

    Sensitivity: the accuracy with that one layer (besides those already in float) left in
    float, ranked by how far it still misses the targets (then by correction SNR). Each candidate is
    then added in that order and the whole model measured again, since errors of layers do not
    simply add.
    Returns (model, float layers, accuracy, steps); the last model when every candidate is in float
    and the targets still fail (the caller reports it).
    """
    log = log or (lambda line: None)
    steps = [{"float": list(float_layers), **vars(accuracy)}]
    log(_step_line(f"INT8 ({len(float_layers)} layers in float)", accuracy))
    if accuracy.meets(max_loss_db, min_correction_snr_db):
        return qmodel, float_layers, accuracy, steps
    rest = [c for c in candidates if c not in float_layers]
    sensitivity = {}
    for c in rest:
        sensitivity[c] = measure(build(float_layers + [c]))
        log(_step_line(f"  sensitivity: {c} alone in float", sensitivity[c]))
    order = sorted(rest, key=lambda c: (sensitivity[c].shortfall(max_loss_db, min_correction_snr_db),
                                        -sensitivity[c].correction_snr_db))
    float_layers = list(float_layers)
    for c in order:
        float_layers.append(c)
        qmodel = build(float_layers)
        accuracy = measure(qmodel)
        steps.append({"float": list(float_layers), **vars(accuracy)})
        log(_step_line(f"+ {c} in float ({len(float_layers)} in float)", accuracy))
        if accuracy.meets(max_loss_db, min_correction_snr_db):
            break
    return qmodel, float_layers, accuracy, steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.quantize", description=__doc__.split("\n")[0])
    p.add_argument("model", help="rawdenoise FP32 ONNX model")
    p.add_argument("-o", "--output", required=True, help="output Q/DQ .onnx path")
    p.add_argument("--calib", nargs="+", required=True, metavar="SRC",
                   help="RAW files, folders or glob patterns (camera RAW, DNG, .npy + .json sidecar)")
    p.add_argument("--method", choices=METHODS, default="entropy")
    p.add_argument("--target", choices=list(TARGETS), default="cpu",
                   help="cpu (default): asymmetric QUInt8 activations, for ONNX Runtime; "
                        "tensorrt: symmetric QInt8 only, the form TensorRT builds")
    p.add_argument("--float-ends", action="store_true",
                   help="keep the first and last convolution (with their activations) in float")
    p.add_argument("--float-layers", nargs="+", metavar="LAYER", default=[],
                   help="keep these layers in float (names as a --max-loss-db search prints them)")
    p.add_argument("--max-loss-db", type=float, metavar="D",
                   help="keep the most sensitive layers in float until the PSNR loss on re-noised held-back "
                        "tiles is at most D dB")
    p.add_argument("--min-correction-snr-db", "--max-loss-residual-db", dest="min_correction_snr_db", type=float,
                   metavar="R", help="... and the correction (output - input) is within R dB signal-to-error of FP32's")
    p.add_argument("--samples", type=int, default=64, help="calibration tiles (default 64)")
    p.add_argument("--holdout", type=int, default=8, help="held-back tiles for the accuracy report (default 8)")
    p.add_argument("--tile", nargs=2, type=int, metavar=("H", "W"), help="tile size (default: the manifest's)")
    p.add_argument("--cfa", help="CFA when the files do not say it")
    p.add_argument("--black-level", type=float)
    p.add_argument("--white-level", type=float)
    p.add_argument("--iso", type=float)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)

    def body() -> int:
        levels = {k: v for k, v in (("cfa", args.cfa), ("black_level", args.black_level),
                                    ("white_level", args.white_level), ("iso", args.iso)) if v is not None}
        rep = quantize(args.model, args.output, args.calib, method=args.method, samples=args.samples,
                       holdout=args.holdout, tile=tuple(args.tile) if args.tile else None, levels=levels,
                       progress=args.progress, overwrite=args.overwrite, target=args.target,
                       float_ends=args.float_ends, float_layers=args.float_layers, max_loss_db=args.max_loss_db,
                       min_correction_snr_db=args.min_correction_snr_db, log=print)
        print(rep.line())
        a = rep.accuracy
        if a is not None and not a.meets(args.max_loss_db, args.min_correction_snr_db):
            print(f"quantize: WARNING: the targets are not met even with every layer in float "
                  f"({_step_line('final', a)})", file=sys.stderr)
        if rep.warning():
            print(f"quantize: WARNING: {rep.warning()}", file=sys.stderr)
        return 0

    return run_cli(body, "quantize")


if __name__ == "__main__":
    sys.exit(main())
