"""Quantization-aware fine-tuning (QAT) of the zoo UNet, exported as the Q/DQ ONNX model it simulates.

    python -m tools.train --config tools/configs/default_cpu_qat.json -o RUN_DIR
    python -m tools.train --config CFG.json -o RUN_DIR --qat cpu|tensorrt

A trained FP32 artifact (the config's `init`) is fine-tuned with the data, loss, k-sigma domain,
schedule and checkpoints of tools.train, through fake quantization whose float32 arithmetic is
that of ONNX QuantizeLinear -> DequantizeLinear, bit for bit: x / scale rounded half to even, plus
the zero point, saturated (torch's fake-quantize kernels multiply by 1 / scale and round some ties
the other way). Q/DQ sit where ONNX Runtime's `quantize_static` (QDQ format, as
`converters.quantize` runs it) puts them for this graph: the network input and the outputs of
every convolution, transposed convolution, leaky ReLU, max-pool (with its input's scale) and
concat; weights per output channel, symmetric; for the `cpu` target int32 biases at input scale
x weight scale. The global residual sum stays in float.

Activation ranges are the min/max of the FP32 network over `calibration_batches` training batches,
then frozen (or, with scales "learned", trained from there). Which ISOs they are measured on
decides most of the result: the k-sigma transform multiplies a frame by k(anchor) / k(ISO), so at
ISO 100 every activation is ~100 x larger than at ISO 12800, and a range that holds ISO 100 leaves
a high-ISO frame a handful of levels. By default the ranges are measured on the top 3 stops of
the served ISO range; lower ISOs then clip in the network, and the residual adds the correction to
the float input (not its dequantized copy, as converters.quantize does), so a clipped highlight
comes back undenoised instead of flattened.

`RUN_DIR/model.int8.onnx` carries exactly the trained scales and zero points (nothing is
recalibrated), INT8 weights and int32 biases as initializers, dynamic N/H/W, and the init's
manifest with precision "int8" and the run in `notes.qat`.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rawdenoise.errors import ConversionError, InputError, missing
from rawdenoise.fileio import atomic_output

from .train import Trainer


@dataclass(frozen=True)
class Target:
    """The integer formats of one deployment target (the ranges ONNX Runtime's quantizer uses)."""

    act_min: int          # QuantizeLinear saturation of the activation type
    act_max: int
    act_symmetric: bool   # zero point 0 and scale = max|x| / 127 (ORT's symmetric INT8 range)
    weight_qmax: int      # weights in [-weight_qmax, weight_qmax], scale = max|w| / weight_qmax
    quantize_bias: bool   # int32 bias with scale = input scale * weight scale
    describe: str


TARGETS = {
    # ONNX Runtime on x86: asymmetric u8 activations; weights in [-64, 64], the range ORT's
    # `reduce_range` gives QInt8 (u8 x s8 pairs summed in int16 cannot saturate on CPUs without
    # VNNI: 2 * 255 * 64 < 32767); int32 biases, which ORT fuses into QLinearConv
    "cpu": Target(0, 255, False, 64, True,
                  "QUInt8 asymmetric per-tensor activations, QInt8 per-channel symmetric weights in [-64, 64] "
                  "(ORT reduce_range), int32 biases"),
    # TensorRT: INT8 with zero points 0 only; the scale comes from ORT's symmetric range
    # [-127, 127] while QuantizeLinear itself saturates at [-128, 127]; biases stay float, the form
    # converters.onnx2trt builds
    "tensorrt": Target(-128, 127, True, 127, False,
                       "QInt8 symmetric per-tensor activations (zero point 0), QInt8 per-channel symmetric "
                       "weights in [-127, 127], float biases"),
}
RESIDUALS = ("float", "dequantized")
SCALES = ("learned", "calibrated")
# default calibration: the top stops of the served ISO range (see the module docstring)
CALIBRATION_STOPS = 3
OPSET = 17
INT32 = (-2 ** 31, 2 ** 31 - 1)


@dataclass
class QatOptions:
    """The `qat` block of a training config."""

    target: str = "cpu"
    calibration_batches: int = 16
    # ISO range of the calibration batches; None: the top 3 stops of the config's iso_range
    calibration_iso_range: tuple[float, float] | None = None
    # "calibrated": ranges frozen at the calibration; "learned": trained from there (LSQ-style)
    scales: str = "calibrated"
    # learning-rate multiplier of the learned (log) ranges against the weights' schedule
    range_lr_scale: float = 10.0
    # what the correction is added to: the float network input, or its dequantized copy (what
    # converters.quantize and ONNX Runtime produce)
    residual: str = "float"

    @classmethod
    def from_value(cls, value) -> QatOptions:
        if isinstance(value, str):
            value = {"target": value}
        if not isinstance(value, dict):
            raise InputError(f"config key 'qat' must be an object like {{\"target\": \"cpu\"}}, got {value!r}")
        known = list(cls.__dataclass_fields__)
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise InputError(f"unknown keys {unknown} in the config's 'qat'; known: {known}")
        opts = cls(**value)
        if opts.target not in TARGETS:
            raise InputError(f"qat target {opts.target!r} is not one of {', '.join(TARGETS)}; use cpu for ONNX "
                             f"Runtime, tensorrt for TensorRT")
        n = opts.calibration_batches
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"qat calibration_batches must be an integer >= 1, got {n!r}")
        rng = opts.calibration_iso_range
        if rng is not None:
            ok = isinstance(rng, (list, tuple)) and len(rng) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in rng) and rng[0] <= rng[1]
            if not ok:
                raise InputError(f"qat calibration_iso_range must be [low, high] with 0 < low <= high, got {rng!r}")
            opts.calibration_iso_range = (float(rng[0]), float(rng[1]))
        if opts.scales not in SCALES:
            raise InputError(f"qat scales {opts.scales!r} is not one of {', '.join(SCALES)}")
        lrs = opts.range_lr_scale
        if not isinstance(lrs, (int, float)) or isinstance(lrs, bool) or not lrs > 0:
            raise InputError(f"qat range_lr_scale must be a number > 0, got {lrs!r}")
        if opts.residual not in RESIDUALS:
            raise InputError(f"qat residual {opts.residual!r} is not one of {', '.join(RESIDUALS)}")
        return opts


