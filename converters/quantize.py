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
    psnr_db: float
    max_err_dn: float
    mean_err_dn: float
    notes: dict[str, Any] = field(default_factory=dict)
    max_err_share: float = math.nan      # the largest error as a share of white - black

    def warning(self) -> str | None:
        """A loud line when the held-back error says the INT8 model loses the picture somewhere."""
        if not self.n_held or (self.psnr_db >= WARN_PSNR_DB and self.max_err_share <= WARN_MAX_SHARE):
            return None
        return (f"INT8 differs from FP32 by up to {self.max_err_dn:.4g} DN ({100 * self.max_err_share:.1f} % of the "
                f"range; PSNR {self.psnr_db:.1f} dB) on held-back tiles: check the calibration frames (exposures, "
                f"ISOs) against the frames you will denoise, or keep sensitive layers in float")

    def line(self) -> str:
        if not self.n_held:
            return f"wrote {self.output} ({self.n_calib} calibration tiles); no held-back tiles to measure accuracy"
        return (f"wrote {self.output}: INT8 vs FP32 on {self.n_held} held-back tiles: PSNR {self.psnr_db:.2f} dB, "
                f"max error {self.max_err_dn:.3g} DN, mean error {self.mean_err_dn:.3g} DN "
                f"({self.n_calib} calibration tiles)")


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
                        symmetric: bool) -> None:
    """Collect activation ranges with our own calibrator settings and store them as an ORT cache file."""
    cm = _calibration_method(q, method)
    extra: dict[str, Any] = {"symmetric": symmetric}
    if method == "entropy":
        extra.update(num_bins=ENTROPY_BINS, num_quantized_bins=128)
    elif method == "percentile":
        extra.update(num_bins=ENTROPY_BINS, percentile=PERCENTILE)
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data  # noqa: PLC0415

    calibrator = create_calibrator(model_path, None, augmented_model_path=str(tmpdir / "augmented.onnx"),
                                   calibrate_method=cm, extra_options=extra)
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)


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
             float_ends: bool = False) -> QuantReport:
    """Write a Q/DQ INT8 copy of `src_onnx` calibrated on RAW `sources` (or prepared `tiles`).

    `quantize_bias=False` keeps biases in float (no int32 DequantizeLinear), the form TensorRT
    fuses into its INT8 convolutions; ONNX Runtime CPU fuses int32 biases into QLinearConv.
    `target` picks the activation format (TARGETS); `float_ends` keeps the first and last
    convolution in float.
    """
    onnx, ort, q = _ort()
    from rawdenoise.calibration import CalibrationTiles, psnr  # noqa: PLC0415
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
        reader = _Reader(tiles)
        kwargs: dict[str, Any] = {}
        cm = _calibration_method(q, method)
        if "calibration_cache_path" in inspect.signature(q.quantize_static).parameters:
            cache = tmp / "ranges.json"
            _calibration_ranges(q, pre, reader, method, tmp, cache, symmetric=act_symmetric)
            kwargs["calibration_cache_path"] = str(cache)
        qout = tmp / "q.onnx"
        try:
            graph = onnx.load(str(pre))
            keep = residual_path(graph) + (end_convs(graph) if float_ends else [])
            q.quantize_static(str(pre), str(qout), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                              nodes_to_exclude=keep, reduce_range=reduce_range,
                              activation_type=getattr(q.QuantType, act_type), weight_type=q.QuantType.QInt8,
                              calibrate_method=cm,
                              extra_options={"ActivationSymmetric": act_symmetric, "WeightSymmetric": True,
                                             "CalibTensorRangeSymmetric": act_symmetric,
                                             "QuantizeBias": bool(quantize_bias)}, **kwargs)
        except (ValueError, RuntimeError) as e:
            raise ConversionError(f"ONNX Runtime quantization failed: {str(e).splitlines()[0][:300]}") from None
        n_calib = reader.count
        if n_calib == 0:
            raise InputError("the calibration sources gave no tiles; pass larger or more RAW files")
        qmodel = onnx.load(str(qout))
        hashes = tiles.source_hashes()
        fmt = (f"QDQ {act_type} {'symmetric' if act_symmetric else 'asymmetric'} activations, "
               f"QInt8 per-channel symmetric {'7-bit ' if reduce_range else ''}weights"
               + (", first and last convolution in float" if float_ends else ""))
        notes = {"method": method, "tiles": n_calib, "sources": hashes, "target": target, "format": fmt,
                 "tile": list(tiles.tile_shape) if tiles.tile_shape else None}
        origin = dict(spec.origin)
        origin["fp32_onnx"] = src_onnx.name
        origin["calibration_sha256"] = sorted(set(hashes.values()))
        qspec = spec.replace(precision="int8", origin=origin,
                             notes={**spec.notes, "quantization": notes})
        del qmodel.metadata_props[:]
        entry = qmodel.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, qspec.to_json()
        data = qmodel.SerializeToString()

    # accuracy on tiles calibration never saw
    held, dn, peak = tiles.held_back()
    p = mx = mean = math.nan
    if len(held):
        ref_s = ort.InferenceSession(str(src_onnx), providers=["CPUExecutionProvider"])
        q_s = qdq_session(ort, data, exact=target == "tensorrt")
        err_dn = []
        for k in range(len(held)):
            (r,) = ref_s.run(None, {input_name: held[k:k + 1]})
            (o,) = q_s.run(None, {input_name: held[k:k + 1]})
            err_dn.append((np.asarray(o, np.float64) - r).ravel() * dn[k])
        err = np.concatenate(err_dn)
        mx, mean = float(np.abs(err).max()), float(np.abs(err).mean())
        # PSNR on the normalised scale: peak = white - black of each tile's frame
        norm = np.concatenate([e / peak[k] for k, e in enumerate(err_dn)])
        p = psnr(norm, np.zeros_like(norm))
        share = float(np.abs(norm).max())
    with atomic_output(dst_onnx, overwrite=overwrite) as tmpf:
        tmpf.write_bytes(data)
    return QuantReport(dst_onnx, n_calib, len(held), p, mx, mean, notes, share if len(held) else math.nan)


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
    p.add_argument("--float-ends", action="store_true", help="keep the first and last convolution in float")
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
                       float_ends=args.float_ends)
        print(rep.line())
        if rep.warning():
            print(f"quantize: WARNING: {rep.warning()}", file=sys.stderr)
        return 0

    return run_cli(body, "quantize")


if __name__ == "__main__":
    sys.exit(main())