# ---- the arithmetic of QuantizeLinear -> DequantizeLinear ---------------------------------------
def act_qparams(rmin: float, rmax: float, target: Target) -> tuple[np.float32, int]:
    """(scale, zero point) of an activation range, computed as ONNX Runtime's quantizer does
    (range widened to hold 0, float64 arithmetic, scale stored as float32)."""
    rmin = min(float(np.float32(rmin)), 0.0)
    rmax = max(float(np.float32(rmax)), 0.0)
    qmin, qmax = target.act_min, target.act_max
    if target.act_symmetric:
        amax = max(-rmin, rmax)
        rmin, rmax, qmin, qmax = -amax, amax, -127, 127
    scale = (rmax - rmin) / (qmax - qmin)
    if scale < np.finfo(np.float32).tiny:
        return np.float32(1.0), 0
    zero = 0 if target.act_symmetric else int(np.round(qmin - rmin / scale))
    return np.float32(scale), zero


def _torch():
    try:
        import torch
    except ImportError:
        raise missing("torch", "torch", "quantization-aware training") from None
    return torch


torch = _torch()
nn = torch.nn


class _RoundClamp(torch.autograd.Function):
    """QuantizeLinear then DequantizeLinear in float32; straight-through gradient inside the range."""

    @staticmethod
    def forward(ctx, x, scale, zero, qmin: int, qmax: int):
        q = torch.round(x / scale) + zero
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (q.clamp(qmin, qmax) - zero) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quant(x, scale, zero, qmin: int, qmax: int):
    """`x` through QuantizeLinear/DequantizeLinear with broadcastable float32 `scale` and `zero`."""
    return _RoundClamp.apply(x, scale, zero, qmin, qmax)


def weight_scales(w, axis: int, qmax: int):
    """Per-channel symmetric scales max|w| / qmax (float64 then float32, 1 for an all-zero channel)."""
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.detach().abs().amax(dim=dims).double()
    scale = (2 * amax / (2 * qmax)).float()
    return torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)


def weight_ints(w, scale, axis: int, qmax: int):
    """The INT8 weights DequantizeLinear reads (what QuantizeLinear makes of the float weights)."""
    shape = [1] * w.dim()
    shape[axis] = -1
    return (torch.round(w.detach() / scale.view(shape))).clamp(-qmax, qmax)


def bias_ints(b, scale):
    """int32 bias at `scale` = input scale * weight scale, rounded in float64 as ONNX Runtime does."""
    return torch.round(b.detach().double() / scale.double()).clamp(*INT32)


class _LearnedRange(torch.autograd.Function):
    """Fake quantization whose range [lo, hi] is trained (LSQ-style gradients).

    The forward is QuantizeLinear/DequantizeLinear with ORT's scale and zero point for [lo, hi]
    (`act_qparams`), so the exported file computes exactly this. Backward: straight-through for x
    inside the range; for the range, d y / d scale is round(x/s) - x/s inside and the end value
    outside, as in LSQ, carried to lo and hi through scale = (hi - lo) / levels.
    """

    @staticmethod
    def forward(ctx, x, lo, hi, target: Target):
        scale, zero = act_qparams(float(lo), float(hi), target)
        s = torch.tensor(scale, device=x.device)
        u = x / s
        r = torch.round(u)
        q = r + zero
        below, above = q < target.act_min, q > target.act_max
        ctx.target = target
        ctx.save_for_backward(r - u, below, above)
        return (q.clamp(target.act_min, target.act_max) - zero) * s

    @staticmethod
    def backward(ctx, grad):
        frac, below, above = ctx.saved_tensors
        t = ctx.target
        inside = ~(below | above)
        gx = grad * inside
        if t.act_symmetric:
            # amax = hi: y = s * clamp(round(x / s)), s = amax / 127
            ds = torch.where(inside, frac, torch.where(below, float(t.act_min), float(t.act_max)))
            return gx, None, (grad * ds).sum() / 127, None
        levels = t.act_max - t.act_min
        g_in = (grad * frac * inside).sum() / levels
        return gx, -g_in + (grad * below).sum(), g_in + (grad * above).sum(), None


class ActQuant(nn.Module):
    """Per-tensor activation fake quantizer: observes min/max while calibrating, then either
    frozen there or (`learn`) trained from there, log-parameterised so that Adam moves it by
    relative steps."""

    def __init__(self, target: Target, learn: bool = False):
        super().__init__()
        self.target = target
        self.learn = learn
        self.mode = "float"       # float | calibrate | quant | export
        self.register_buffer("rmin", torch.tensor(math.inf))
        self.register_buffer("rmax", torch.tensor(-math.inf))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        if learn:
            # log max (symmetric: log max|x|) and log |min|; set from the calibration
            self.log_hi = nn.Parameter(torch.tensor(0.0))
            if not target.act_symmetric:
                self.log_lo = nn.Parameter(torch.tensor(0.0))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.rmin)) and bool(torch.isfinite(self.rmax))

    def range(self):
        """The current range (lo, hi) as tensors: learned, or the calibrated min/max."""
        if not self.learn:
            return self.rmin, self.rmax
        hi = torch.exp(self.log_hi)
        lo = -hi if self.target.act_symmetric else -torch.exp(self.log_lo)
        return lo, hi

    def freeze(self) -> None:
        """Scale and zero point from the current range (ORT's formula)."""
        lo, hi = self.range()
        scale, zero = act_qparams(float(lo.detach()), float(hi.detach()), self.target)
        self.scale.fill_(float(scale))
        self.zero_point.fill_(zero)

    def start_from_calibration(self) -> None:
        lo, hi = min(float(self.rmin), 0.0), max(float(self.rmax), 0.0)
        if self.learn:
            tiny = 1e-6 * max(hi, -lo, 1e-12)
            with torch.no_grad():
                if self.target.act_symmetric:
                    self.log_hi.fill_(math.log(max(hi, -lo, 1e-12)))
                else:
                    self.log_hi.fill_(math.log(max(hi, tiny)))
                    self.log_lo.fill_(math.log(max(-lo, tiny)))
        self.freeze()

    def forward(self, x):
        if self.mode == "float":
            return x
        if self.mode == "calibrate":
            self.rmin.copy_(torch.minimum(self.rmin, x.detach().min()))
            self.rmax.copy_(torch.maximum(self.rmax, x.detach().max()))
            return x
        t = self.target
        if self.mode == "export":
            # traced into QuantizeLinear/DequantizeLinear with these very scale and zero point
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, t.act_min, t.act_max)
        if self.learn:
            lo, hi = self.range()
            self.freeze()   # keeps the buffers (checkpoint, export, bias scales) in step with the range
            return _LearnedRange.apply(x, lo, hi, t)
        return fake_quant(x, self.scale, self.zero_point.float(), t.act_min, t.act_max)


def _key(path: str) -> str:
    return path.replace(".", "_")


class QuantUNet(nn.Module):
    """The zoo UNet with fake quantization at the places ORT's QDQ quantizer puts it.

    It shares the float UNet's parameters (the optimizer trains those) and adds one ActQuant per
    quantized activation, named after the module whose output it quantizes ('input' for the
    network input, 'cat.k' for the k-th concat).
    """

    def __init__(self, net, target: str = "cpu", residual: str = "float", learn_ranges: bool = False):
        super().__init__()
        if type(net).__name__ != "UNet" or not hasattr(net, "down"):
            raise InputError(f"quantization-aware training supports the zoo UNet (arch 'unet'); got "
                             f"{type(net).__name__}: train a UNet or quantize this model with converters.quantize")
        self.net = net
        self.target_name = target
        self.target = TARGETS[target]
        self.residual = residual
        self.learn_ranges = learn_ranges
        self.q = nn.ModuleDict()
        self._add("input")
        for prefix, blocks in (("down", net.down), ("dec", net.dec)):
            for i, block in enumerate(blocks):
                self._add_block(f"{prefix}.{i}", block)
        self._add_block("bottom", net.bottom)
        for k in range(len(net.up)):
            self._add(f"up.{k}")
            self._add(f"cat.{k}")
        self._add("head")
        self.mode = "float"
        self._record: dict[int, dict] | None = None
        self.export_constants: dict[int, dict] | None = None

    def _add(self, name: str) -> None:
        self.q[_key(name)] = ActQuant(self.target, self.learn_ranges)

    def _add_block(self, prefix: str, block) -> None:
        for j, layer in enumerate(block):
            if isinstance(layer, (nn.Conv2d, nn.LeakyReLU)):
                self._add(f"{prefix}.{j}")
            else:
                raise InputError(f"UNet block {prefix} holds a {type(layer).__name__}; QAT knows Conv2d and LeakyReLU")

    def quantizer(self, name: str) -> ActQuant:
        return self.q[_key(name)]

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        for m in self.q.values():
            m.mode = mode

    # ---- layers ------------------------------------------------------------------------------
    def conv_layers(self) -> list[tuple[str, Any]]:
        """(name, module) of every convolution in the order forward runs them (and ONNX lists them)."""
        net = self.net
        out = []
        for i, block in enumerate(net.down):
            out += [(f"down.{i}.{j}", m) for j, m in enumerate(block) if isinstance(m, nn.Conv2d)]
        out += [(f"bottom.{j}", m) for j, m in enumerate(net.bottom) if isinstance(m, nn.Conv2d)]
        for k, block in enumerate(net.dec):
            out.append((f"up.{k}", net.up[k]))
            out += [(f"dec.{k}.{j}", m) for j, m in enumerate(block) if isinstance(m, nn.Conv2d)]
        out.append(("head", net.head))
        return out

    def quantized_params(self, conv, in_q: ActQuant):
        """(weight, bias, parts): the fake-quantized weight and bias the convolution computes with,
        and the weight scales, integer biases and bias scales the export writes."""
        transposed = isinstance(conv, nn.ConvTranspose2d)
        axis = 1 if transposed else 0
        qmax = self.target.weight_qmax
        w, b = conv.weight, conv.bias
        s_w = weight_scales(w, axis, qmax)
        shape = [1] * w.dim()
        shape[axis] = -1
        wq = fake_quant(w, s_w.view(shape), torch.zeros((), device=w.device), -qmax, qmax)
        parts = {"weight_scale": s_w, "axis": axis}
        if b is not None and self.target.quantize_bias:
            s_b = in_q.scale * s_w
            q_b = bias_ints(b, s_b)
            parts.update(bias_scale=s_b, bias_int=q_b)
            # straight-through: the bias moves, its rounding is not differentiated
            b = b + (q_b.float() * s_b - b).detach()
        return wq, b, parts

    def _conv(self, conv, x, in_q: ActQuant):
        import torch.nn.functional as F

        if self.mode in ("float", "calibrate"):
            return conv(x)
        if self.mode == "export":
            c = self.export_constants[id(conv)]
            w = torch.fake_quantize_per_channel_affine(conv.weight, c["weight_scale"], c["weight_zero"], c["axis"],
                                                       -128, 127)
            b = c["bias"]
        else:
            w, b, parts = self.quantized_params(conv, in_q)
            if self._record is not None:
                self._record[id(conv)] = {**parts, "bias": None if b is None else b.detach().clone()}
        if isinstance(conv, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, w, b, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                      conv.dilation)
        return conv._conv_forward(x, w, b)

    def _block(self, prefix: str, block, y, in_q: ActQuant):
        for j, layer in enumerate(block):
            out_q = self.quantizer(f"{prefix}.{j}")
            y = out_q(self._conv(layer, y, in_q) if isinstance(layer, nn.Conv2d) else layer(y))
            in_q = out_q
        return y, in_q

    def forward(self, x):
        net = self.net
        in_q = self.quantizer("input")
        xq = in_q(x)
        y, skips = xq, []
        for i, block in enumerate(net.down):
            y, in_q = self._block(f"down.{i}", block, y, in_q)
            skips.append((y, in_q))
            # max-pool keeps its input's scale and zero point (ORT requantizes it with them)
            y = in_q(net.pool(y))
        y, in_q = self._block("bottom", net.bottom, y, in_q)
        for k, (up, dec, (skip, _)) in enumerate(zip(net.up, net.dec, reversed(skips))):
            up_q, cat_q = self.quantizer(f"up.{k}"), self.quantizer(f"cat.{k}")
            y = cat_q(torch.cat([up_q(self._conv(up, y, in_q)), skip], dim=1))
            y, in_q = self._block(f"dec.{k}", dec, y, cat_q)
        y = self.quantizer("head")(self._conv(net.head, y, in_q))
        if net.residual:
            base = xq if self.residual == "dequantized" else x
            y = y + base[:, : net.out_channels]
        return y

    # ---- calibration ---------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        return all(m.calibrated for m in self.q.values())

    def calibrate(self, batches) -> None:
        """Activation ranges = min/max over `batches` (network inputs) of the FP32 network, frozen."""
        for m in self.q.values():
            m.rmin.fill_(math.inf)
            m.rmax.fill_(-math.inf)
        self.set_mode("calibrate")
        with torch.no_grad():
            for x in batches:
                self(x)
        for m in self.q.values():
            if not m.calibrated:
                raise InputError("calibration saw no data; give calibration_batches >= 1")
            m.start_from_calibration()
        self.set_mode("quant")

    def range_parameters(self) -> list:
        return [p for m in self.q.values() if m.learn for p in m.parameters()]

    def weight_parameters(self) -> list:
        return list(self.net.parameters())

    def scale_table(self) -> dict[str, dict[str, float]]:
        """Every activation quantizer's frozen parameters (for the manifest and the tests)."""
        table = {}
        for k, m in self.q.items():
            lo, hi = m.range()
            table[k.replace("_", ".")] = {"scale": float(m.scale), "zero_point": int(m.zero_point),
                                          "calibrated": [float(m.rmin), float(m.rmax)],
                                          "range": [float(lo.detach()), float(hi.detach())]}
        return table


# ---- export -----------------------------------------------------------------------------------------
def _onnx():
    try:
        import onnx
    except ImportError:
        raise missing("onnx", "onnx", "exporting the INT8 model") from None
    return onnx


def _record_constants(qmodel: QuantUNet, example) -> list[tuple[str, Any, dict]]:
    """(name, conv, constants) in forward order: weight scales, integer weights and biases as the
    fake-quantized forward uses them now."""
    qmodel.set_mode("quant")
    qmodel._record = {}
    try:
        with torch.no_grad():
            qmodel(example)
        record = qmodel._record
    finally:
        qmodel._record = None
    out = []
    for name, conv in qmodel.conv_layers():
        r = dict(record[id(conv)])
        r["weight_int"] = weight_ints(conv.weight, r["weight_scale"], r["axis"], qmodel.target.weight_qmax)
        r["weight_zero"] = torch.zeros(r["weight_scale"].numel(), dtype=torch.int32)
        out.append((name, conv, r))
    return out


def _trace(qmodel: QuantUNet, example, constants) -> bytes:
    qmodel.export_constants = {id(conv): c for _, conv, c in constants}
    qmodel.set_mode("export")
    buf = io.BytesIO()
    axes = {"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(qmodel, (example,), buf, input_names=["input"], output_names=["output"],
                              opset_version=OPSET, dynamic_axes=axes, dynamo=False, do_constant_folding=True)
    except Exception as e:  # noqa: BLE001  the exporter raises many types
        raise ConversionError(f"the TorchScript exporter cannot export the fake-quantized UNet: "
                              f"{str(e).splitlines()[0][:300]}") from None
    finally:
        qmodel.export_constants = None
        qmodel.set_mode("quant")
    return buf.getvalue()


def _constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by name; Constant nodes become initializers."""
    onnx = _onnx()
    from onnx import numpy_helper

    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = onnx.helper.get_attribute_value(node.attribute[0])
        tensor = numpy_helper.from_array(numpy_helper.to_array(value), node.output[0])
        graph.initializer.append(tensor)
        graph.node.remove(node)
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _fold_constant_nodes(model) -> None:
    """Cast and Identity of constants -> initializers: every zero point becomes an int8/uint8
    initializer, as TensorRT and converters.onnx_model.zero_points_are_zero read them (the
    exporter casts int32 zero points and shares equal constants through Identity nodes)."""
    from onnx import helper, numpy_helper

    values = _constants(model)
    for node in [n for n in model.graph.node if n.op_type in ("Cast", "Identity") and n.input[0] in values]:
        value = values[node.input[0]]
        if node.op_type == "Cast":
            value = value.astype(helper.tensor_dtype_to_np_dtype(helper.get_attribute_value(node.attribute[0])))
        model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        model.graph.node.remove(node)


def _set_initializer(model, name: str, array: np.ndarray) -> None:
    from onnx import numpy_helper

    graph = model.graph
    for t in list(graph.initializer):
        if t.name == name:
            graph.initializer.remove(t)
    graph.initializer.append(numpy_helper.from_array(array, name))


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)


def _fold_weights(model, constants: list, qmax: int) -> None:
    """QuantizeLinear(constant float weight) -> an INT8 initializer read by the DequantizeLinear
    (ORT fuses DequantizeLinear(int8 initializer) -> Conv into its integer kernels)."""
    values = _constants(model)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    if len(convs) != len(constants):
        raise ConversionError(f"the exported graph has {len(convs)} convolutions, the network {len(constants)}")
    for node, (name, conv, c) in zip(convs, constants):
        dq = producer.get(node.input[1])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in values:
            raise ConversionError(f"the weight of {name} does not reach its convolution through "
                                  f"QuantizeLinear/DequantizeLinear in the exported graph")
        w, scale = values[q.input[0]], values[q.input[1]]
        want = c["weight_int"].numpy()
        if w.shape != want.shape or not np.array_equal(scale, c["weight_scale"].numpy()):
            raise ConversionError(f"the exported weight of {name} is not the trained one")
        shape = [1] * w.ndim
        shape[c["axis"]] = -1
        ints = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax)
        if not np.array_equal(ints, want):
            raise ConversionError(f"the INT8 weights of {name} differ from the fake-quantized ones")
        int_name = f"{name}.weight_quantized"
        _set_initializer(model, int_name, ints.astype(np.int8))
        dq.input[0] = int_name
        graph.node.remove(q)


def _quantize_biases(model, constants: list) -> None:
    """Float bias -> DequantizeLinear(int32, input scale x weight scale), as ORT's QDQ quantizer writes it."""
    from onnx import helper

    values = _constants(model)
    graph = model.graph
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    for node, (name, conv, c) in zip(convs, constants):
        if len(node.input) < 3 or not node.input[2]:
            continue
        bias = values[node.input[2]]
        ints, scale = c["bias_int"].numpy().astype(np.int32), c["bias_scale"].numpy().astype(np.float32)
        if not np.array_equal(ints.astype(np.float32) * scale, bias):
            raise ConversionError(f"the exported bias of {name} is not the fake-quantized one")
        base = f"{name}.bias_quantized"
        _set_initializer(model, base, ints)
        _set_initializer(model, base + "_scale", scale)
        _set_initializer(model, base + "_zero_point", np.zeros_like(ints))
        out = base + "_dequantized"
        graph.node.insert(list(graph.node).index(node), helper.make_node(
            "DequantizeLinear", [base, base + "_scale", base + "_zero_point"], [out], name=base + "_DequantizeLinear",
            axis=0))
        node.input[2] = out


def export_qdq(qmodel: QuantUNet, spec):
    """The Q/DQ ONNX model (dynamic N/H/W) of `qmodel` with its frozen scales and zero points."""
    onnx = _onnx()
    if not qmodel.calibrated:
        raise InputError("the network is not calibrated yet; run the calibration before exporting")
    was_training = qmodel.training
    qmodel.eval()
    try:
        m = spec.multiple
        example = torch.rand(1, spec.in_channels, 2 * m, 3 * m, device=next(qmodel.parameters()).device)
        constants = _record_constants(qmodel, example)
        model = onnx.load_from_string(_trace(qmodel, example, constants))
    finally:
        qmodel.train(was_training)
    constants = [(n, c, {k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in d.items()}) for n, c, d in constants]
    _fold_constant_nodes(model)
    _fold_weights(model, constants, qmodel.target.weight_qmax)
    if qmodel.target.quantize_bias:
        _quantize_biases(model, constants)
    _drop_unused_initializers(model)
    onnx.checker.check_model(model)
    return model


# ---- the training run -------------------------------------------------------------------------------
class QatTrainer(Trainer):
    """A tools.train run that fine-tunes the config's `init` with fake quantization and writes
    RUN_DIR/model.int8.onnx. Same data, loss, k-sigma domain, schedule and checkpoints."""

    def __init__(self, cfg, run_dir, *, device: str | None = None, log=print):
        self.qat = QatOptions.from_value(cfg.qat)
        if not cfg.init:
            raise InputError("quantization-aware training fine-tunes a trained FP32 model; set the config's 'init' to "
                             "its .pt artifact (e.g. rawdenoise/models/default.pt)")
        super().__init__(cfg, run_dir, device=device, log=log)
        import copy

        from rawdenoise.spec import ModelSpec
        from rawdenoise.zoo.artifact import read

        self.init_spec = ModelSpec.from_dict(read(cfg.init)["spec"])
        self.fp32 = copy.deepcopy(self.model).eval()      # the init weights: the FP32 reference
        for p in self.fp32.parameters():
            p.requires_grad_(False)
        self.qmodel = QuantUNet(self.model, self.qat.target, self.qat.residual,
                                learn_ranges=self.qat.scales == "learned").to(self.device)
        self.model = self.qmodel
        groups = [{"params": self.qmodel.weight_parameters()}]
        if self.qmodel.learn_ranges:
            groups.append({"params": self.qmodel.range_parameters(), "lr_scale": float(self.qat.range_lr_scale)})
        self.opt = torch.optim.Adam(groups, lr=cfg.lr)

    @property
    def calibration_iso_range(self) -> tuple[float, float]:
        if self.qat.calibration_iso_range:
            return self.qat.calibration_iso_range
        lo, hi = self.cfg.iso_range
        return max(lo, hi / 2 ** CALIBRATION_STOPS), hi

    @property
    def calibration_isos(self) -> np.ndarray:
        return np.geomspace(*self.calibration_iso_range, self.qat.calibration_batches)

    def calibration_inputs(self):
        """Network inputs of `calibration_batches` training batches, batch i at the i-th of ISOs
        log-spaced over the calibration range (so both ends are in)."""
        for i, iso in enumerate(self.calibration_isos):
            _, noisy, isos = self.data.batch(i, self.cfg.batch, iso=float(iso))
            gain, offset = self.affine(isos)
            g = torch.from_numpy(gain).to(self.device)[:, None, None, None]
            o = torch.from_numpy(offset).to(self.device)[:, None, None, None]
            yield torch.from_numpy(noisy).to(self.device) * g + o

    def run(self, *, resume: bool = True, until: int | None = None):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.resume():
            self.log(f"resumed at step {self.step}")
        if not self.qmodel.calibrated:
            self.qmodel.calibrate(self.calibration_inputs())
            self.log(json.dumps({"calibrated": len(self.calibration_isos), "val_psnr": self.validate()}))
        self.qmodel.set_mode("quant")
        return super().run(resume=False, until=until)

    def _validate_with(self, model) -> dict[str, float]:
        saved, self.model = self.model, model
        try:
            return self.validate()
        finally:
            self.model = saved

    def start_model(self) -> QuantUNet:
        """The init weights with the calibrated ranges: where the fine-tuning started (PTQ)."""
        import copy

        start = QuantUNet(copy.deepcopy(self.fp32), self.qat.target, self.qat.residual).to(self.device)
        for name, m in start.q.items():
            src = self.qmodel.q[name]
            m.rmin.copy_(src.rmin)
            m.rmax.copy_(src.rmax)
            m.start_from_calibration()
        start.set_mode("quant")
        return start

    def export(self) -> Path:
        """Write RUN_DIR/model.int8.onnx: the Q/DQ model with the trained scales, and its manifest."""
        from converters.onnx_model import embed_spec, zero_points_are_zero

        cfg, q = self.cfg, self.qat
        val = {"fp32": self._validate_with(self.fp32), "start": self._validate_with(self.start_model()),
               "qat": self.validate()}
        lo, hi = self.calibration_iso_range
        how = (f"activation ranges: min/max of the FP32 network over {q.calibration_batches} training batches of "
               f"{cfg.batch} at ISOs log-spaced over {lo:g}-{hi:g}, then "
               + ("trained with the weights (LSQ-style gradients on log |min| and log max, learning rate x "
                  f"{q.range_lr_scale:g})" if self.qmodel.learn_ranges else "frozen")
               + "; weight scales max|w| per output channel of the final weights; scale and zero point from a range "
                 "as ONNX Runtime's quantizer computes them")
        notes = {
            "target": q.target,
            "format": self.qmodel.target.describe,
            "trained": (f"tools.qat: {cfg.steps} steps of quantization-aware fine-tuning of {Path(cfg.init).name} "
                        f"(Adam, lr {cfg.lr}, cosine to {cfg.min_lr}, L1 in the k-sigma domain, ISO log-uniform in "
                        f"{cfg.iso_range[0]:g}-{cfg.iso_range[1]:g}, seed {cfg.seed}); fake quantization equal to "
                        f"this file's QuantizeLinear/DequantizeLinear arithmetic"),
            "scales": how,
            "residual": ("the correction is added in float to the float network input" if q.residual == "float" else
                         "the correction is added in float to the dequantized network input"),
            "init": self.init_notes,
            "val_psnr": {**val, "isos": list(cfg.val_isos),
                         "about": "validation patches, dB: fp32 = the init model, start = its fake-quantized copy "
                                  "with the calibrated ranges (post-training quantization), qat = this file"},
            "ranges": self.qmodel.scale_table(),
            "config": json.loads(json.dumps(asdict(cfg))),
        }
        spec = self.init_spec.replace(precision="int8", notes={**(self.init_spec.notes or {}), "qat": notes})
        self.qmodel.to("cpu")
        try:
            model = export_qdq(self.qmodel, spec)
        finally:
            self.qmodel.to(self.device)
        if q.target == "tensorrt" and not zero_points_are_zero(model):
            raise ConversionError("the tensorrt model has a non-zero zero point; this is a bug in tools.qat")
        embed_spec(model, spec)
        path = self.run_dir / "model.int8.onnx"
        with atomic_output(path) as tmp:
            tmp.write_bytes(model.SerializeToString())
        self.log(json.dumps({"wrote": str(path), "val_psnr": val}))
        return path
