"""Tiling geometry of an arbitrary ONNX network, read from the graph: size multiple and
receptive-field radius.

Every tensor computed from the image carries, per spatial axis (H and W), a periodic map from
its index j to the span [lo(j), hi(j)] of network-input pixels it depends on; each op composes
that map with its own index map (a conv window, a transposed-conv phase, a resize's sampling
position...). Spans are exact hulls and are enumerated over one period of the index map, so
left and right extents and every stride phase stay separate. Which tensor axis is H and which
is W comes from the tensor shapes at three concrete input sizes, so transposes and reshapes
(NHWC graphs, reshape-based pixel shuffles) need no special cases. Channel ranges joined by a
concat keep their own spans through slices, splits and per-channel ops, so the channel halves of
coupling blocks (invertible networks) are not all given the widest span.

Ops whose output depends on the whole frame or on its size (global pooling, attention, frame
statistics, align_corners resizes, data-dependent sampling) make the radius unbounded, with the
op named; so does any op the analysis does not know.

`probe_radius` measures the same radius by perturbing the input in ONNX Runtime; the two are
independent, and the static one is the upper bound.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from fractions import Fraction
from itertools import accumulate
from operator import mul
from pathlib import Path

import numpy as np

from rawdenoise.errors import ConversionError, missing


@dataclass(frozen=True)
class GraphGeometry:
    """What tiling needs to know about a network, in network-input pixels."""

    multiple: int
    receptive_radius: int | None      # None: unbounded
    unbounded_by: str | None          # why the radius is unbounded
    stride_ops: tuple[str, ...]       # the ops that set `multiple`


# ---- spans: which input pixels an index of a tensor axis depends on -----------------------

@dataclass(frozen=True)
class _Span:
    """Index j of an axis depends on input pixels [lo(j), hi(j)].

    `lo`/`hi` hold one period (indices 0..P-1, None: no input pixel); index j + P depends on
    the span of j moved by P * stride pixels.
    """

    stride: Fraction
    lo: tuple
    hi: tuple

    def at(self, j: int):
        q, r = divmod(j, len(self.lo))
        move = q * len(self.lo) * self.stride
        lo, hi = self.lo[r], self.hi[r]
        return (None, None) if lo is None else (lo + int(move), hi + int(move))

    def reduced(self) -> "_Span":
        p = len(self.lo)
        for d in range(1, p):
            move = d * self.stride
            if p % d or move.denominator != 1:
                continue
            if all(self.at(i + d) == _moved(self.at(i), int(move)) for i in range(p - d)):
                return _Span(self.stride, self.lo[:d], self.hi[:d])
        return self


def _moved(span, k):
    return span if span[0] is None else (span[0] + k, span[1] + k)


def _input_span(stride: int) -> _Span:
    # a map at 1/stride resolution: its pixel j stands for image pixels [stride*j, stride*j + stride)
    return _Span(Fraction(stride), (0,), (stride - 1,))


def _nominal(stride: Fraction) -> _Span:
    """A placeholder with the right stride, for tensors whose span is not analysed (unbounded)."""
    at = tuple(math.floor(r * stride) for r in range(stride.denominator))
    return _Span(stride, at, at)


@dataclass(frozen=True)
class _IndexMap:
    """An op along one axis: output index n*period + r reads input indices n*advance + w, w in windows[r]."""

    period: int
    advance: int
    windows: tuple


def _compose(span: _Span, op: _IndexMap) -> _Span:
    p = len(span.lo)
    reps = p // math.gcd(op.advance, p)   # output periods until the input phase repeats
    lo, hi = [], []
    for i in range(op.period * reps):
        n, r = divmod(i, op.period)
        spans = [span.at(n * op.advance + w) for w in op.windows[r]]
        spans = [s for s in spans if s[0] is not None]
        lo.append(min(s[0] for s in spans) if spans else None)
        hi.append(max(s[1] for s in spans) if spans else None)
    return _Span(span.stride * op.advance / op.period, tuple(lo), tuple(hi)).reduced()


def _empty(stride: Fraction) -> _Span:
    """The span of a constant: no input pixel."""
    return _Span(stride, (None,) * stride.denominator, (None,) * stride.denominator)


def _union(spans) -> _Span | None:
    """Hull of several spans of one axis (branches that meet); None if their strides differ."""
    spans = list(spans)
    if len({s.stride for s in spans}) != 1:
        return None
    p = math.lcm(*(len(s.lo) for s in spans))
    lo, hi = [], []
    for j in range(p):
        got = [s.at(j) for s in spans]
        got = [g for g in got if g[0] is not None]
        lo.append(min(g[0] for g in got) if got else None)
        hi.append(max(g[1] for g in got) if got else None)
    return _Span(spans[0].stride, tuple(lo), tuple(hi)).reduced()


def _window(kernel: int, stride: int, dilation: int, pad_begin: int) -> _IndexMap:
    return _IndexMap(1, stride, (tuple(k * dilation - pad_begin for k in range(kernel)),))


def _transposed_window(kernel: int, stride: int, dilation: int, pad_begin: int) -> _IndexMap:
    # output o = i * stride + k * dilation - pad_begin: each output phase meets its own taps
    return _IndexMap(stride, 1, tuple(
        tuple((r + pad_begin - k * dilation) // stride for k in range(kernel)
              if (r + pad_begin - k * dilation) % stride == 0)
        for r in range(stride)))


def _shift(offset: int, step: int = 1) -> _IndexMap:
    return _IndexMap(1, step, ((offset,),))


def _regroup(inner_in: int, inner_out: int) -> _IndexMap:
    """A reshape of (H, inner_in) into (H', inner_out): output o covers flat positions
    [o*inner_out, (o+1)*inner_out) of input rows inner_in long."""
    ratio = Fraction(inner_out, inner_in)
    p, q = ratio.numerator, ratio.denominator
    return _IndexMap(q, p, tuple(
        tuple(range(r * inner_out // inner_in, (r * inner_out + inner_out - 1) // inner_in + 1))
        for r in range(q)))


# ---- loading --------------------------------------------------------------------------------

def _onnx():
    try:
        import onnx
    except ImportError:
        raise missing("onnx", "onnx", "ONNX graph analysis") from None
    return onnx


def _load(model):
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as e:  # protobuf raises its own DecodeError
            raise ConversionError(f"the model bytes are not a readable ONNX model ({str(e)[:120]}); "
                                  f"pass an onnx.ModelProto, the bytes of a .onnx file or its path") from None
    elif isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise ConversionError(f"ONNX model {path} does not exist; pass the path of a .onnx file")
        try:
            proto = onnx.load(str(path))
        except Exception as e:
            raise ConversionError(f"{path} is not a readable ONNX model ({str(e)[:120]}); "
                                  f"re-export it or check that the file is complete") from None
    else:
        raise ConversionError(f"model must be an onnx.ModelProto, bytes or a path, got {type(model).__name__}")
    if not proto.graph.node:
        raise ConversionError("the ONNX model has no nodes; pass the exported network's .onnx file")
    return proto


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _who(node) -> str:
    return f"{node.op_type} (node '{node.name or node.output[0]}')"


def _node_inputs(node) -> list[str]:
    """Inputs, plus the outer-scope names its subgraphs (If/Loop/Scan bodies) read."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            produced = {o for n in g.node for o in n.output}
            produced |= {i.name for i in g.input} | {t.name for t in g.initializer}
            names += [i for n in g.node for i in _node_inputs(n) if i not in produced]
    return names


# ops whose output depends on the shape of a tensor, never on its values
_SHAPE_OPS = {"Shape", "Size", "EyeLike", "RandomNormalLike", "RandomUniformLike"}

# Input sizes (H, W) = factors x unit: H and W never coincide, the second size differs from the
# first in H only, the third in W only; _BIG is divisible by every plausible stride, so strided
# sizes stay exact and a size ratio is the stride itself
_SIZE_FACTORS = ((13, 17), (19, 17), (13, 23))
_BIG = 2**10 * 3**2 * 5 * 7
_EVAL_LIMIT = 1 << 20   # the constant evaluator refuses tensors larger than this
_FALLBACK_ELEMENTS = 1 << 28   # the ONNX Runtime fallback keeps every tensor: at most ~1 GiB of float32


class _NoValue(Exception):
    """A constant tensor's value cannot be computed (it depends on image values, or is too large)."""


@dataclass
class _Data:
    spans: dict                      # 'H'/'W' -> _Span, the hull over the whole tensor
    unbounded: str | None = None
    # (axis, ((stop, spans), ...)): spans of consecutive ranges along a channel-like axis, kept
    # through concat / slice / split so that coupling blocks (x1, x2 = split(x); concat(...)) of
    # invertible networks do not give every channel the widest span
    parts: tuple | None = None


@dataclass
class _Inputs:
    image: str
    strides: dict                    # spatial input name -> int stride (the image: 1)
    shapes: dict                     # every input's declared dims (None: symbolic)

    def fixed_size_hint(self) -> str:
        """A pointer to the likely cause when the model will not follow other sizes."""
        h, w = self.shapes[self.image][2:]
        if h is None or w is None:
            return ""
        return f" (the model was exported for a fixed {h}x{w} input: export it with dynamic H and W)"


def _image_input(names, described: dict, image_input, what: str, how: str) -> str:
    """The image input among the model's input `names`: `image_input`, or the one input `described`
    (a dict named `what` mapping the other inputs to how they are fed; `how` says what to give)
    does not name."""
    for name in described:
        if name not in names:
            raise ConversionError(f"{what} names {name!r}, which is not an input of the model "
                                  f"(inputs: {', '.join(names)}); use one of those names")
    if image_input is None:
        rest = [n for n in names if n not in described]
        if len(rest) != 1:
            raise ConversionError(f"the model has inputs {', '.join(names)}; name the image with image_input=... "
                                  f"and {how}")
        image_input = rest[0]
    if image_input not in names:
        raise ConversionError(f"image_input {image_input!r} is not an input of the model "
                              f"(inputs: {', '.join(names)}); pass one of those names")
    return image_input


def _resolve_inputs(proto, image_input, input_strides) -> _Inputs:
    inits = {t.name for t in proto.graph.initializer}
    graph_inputs = {i.name: i for i in proto.graph.input if i.name not in inits}
    input_strides = dict(input_strides or {})
    image_input = _image_input(list(graph_inputs), input_strides, image_input, "input_strides",
                               "give every other input's stride in input_strides (an int for a spatial map, "
                               "None for a vector)")
    unlisted = [n for n in graph_inputs if n != image_input and n not in input_strides]
    if unlisted:
        raise ConversionError(f"the model's inputs {', '.join(unlisted)} are neither the image nor in input_strides; "
                              f"give each one's stride (an int for a spatial map, None for a per-image vector)")
    strides = {image_input: 1}
    for name, s in input_strides.items():
        if name == image_input or s is None:   # None: a per-image vector, a constant here
            continue
        if isinstance(s, int) and not isinstance(s, bool) and s >= 1:
            strides[name] = s
        else:
            raise ConversionError(f"input_strides[{name!r}] is {s!r}; use a positive int (a spatial map at "
                                  f"1/s of the image's resolution) or None (a vector with no spatial dims)")
    shapes = {}
    for name, vi in graph_inputs.items():
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if name in strides:
            if len(dims) != 4:
                raise ConversionError(f"input {name!r} has rank {len(dims)}; a spatial input must be (N, C, H, W)")
            if dims[1] is None:
                raise ConversionError(f"input {name!r} has no fixed channel count; export the model with a fixed C")
        shapes[name] = dims
    return _Inputs(image_input, strides, shapes)


# ---- shapes at concrete sizes, and values of shape-derived constants ----------------------

class _Graph:
    """The model, which of its tensors carry image data, every tensor's shape at three input
    sizes, and the values of the constants that parameterise the ops (pads, crops...)."""

    def __init__(self, proto, inputs: _Inputs):
        onnx = _onnx()
        self.proto = proto
        self.inputs = inputs
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.opsets = {o.domain or "": o.version for o in proto.opset_import}
        self.init = {t.name: t for t in proto.graph.initializer}
        self.producer = {o: n for n in proto.graph.node for o in n.output if o}
        # tensors computed from the image's (or a spatial input's) values
        self.data = set(inputs.strides)
        for node in proto.graph.node:
            if node.op_type not in _SHAPE_OPS and any(i in self.data for i in _node_inputs(node)):
                self.data.update(o for o in node.output if o)
        self.onnx = onnx
        self.exact = True
        self.stuck_at = ""
        self.sizes, self.shapes = self._infer_shapes()
        self._values = [dict() for _ in self.sizes]
        self._labels = {}

    def _input_dims(self, name, hw):
        dims = list(self.inputs.shapes[name])
        if name in self.inputs.strides:
            s = self.inputs.strides[name]
            return [dims[0] or 1, dims[1], hw[0] // s, hw[1] // s]
        return [1 if d is None else d for d in dims]

    # shapes: ONNX shape inference at huge sizes first; ONNX Runtime at small sizes if that fails
    def _infer_shapes(self):
        sizes = [(h * _BIG, w * _BIG) for h, w in _SIZE_FACTORS]
        shapes = [self._infer_at(hw) for hw in sizes]
        needed = _ancestors(self.proto, self.proto.graph.output[0].name)
        data_nodes = [n for n in self.proto.graph.node if set(n.output) & needed and set(n.input) & self.data]
        needed = {t for n in data_nodes for t in list(n.input) + list(n.output) if t}
        if all(s.get(t) is not None for s in shapes for t in needed):
            return sizes, shapes
        # for the error message, should ONNX Runtime fail too: where inference lost the shapes
        stuck = next((n for n in data_nodes if any(shapes[0].get(o) is None for o in n.output if o)), None)
        self.stuck_at = f"; shape inference stops at {_who(stuck)}" if stuck is not None else ""
        self.exact = False
        return self._run_shapes()

    def _infer_at(self, hw) -> dict:
        """Shapes of every tensor for input size hw; constants that shape inference cannot follow
        (pads or sizes computed from Shape) are evaluated and folded in, then inference reruns."""
        model = self.onnx.ModelProto()
        model.CopyFrom(self.proto)
        del model.graph.value_info[:]
        for out in model.graph.output:
            out.type.tensor_type.ClearField("shape")
        for vi in model.graph.input:
            if vi.name in self.inputs.shapes:
                dims = vi.type.tensor_type.shape.dim
                for d, v in zip(dims, self._input_dims(vi.name, hw)):
                    d.Clear()
                    d.dim_value = v
        folded = {}
        for _ in range(8):
            shapes = self._read_shapes(self._shape_inference(model))
            values = {}
            progress = False
            for node in model.graph.node:
                if not any(shapes.get(o) is None for o in node.output if o):
                    continue
                for k, name in enumerate(node.input):
                    if not name or name in self.data or name in self.init or name in folded.values():
                        continue
                    if name not in folded:
                        try:
                            v = self._evaluate(name, shapes, values)
                        except _NoValue:
                            continue
                        folded[name] = f"{name}__at_{hw[0]}x{hw[1]}"
                        model.graph.initializer.append(self.onnx.numpy_helper.from_array(np.asarray(v), folded[name]))
                    node.input[k] = folded[name]
                    progress = True
            if not progress:
                return shapes
        return shapes

    def _shape_inference(self, model):
        try:
            return self.onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception:
            return model

    def _read_shapes(self, model) -> dict:
        shapes = {}
        for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
            if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
                continue
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = tuple(d.dim_value for d in dims)
        for t in model.graph.initializer:
            shapes[t.name] = tuple(t.dims)
        return shapes

    def _run_shapes(self):
        """Fallback: run ONNX Runtime on zeros with every tensor as an output, at small sizes."""
        import onnxruntime as ort

        model = self.onnx.ModelProto()
        model.CopyFrom(self.proto)
        for vi in model.graph.input:
            if vi.name in self.inputs.strides:   # let a fixed-size export try other sizes
                for d, name in zip(vi.type.tensor_type.shape.dim[2:], ("H", "W")):
                    d.Clear()
                    d.dim_param = name
        have = {o.name for o in model.graph.output}
        for node in model.graph.node:
            for o in node.output:
                if o and o not in have:
                    model.graph.output.append(self.onnx.ValueInfoProto(name=o))
                    have.add(o)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4   # failures at a size are expected; the next size is tried
        try:
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ConversionError(f"shape inference could not follow the model and ONNX Runtime cannot load it "
                                  f"({' '.join(str(e).split())[:160]}){self.stuck_at}; give multiple and "
                                  f"receptive_radius in the spec") from None
        dtypes = {i.name: _np_dtype(i.type) for i in sess.get_inputs()}
        names = [o.name for o in sess.get_outputs()]
        error = None
        output = self.proto.graph.output[0].name
        # 48 = 16 x 3 suits most networks' multiples; 96 the deeper ones; smaller sizes only when
        # keeping every tensor at 48 would not fit in memory (a size that is not a multiple of the
        # network's may give an unbounded radius, never a wrong one)
        for unit in (48, 96, 24, 12):
            sizes = [(h * unit, w * unit) for h, w in _SIZE_FACTORS]
            # what shape inference does know tells whether every tensor fits in memory
            # (attention over positions grows with the fourth power of the size)
            known = self._infer_at(sizes[2]).values()
            if sum(math.prod(shape) for shape in known) > _FALLBACK_ELEMENTS:
                error = error or f"keeping every tensor at {sizes[2][0]}x{sizes[2][1]} would take too much memory"
                continue
            try:
                shapes = []
                for hw in sizes:
                    feeds = {n: np.zeros(self._input_dims(n, hw), dtypes[n]) for n in self.inputs.shapes}
                    outs = sess.run(names, feeds)
                    got = {n: tuple(a.shape) for n, a in zip(names, outs)}
                    got.update({n: tuple(f.shape) for n, f in feeds.items()})
                    got.update({t.name: tuple(t.dims) for t in self.proto.graph.initializer})
                    if got.get(output, ())[2:] != hw:   # a size the network does not take: try the next
                        raise ValueError(f"the first output has shape {got.get(output)} for a {hw[0]}x{hw[1]} input")
                    shapes.append(got)
                return sizes, shapes
            except Exception as e:
                error = e
        raise ConversionError(f"the model's tensor shapes could not be inferred, and ONNX Runtime fails at test sizes "
                              f"({' '.join(str(error).split())[:160]}){self.inputs.fixed_size_hint()}{self.stuck_at}; "
                              f"give multiple and receptive_radius in the spec if it cannot run at other sizes")

    # values of constants (pads, slice starts, resize sizes), computed for one config's shapes
    def value(self, name: str, cfg: int = 0):
        return self._evaluate(name, self.shapes[cfg], self._values[cfg])

    def _evaluate(self, name, shapes, cache):
        if name in cache:
            return cache[name]
        if name in self.init:
            cache[name] = self.onnx.numpy_helper.to_array(self.init[name])
            return cache[name]
        node = self.producer.get(name)
        if node is None or name in self.data:
            raise _NoValue(name)
        if node.op_type in ("Shape", "Size") and node.input[0] in shapes:
            dims = shapes[node.input[0]]
            if node.op_type == "Size":
                out = np.array(math.prod(dims), np.int64)
            else:
                start, end = _attr(node, "start", 0), _attr(node, "end", None)
                out = np.array(dims[start:end], np.int64)
            cache[name] = out
            return out
        args = [self._evaluate(i, shapes, cache) if i else None for i in node.input]
        _refuse_large(node, args)
        from onnx.reference import ReferenceEvaluator

        domain = node.domain or ""
        try:
            ref = ReferenceEvaluator(node, opsets={domain: self.opsets.get(domain, self.opset)})
            outs = ref.run(None, {i: a for i, a in zip(node.input, args) if i})
        except Exception:
            raise _NoValue(name) from None
        for o, v in zip(node.output, outs):
            v = np.asarray(v)
            if v.size > _EVAL_LIMIT:
                raise _NoValue(name)
            cache[o] = v
        return cache[name]

    # which axis of a tensor is H, W, both (a flatten) or neither, from its three shapes
    def labels(self, name):
        if name not in self._labels:
            self._labels[name] = self._classify(name)
        return self._labels[name]

    def _classify(self, name):
        base, dh, dw = (s.get(name) for s in self.shapes)
        if base is None or dh is None or dw is None or not len(base) == len(dh) == len(dw):
            return None
        out = []
        for a, b, c in zip(base, dh, dw):
            out.append(("H" if a != b else "") + ("W" if a != c else ""))
        return tuple(out)

    def axis(self, name, label):
        labels = self.labels(name)
        if labels is None or labels.count(label) != 1:
            return None
        return labels.index(label)

    def shape_stride(self, name, label) -> Fraction | None:
        a = self.axis(name, label)
        if a is None:
            return None
        other = 1 if label == "H" else 2
        k = 0 if label == "H" else 1
        moved = self.shapes[other][name][a] - self.shapes[0][name][a]
        return Fraction(self.sizes[other][k] - self.sizes[0][k], moved)

    def dim(self, name, axis, cfg=0):
        return self.shapes[cfg][name][axis]


def _refuse_large(node, args):
    """Keep the constant evaluator away from frame-sized tensors (e.g. ConstantOfShape(Shape(x)))."""
    def count(shape):
        return math.prod(int(v) for v in np.asarray(shape).reshape(-1))

    op, size = node.op_type, 0
    if op == "ConstantOfShape" and args[0] is not None:
        size = count(args[0])
    elif op in ("Expand", "Tile") and len(args) > 1 and args[0] is not None and args[1] is not None:
        size = args[0].size * count(args[1])
    elif op == "Range" and len(args) == 3 and all(a is not None for a in args):
        start, limit, delta = (float(np.asarray(a)) for a in args)
        size = _EVAL_LIMIT + 1 if delta == 0 else abs((limit - start) / delta)
    if size > _EVAL_LIMIT:
        raise _NoValue(node.output[0])


def _np_dtype(type_str: str):
    return {"tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(int64)": np.int64,
            "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
            "tensor(bool)": np.bool_}.get(type_str, np.float32)


# ---- ops ------------------------------------------------------------------------------------
# A handler returns ({output name: {label: span}}, reason or None); `_finish` then places the
# spans on the output axes its shapes say are H and W, and catches axes it lost or gained.

_POINTWISE = {
    "Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "BitShift",
    "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos",
    "Cosh", "DequantizeLinear", "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Expand",
    "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LRN", "Max", "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "Not",
    "Or", "Pow", "PRelu", "QuantizeLinear", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign",
    "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Swish", "Tan", "Tanh", "ThresholdedRelu",
    "Where", "Xor",
}
_REDUCTIONS = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSum", "ReduceSumSquare", "ArgMax", "ArgMin"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_FRAME_NORMS = {"InstanceNormalization", "GroupNormalization"}
_SAMPLING = {"GridSample", "DeformConv", "NonZero", "RoiAlign", "MaxRoiPool", "MaxUnpool", "Compress"}


def _outputs(node):
    return [o for o in node.output if o]


def _by_label(g, node, ins, aligned: bool):
    """Spans of each output label: the hull over the data inputs that have that label."""
    reason = None
    result = {}
    for o in _outputs(node):
        per = {}
        rank_out = len(g.shapes[0].get(o, ()))
        for k, d in ins.items():
            name = node.input[k]
            for label, span in d.spans.items():
                a_in, a_out = g.axis(name, label), g.axis(o, label)
                if a_in is None or a_out is None:
                    continue
                if aligned and rank_out - len(g.shapes[0][name]) + a_in != a_out:
                    reason = reason or f"{_who(node)} broadcasts the spatial axis {label} onto another axis"
                per.setdefault(label, []).append(span)
        result[o] = {}
        for label, spans in per.items():
            joined = _union(spans)
            if joined is None:
                reason = reason or f"{_who(node)} combines tensors of different strides along {label}"
            else:
                result[o][label] = joined
    return result, reason


def _hull(span_dicts) -> dict | None:
    """Per label, the union of several {label: span}; None if strides clash."""
    per = {}
    for spans in span_dicts:
        for label, span in spans.items():
            per.setdefault(label, []).append(span)
    out = {label: _union(spans) for label, spans in per.items()}
    return None if None in out.values() else out


def _segments(d: _Data, axis: int, size: int) -> list:
    """(stop, spans) ranges of a tensor along a channel-like axis: its parts there, or one range."""
    return list(d.parts[1]) if d.parts is not None and d.parts[0] == axis else [(size, d.spans)]


def _select(segments, start: int, stop: int) -> list:
    """The segments within [start, stop), numbered from start."""
    out, begin = [], 0
    for end, spans in segments:
        if max(begin, start) < min(end, stop):
            out.append((min(end, stop) - start, spans))
        begin = end
    return out


def _with_parts(axis: int, segments) -> _Data | None:
    """A tensor made of (stop, spans) ranges along `axis`; None if their strides clash."""
    merged = []
    for stop, spans in segments:   # neighbours with equal spans are one range
        if merged and merged[-1][1] == spans:
            merged[-1] = (stop, spans)
        else:
            merged.append((stop, spans))
    spans = _hull(s for _, s in merged)
    if spans is None:
        return None
    return _Data(spans, None, (axis, tuple(merged)) if len(merged) > 1 else None)


def _pointwise(g, node, ins):
    result, reason = _by_label(g, node, ins, aligned=True)
    carriers = {k: d for k, d in ins.items() if d.parts is not None}
    if not carriers or reason:
        return result, reason
    # ranges survive when every input carrying them agrees on them and the rest broadcast there
    out_rank = len(g.shapes[0][_outputs(node)[0]])
    shift = {k: out_rank - len(g.shapes[0][node.input[k]]) for k in ins}
    axes = {d.parts[0] + shift[k] for k, d in carriers.items()}
    stops = {tuple(stop for stop, _ in d.parts[1]) for d in carriers.values()}
    if len(axes) != 1 or len(stops) != 1:
        return result, reason
    axis = axes.pop()
    others = [d for k, d in ins.items() if k not in carriers]
    if any(axis - shift[k] >= 0 and g.shapes[0][node.input[k]][axis - shift[k]] != 1
           for k in ins if k not in carriers):
        return result, reason
    segments = [(stop, _hull([d.parts[1][i][1] for d in carriers.values()] + [d.spans for d in others]))
                for i, stop in enumerate(stops.pop())]
    if any(spans is None for _, spans in segments):
        return result, reason
    data = _with_parts(axis, segments)
    return ({o: data for o in _outputs(node)} if data else result), reason


def _relabel(g, node, ins):
    """Ops that keep every span on its label (channel ranges are not followed through them)."""
    return _by_label(g, node, ins, aligned=False)


def _transpose(g, node, ins):
    result, reason = _relabel(g, node, ins)
    d = ins[0]
    if d.parts is not None:
        perm = list(_attr(node, "perm") or reversed(range(len(g.shapes[0][node.input[0]]))))
        parts = (perm.index(d.parts[0]), d.parts[1])
        result = {o: _Data(spans, None, parts) for o, spans in result.items()}
    return result, reason


def _axis_ops(g, node, ins, maps: dict, per_channel=False, keep=None):
    """Input 0 through one index map per label ({label: _IndexMap or None for unchanged}).

    per_channel: the op treats channel ranges separately (pools, resizes, crops), so they are
    kept; keep=(axis, start, stop): only that range of a channel-like axis is kept (a crop).
    """
    def through(spans):
        return {label: span if maps.get(label) is None else _compose(span, maps[label])
                for label, span in spans.items()}

    d = ins[0]
    if keep is not None and d.parts is not None and d.parts[0] == keep[0]:
        data = _with_parts(keep[0], [(stop, through(spans)) for stop, spans in _select(d.parts[1], *keep[1:])])
    elif per_channel and d.parts is not None:
        data = _Data(through(d.spans), None, (d.parts[0], tuple((stop, through(s)) for stop, s in d.parts[1])))
    else:
        data = None
    return {o: data or _Data(through(d.spans)) for o in _outputs(node)}, None


def _params_from_image(node, ins, what):
    """Ops that take the image as input 0 only: a reason when a parameter is computed from it."""
    if 0 not in ins:
        return f"{_who(node)} takes its {what} from the image (data-dependent)"
    for k, d in ins.items():
        if k and d.spans:
            return f"{_who(node)} takes its {what} from the image (data-dependent)"
    return None


def _same_pad_begin(mode, size, kernel, stride, dilation):
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2 if mode == "SAME_UPPER" else total - total // 2


def _conv(g, node, ins):
    op = node.op_type
    w_at = {"QLinearConv": 3}.get(op, 1)
    reason = _params_from_image(node, ins, "kernel")
    if reason:
        return {}, reason
    x = node.input[0]
    rank = len(g.shapes[0][x])
    nsp = rank - 2
    pool = op in ("MaxPool", "AveragePool", "LpPool")
    kernel = _attr(node, "kernel_shape") or (None if pool else list(g.shapes[0][node.input[w_at]][2:]))
    strides = _attr(node, "strides") or [1] * nsp
    dilations = _attr(node, "dilations") or [1] * nsp
    pads = _attr(node, "pads") or [0] * (2 * nsp)
    auto = _attr(node, "auto_pad", "NOTSET")
    maps = {}
    for label in ins[0].spans:
        a = g.axis(x, label)
        if a is None or a < 2:
            return {}, f"{_who(node)} mixes the spatial axis {label} as a channel axis"
        i = a - 2
        k, s, d = kernel[i], strides[i], dilations[i]
        size = g.dim(x, a)
        if op == "ConvTranspose":
            maps[label] = _transposed_window(k, s, d, _transposed_pad_begin(node, i, nsp, size, k, s, d, pads, auto))
        else:
            if auto in ("NOTSET", "", "VALID"):
                begin = pads[i] if auto != "VALID" else 0
            else:
                begin = _same_pad_begin(auto, size, k, s, d)
            maps[label] = _window(k, s, d, begin)
    groups = _attr(node, "group", 1)
    if pool or ins[0].parts is None or groups == 1 or ins[0].parts[0] != 1:
        return _axis_ops(g, node, ins, maps, per_channel=pool)
    # a grouped conv mixes channels within each group only: group k's outputs read its inputs' range
    result, _ = _axis_ops(g, node, ins, maps)
    c_in, c_out = g.shapes[0][x][1], g.shapes[0][node.output[0]][1]
    segments = []
    for k in range(groups):
        reads = _hull(s for _, s in _select(ins[0].parts[1], k * c_in // groups, (k + 1) * c_in // groups))
        if not reads:
            return result, None
        (through,) = _axis_ops(g, node, {0: _Data(reads)}, maps)[0].values()
        segments.append(((k + 1) * c_out // groups, through.spans))
    data = _with_parts(1, segments)
    return ({o: data for o in _outputs(node)} if data else result), None


def _transposed_pad_begin(node, i, nsp, size, k, s, d, pads, auto):
    output_shape = _attr(node, "output_shape")
    if auto in ("NOTSET", "", "VALID") and not output_shape:
        return pads[i] if auto != "VALID" else 0
    out_pad = (_attr(node, "output_padding") or [0] * nsp)[i]
    out = output_shape[len(output_shape) - nsp + i] if output_shape else size * s
    total = s * (size - 1) + out_pad + (k - 1) * d + 1 - out
    # ONNX: SAME_UPPER puts the odd pixel of padding at the end, otherwise at the beginning
    return total // 2 if auto == "SAME_UPPER" else total - total // 2


def _nearest(x: Fraction, mode: str, downsample: bool) -> int:
    fl = math.floor(x)
    half = x - fl
    if mode == "round_prefer_floor":
        return fl if half <= Fraction(1, 2) else fl + 1
    if mode == "round_prefer_ceil":
        return fl if half < Fraction(1, 2) else fl + 1
    if mode == "ceil" or (mode == "simple" and downsample):
        return math.ceil(x)
    return fl   # floor, and the pre-opset-11 "simple" rule when upsampling


def _taps(x: Fraction, reach: int, scale: Fraction, antialias: bool):
    """Input pixels with a non-zero interpolation weight at coordinate x (linear: reach 1, cubic: 2)."""
    if antialias and scale < 1:
        wide = reach / scale   # the kernel is stretched; weights vanish at exactly |d| = reach / scale
        return range(math.floor(x - wide) + 1, math.ceil(x + wide))
    if x.denominator == 1:     # on a sample: the other taps have weight 0
        return (int(x),)
    return range(math.floor(x) - reach + 1, math.floor(x) + reach + 1)


def _resize(g, node, ins):
    reason = _params_from_image(node, ins, "output size")
    if reason:
        return {}, reason
    legacy = node.op_type == "Upsample" or g.opset < 11
    mode = _attr(node, "mode", "nearest").lower()
    ctm = "asymmetric" if legacy else _attr(node, "coordinate_transformation_mode", "half_pixel")
    rounding = "simple" if legacy else _attr(node, "nearest_mode", "round_prefer_floor")
    antialias = bool(_attr(node, "antialias", 0))
    half = Fraction(1, 2)
    coords = {"half_pixel": lambda o, sc: (o + half) / sc - half,
              "pytorch_half_pixel": lambda o, sc: (o + half) / sc - half,
              "half_pixel_symmetric": lambda o, sc: (o + half) / sc - half,   # equal when out = in * scale
              "asymmetric": lambda o, sc: o / sc,
              "tf_half_pixel_for_nn": lambda o, sc: (o + half) / sc}
    if ctm not in coords:
        return {}, (f"{_who(node)} resizes with coordinate_transformation_mode={ctm}, whose sampling positions depend "
                    f"on the frame size (not translation-equivariant)")
    if mode not in ("nearest", "linear", "bilinear", "cubic", "bicubic"):
        return {}, f"{_who(node)} resizes with mode={mode}, which is not analysed; give receptive_radius in the spec"
    x, y = node.input[0], node.output[0]
    maps = {}
    for label in ins[0].spans:
        a_in, a_out = g.axis(x, label), g.axis(y, label)
        if a_in is None or a_out is None:
            continue
        scales = {Fraction(g.dim(y, a_out, c), g.dim(x, a_in, c)) for c in range(len(g.sizes))}
        if len(scales) != 1:
            return {}, f"{_who(node)} resizes {label} to a size that is not a fixed multiple of its input"
        scale = scales.pop()
        windows = []
        for r in range(scale.numerator):   # scale = p/q: p outputs span q inputs
            at = coords[ctm](Fraction(r), scale)
            if mode == "nearest":
                windows.append((_nearest(at, rounding, scale < 1),))
            else:
                windows.append(tuple(_taps(at, 1 if mode in ("linear", "bilinear") else 2, scale, antialias)))
        maps[label] = _IndexMap(scale.numerator, scale.denominator, tuple(windows))
    return _axis_ops(g, node, ins, maps, per_channel=True)


def _per_config(g, node, name_or_attr, attr_name=None):
    """A parameter's value at every config: from an input (opset >= 10/11) or an attribute."""
    if attr_name is not None:
        v = _attr(node, attr_name)
        return None if v is None else [list(v)] * len(g.sizes)
    if not name_or_attr:
        return None
    return [[int(v) for v in np.asarray(g.value(name_or_attr, c)).reshape(-1)] for c in range(len(g.sizes))]


def _pad(g, node, ins):
    reason = _params_from_image(node, ins, "padding")
    if reason:
        return {}, reason
    x = node.input[0]
    rank = len(g.shapes[0][x])
    if g.opset >= 11:
        pads = _per_config(g, node, node.input[1] if len(node.input) > 1 else "")
        axes = _per_config(g, node, node.input[3] if len(node.input) > 3 else "")
    else:
        pads = _per_config(g, node, None, "pads") or _per_config(g, node, None, "paddings")
        axes = None
    axes = [[a % rank for a in ax] for ax in axes] if axes else [list(range(rank))] * len(g.sizes)
    maps = {}
    for label in ins[0].spans:
        a = g.axis(x, label)
        if pads is None or a not in axes[0]:
            continue
        begins = {p[ax.index(a)] for p, ax in zip(pads, axes)}
        if len(begins) != 1:
            return {}, f"{_who(node)} pads {label} by an amount that depends on the frame size"
        maps[label] = _shift(-begins.pop())   # reflect/edge/constant alike: a shift for interior pixels
    # pads are [begins..., ends...] over `axes`; padding the channel-like axis renumbers its ranges
    ranges = ins[0].parts[0] if ins[0].parts else None
    i = axes[0].index(ranges) if ranges in axes[0] else None
    moves_ranges = pads is not None and i is not None and (pads[0][i] or pads[0][i + len(axes[0])])
    return _axis_ops(g, node, ins, maps, per_channel=not moves_ranges)


def _slice(g, node, ins):
    reason = _params_from_image(node, ins, "crop")
    if reason:
        return {}, reason
    x = node.input[0]
    rank = len(g.shapes[0][x])
    if g.opset >= 10:
        starts, ends = _per_config(g, node, node.input[1]), _per_config(g, node, node.input[2])
        axes = _per_config(g, node, node.input[3] if len(node.input) > 3 else "")
        steps = _per_config(g, node, node.input[4] if len(node.input) > 4 else "")
    else:
        starts, ends = _per_config(g, node, None, "starts"), _per_config(g, node, None, "ends")
        axes, steps = _per_config(g, node, None, "axes"), None
    n = len(starts[0])
    axes = [[a % rank for a in ax] for ax in axes] if axes else [list(range(n))] * len(g.sizes)
    steps = steps or [[1] * n] * len(g.sizes)
    maps = {}
    for label in ins[0].spans:
        a = g.axis(x, label)
        if a not in axes[0]:
            continue
        k = axes[0].index(a)
        step = steps[0][k]
        if step < 0:
            return {}, f"{_who(node)} reverses the spatial axis {label} (not translation-equivariant)"
        begins = set()
        for c in range(len(g.sizes)):
            size, b = g.dim(x, a, c), starts[c][k]
            begins.add(min(max(b + size if b < 0 else b, 0), size))
        if len(begins) != 1:
            return {}, f"{_who(node)} crops {label} at a position that depends on the frame size"
        maps[label] = _shift(begins.pop(), step)
    ranges = ins[0].parts[0] if ins[0].parts else None
    if ranges not in axes[0]:
        return _axis_ops(g, node, ins, maps, per_channel=True)
    k = axes[0].index(ranges)
    size = g.dim(x, ranges)
    begin, end = (min(max(v + size if v < 0 else v, 0), size) for v in (starts[0][k], ends[0][k]))
    keep = (ranges, begin, end) if steps[0][k] == 1 else None   # a strided pick of channels: hull
    return _axis_ops(g, node, ins, maps, keep=keep)


def _depth_space(g, node, ins):
    b = int(_attr(node, "blocksize"))
    maps = {}
    for label in ins[0].spans:
        if g.axis(node.input[0], label) not in (2, 3):
            return {}, f"{_who(node)} moves the spatial axis {label} into channels"
        if node.op_type == "DepthToSpace":   # DCR and CRD differ in channel order only
            maps[label] = _IndexMap(b, 1, ((0,),) * b)
        else:
            maps[label] = _IndexMap(1, b, (tuple(range(b)),))
    return _axis_ops(g, node, ins, maps)


def _groups(src, dst):
    """Axes of a row-major reshape grouped into runs of equal size products: [(src axes, dst axes)]."""
    ends_src, ends_dst = list(accumulate(src, mul)), list(accumulate(dst, mul))
    cuts = sorted(set(ends_src) & set(ends_dst))   # where both flat orders break at the same place
    groups = [([], []) for _ in cuts]
    for a, end in enumerate(ends_src):
        groups[bisect_left(cuts, end)][0].append(a)
    for a, end in enumerate(ends_dst):
        groups[bisect_left(cuts, end)][1].append(a)
    return groups


def _reshape(g, node, ins):
    reason = _params_from_image(node, ins, "target shape")
    if reason:
        return {}, reason
    x, y = node.input[0], node.output[0]
    src, dst = g.shapes[0][x], g.shapes[0][y]
    maps = {}
    for label in ins[0].spans:
        a = g.axis(x, label)
        b = g.axis(y, label)
        group = next((gr for gr in _groups(src, dst) if a in gr[0]), None)
        if group is None or b not in group[1]:
            continue   # flattened with the other spatial axis, or gone: _finish reports it
        outer = math.prod(src[k] for k in group[0] if k < a) * math.prod(dst[k] for k in group[1] if k < b)
        if outer != 1:
            return {}, (f"{_who(node)} merges the spatial axis {label} with a constant axis outside it, "
                        f"which mixes distant rows (not local)")
        inner_src = math.prod(src[k] for k in group[0] if k > a)
        inner_dst = math.prod(dst[k] for k in group[1] if k > b)
        maps[label] = _regroup(inner_src, inner_dst)
    return _axis_ops(g, node, ins, maps)


def _concat(g, node, ins):
    rank = len(g.shapes[0][_outputs(node)[0]])
    axis = _attr(node, "axis", 0) % rank
    for k, d in ins.items():
        for label in d.spans:
            if g.axis(node.input[k], label) == axis:
                return {}, f"{_who(node)} joins tensors along the spatial axis {label} (not translation-equivariant)"
    result, reason = _relabel(g, node, ins)
    # each input becomes a range of the output along the axis; constants depend on no pixel
    strides = {label: span.stride for d in ins.values() for label, span in d.spans.items()}
    segments, offset = [], 0
    for k, name in enumerate(node.input):
        size = g.shapes[0][name][axis]
        own = _segments(ins[k], axis, size) if k in ins else [(size, {l: _empty(s) for l, s in strides.items()})]
        segments += [(offset + stop, spans) for stop, spans in own]
        offset += size
    data = None if reason else _with_parts(axis, segments)
    return ({o: data for o in _outputs(node)} if data else result), reason


def _split(g, node, ins):
    reason = _params_from_image(node, ins, "split sizes")
    if reason:
        return {}, reason
    rank = len(g.shapes[0][node.input[0]])
    axis = _attr(node, "axis", 0) % rank
    for label in ins[0].spans:
        if g.axis(node.input[0], label) == axis:
            return {}, f"{_who(node)} splits the spatial axis {label} (not translation-equivariant)"
    result, reason = _relabel(g, node, ins)
    d = ins[0]
    if d.parts is None or reason:
        return result, reason
    if d.parts[0] != axis:
        return {o: _Data(spans, None, d.parts) for o, spans in result.items()}, None
    offset = 0
    for o in node.output:   # each output is the next range along the axis
        size = g.shapes[0][o][axis]
        result[o] = _with_parts(axis, _select(d.parts[1], offset, offset + size)) or result[o]
        offset += size
    return result, None


def _reduce(g, node, ins):
    spans, reason = _relabel(g, node, ins)
    out = _outputs(node)[0]
    for label in ins[0].spans if 0 in ins else ():
        if g.axis(out, label) is None:
            return spans, f"{_who(node)} reduces over the spatial axis {label} (a statistic of the whole frame)"
    return spans, reason


def _normalise(g, node, ins):
    x = node.input[0]
    rank = len(g.shapes[0][x])
    op = node.op_type
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        axis = _attr(node, "axis", -1 if g.opset >= 13 else 1) % rank
        axes = {axis} if g.opset >= 13 else set(range(axis, rank))   # before 13: flattened from axis on
    elif op in ("LayerNormalization", "RMSNormalization"):
        axes = set(range(_attr(node, "axis", -1) % rank, rank))
    elif op == "LpNormalization":
        axes = {_attr(node, "axis", -1) % rank}
    elif op == "MeanVarianceNormalization":
        axes = {a % rank for a in _attr(node, "axes", [0, 2, 3])}
    else:   # CumSum
        axes = {int(np.asarray(g.value(node.input[1]))) % rank}
    for label in ins[0].spans if 0 in ins else ():
        if g.axis(x, label) in axes:
            return {}, f"{_who(node)} normalises over the spatial axis {label} (a statistic of the whole frame)"
    return _relabel(g, node, ins)


def _contract(g, node, ins):
    """MatMul / Gemm / Einsum: pointwise in space unless a spatial axis is summed over."""
    op = node.op_type
    summed = {}
    if op == "Einsum":
        summed = _einsum_summed(g, node)
    else:
        b_at = 3 if op == "QLinearMatMul" else 1
        for k in (0, b_at):
            if k >= len(node.input):
                continue
            rank = len(g.shapes[0].get(node.input[k], ()))
            if op == "Gemm":
                t = _attr(node, "transA" if k == 0 else "transB", 0)
                summed[k] = {(1 - t) if k == 0 else t}
            else:
                summed[k] = {rank - 1} if k == 0 else {max(rank - 2, 0)}
    for k, d in ins.items():
        for label in d.spans:
            if g.axis(node.input[k], label) in summed.get(k, ()):
                return {}, (f"{_who(node)} sums over spatial positions along {label} "
                            f"(attention or a dense layer over the frame)")
    return _relabel(g, node, ins)


def _einsum_summed(g, node):
    eq = _attr(node, "equation").replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")

    def axis_letters(term, rank):
        if "..." not in term:
            return list(term)
        pre, post = term.split("...")
        n = rank - len(pre) - len(post)
        return list(pre) + [f".{n - i}" for i in range(n)] + list(post)

    letters = [axis_letters(t, len(g.shapes[0].get(i, ()))) for t, i in zip(terms, node.input)]
    if "->" not in eq:
        flat = [c for t in terms for c in t if c.isalpha()]
        rhs = "..." + "".join(sorted(c for c in set(flat) if flat.count(c) == 1))
    kept = set(rhs.replace("...", ""))
    if "..." in rhs:
        kept |= {l for ls in letters for l in ls if l.startswith(".")}
    return {k: {a for a, l in enumerate(ls) if l not in kept} for k, ls in enumerate(letters)}


def _gather(g, node, ins):
    rank = len(g.shapes[0][node.input[0]])
    axis = _attr(node, "axis", 0) % rank
    if 0 in ins:
        for label in ins[0].spans:
            if g.axis(node.input[0], label) == axis:
                how = "positions computed from the image" if 1 in ins else "fixed positions"
                return {}, f"{_who(node)} picks {how} along the spatial axis {label} (not translation-equivariant)"
    return _relabel(g, node, ins)


def _axis_attr_op(g, node, ins):
    """TopK: pointwise unless its axis is spatial."""
    rank = len(g.shapes[0][node.input[0]])
    axis = _attr(node, "axis", -1) % rank
    for label in ins[0].spans if 0 in ins else ():
        if g.axis(node.input[0], label) == axis:
            return {}, f"{_who(node)} selects along the spatial axis {label} (a statistic of the whole frame)"
    return _relabel(g, node, ins)


def _tile(g, node, ins):
    reason = _params_from_image(node, ins, "repeats")
    if reason:
        return {}, reason
    repeats = [int(v) for v in np.asarray(g.value(node.input[1])).reshape(-1)]
    for label in ins[0].spans:
        if repeats[g.axis(node.input[0], label)] != 1:
            return {}, f"{_who(node)} repeats the frame along {label} (not translation-equivariant)"
    return _relabel(g, node, ins)


def _batchnorm(g, node, ins):
    if _attr(node, "training_mode", 0):
        return {}, f"{_who(node)} computes batch statistics over the frame (training mode)"
    return _pointwise(g, node, ins)


def _whole_frame(text):
    return lambda g, node, ins: ({}, f"{_who(node)} {text}")


def _unknown(g, node, ins):
    return {}, _not_analysed(node)


def _not_analysed(node, detail=""):
    return (f"op {node.op_type} (node '{node.name or node.output[0]}') is not analysed{detail}; "
            f"give receptive_radius in the spec")


_HANDLERS = {
    **{op: _pointwise for op in _POINTWISE},
    **{op: _reduce for op in _REDUCTIONS},
    **{op: _whole_frame("pools over the whole frame") for op in _GLOBAL_POOLS},
    **{op: _whole_frame("normalises with statistics of the whole frame") for op in _FRAME_NORMS},
    **{op: _whole_frame("samples at positions computed from the image (data-dependent)") for op in _SAMPLING},
    **{op: _conv for op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")},
    **{op: _normalise for op in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "RMSNormalization",
                                  "LpNormalization", "MeanVarianceNormalization", "CumSum")},
    **{op: _contract for op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "Einsum")},
    **{op: _reshape for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze")},
    "BatchNormalization": _batchnorm,
    "Transpose": _transpose,
    "Resize": _resize, "Upsample": _resize,
    "Pad": _pad, "Slice": _slice,
    "DepthToSpace": _depth_space, "SpaceToDepth": _depth_space,
    "Concat": _concat, "Split": _split,
    "Gather": _gather, "TopK": _axis_attr_op, "Tile": _tile,
}


def _finish(g, node, out_spans, reason, ins, states):
    """Place each output's spans on its H and W axes, checking them against its shapes.

    out_spans maps an output to {label: span}, or to a _Data that also has channel ranges."""
    who = _who(node)
    reason = next((d.unbounded for d in ins.values() if d.unbounded), None) or reason
    for o in _outputs(node):
        got_out = out_spans.get(o, {})
        if isinstance(got_out, _Data):
            spans, parts = dict(got_out.spans), got_out.parts
        else:
            spans, parts = dict(got_out), None
        why = reason
        labels = g.labels(o)
        if labels is None:
            states[o] = _Data(spans, why or f"{who}: the shape of '{o}' could not be inferred")
            continue
        if "HW" in labels:
            why = why or f"{who} flattens H and W into one axis (attention or a dense layer over positions)"
        for label in "HW":
            a = g.axis(o, label)
            if a is None:
                if labels.count(label) > 1:
                    why = why or f"{who} gives a tensor with two {label} axes"
                elif label in spans or label not in "".join(labels):
                    why = why or (f"{who} gives an output whose size does not follow the frame's {label} "
                                  f"(a reduction over the frame, or a fixed size)")
                spans.pop(label, None)
                parts = None
                continue
            want = g.shape_stride(o, label)
            got = spans.get(label)
            if got is None:
                why = why or _not_analysed(node, f" (it loses track of the spatial axis {label})")
                spans[label], parts = _nominal(want), None
            elif g.exact and got.stride != want:
                why = why or (f"{who} gives {label} a stride of {want} where the analysis expects {got.stride}; "
                              f"give receptive_radius in the spec")
                spans[label], parts = _nominal(want), None
        if parts is not None:   # ranges along a constant axis that covers the tensor, with the same labels
            axis, segments = parts
            if (axis >= len(labels) or labels[axis] or segments[-1][0] != g.shapes[0][o][axis]
                    or any(set(s) != set(spans) for _, s in segments)):
                parts = None
        states[o] = _Data(spans, why, parts)


def _propagate(g) -> dict:
    states = {name: _Data({"H": _input_span(s), "W": _input_span(s)}) for name, s in g.inputs.strides.items()}
    for node in g.proto.graph.node:
        reads = _node_inputs(node)
        if node.op_type in _SHAPE_OPS or not any(i in states for i in reads):
            continue
        ins = {k: states[i] for k, i in enumerate(node.input) if i in states}
        handler = _HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if handler is None or not ins:
            handler = _unknown   # also: data reaching a node only through a subgraph body
        try:
            out_spans, reason = handler(g, node, ins)
        except _NoValue:
            out_spans, reason = {}, (f"{_who(node)} has parameters (pads, crops, sizes) that could not be computed: "
                                     f"they depend on image values, or on ops the analysis cannot evaluate")
        except (ArithmeticError, LookupError, TypeError, ValueError) as e:
            # an attribute or shape this analysis does not expect: stay safe, call it unbounded
            out_spans, reason = {}, _not_analysed(node, f" ({type(e).__name__}: {e})")
        _finish(g, node, out_spans, reason, ins, states)
    return states


# ---- results --------------------------------------------------------------------------------

def _ancestors(proto, name) -> set:
    producer = {o: n for n in proto.graph.node for o in n.output if o}
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in producer:
            todo.extend(_node_inputs(producer[t]))
    return seen


def _block_radius(span: _Span, m: int) -> int:
    """Radius seen by an m x m block of outputs at every block origin that is a multiple of m."""
    worst = 0
    for b0 in range(0, math.lcm(len(span.lo), m), m):
        got = [span.at(o) for o in range(b0, b0 + m)]
        got = [s for s in got if s[0] is not None]
        if got:
            worst = max(worst, b0 - min(s[0] for s in got), max(s[1] for s in got) - (b0 + m - 1))
    return worst


def _stride_text(spans_in: dict, spans_out: dict) -> str:
    h0, w0 = spans_in.get("H"), spans_in.get("W")
    h1, w1 = spans_out.get("H"), spans_out.get("W")
    if h0 and w0 and h1 and w1 and h0.stride == w0.stride and h1.stride == w1.stride:
        return f"stride {h0.stride} -> {h1.stride}"
    parts = [f"{l} {a.stride} -> {b.stride}" for l, a, b in (("H", h0, h1), ("W", w0, w1)) if a and b]
    return "stride " + ", ".join(parts)


def _numerators(spans: dict) -> int:
    return math.lcm(1, *(s.stride.numerator for s in spans.values()))


def _check_output(g, name, states):
    if name not in states:
        raise ConversionError(f"the model's first output {name!r} does not depend on the image input "
                              f"{g.inputs.image!r}; put the denoised image first among the outputs")
    for (h, w), shapes in zip(g.sizes, g.shapes):
        shape = shapes.get(name)
        if shape is None or len(shape) != 4 or shape[2:] != (h, w):
            raise ConversionError(
                f"the model's first output {name!r} has shape {shape} for a {h}x{w} input; the SDK needs the "
                f"image back at the input's resolution as (N, C, H, W){g.inputs.fixed_size_hint()}: put that "
                f"output first, or resize it to the input's size inside the model")


def analyse(model, image_input: str | None = None, input_strides: dict | None = None) -> GraphGeometry:
    """Size multiple and receptive-field radius of an ONNX network, from its graph.

    `image_input` names the image (default: the single input not in `input_strides`);
    `input_strides` gives every other input's stride: an int s for a spatial map (N, C, H/s, W/s)
    tiled with the image, None for a per-image vector. The output analysed is the first one.
    """
    proto = _load(model)
    g = _Graph(proto, _resolve_inputs(proto, image_input, input_strides))
    states = _propagate(g)
    out = proto.graph.output[0].name
    _check_output(g, out, states)
    needed = _ancestors(proto, out)
    multiple = math.lcm(1, *(_numerators(states[t].spans) for t in needed if t in states))
    stride_ops = [f"input '{name}': stride {s}" for name, s in g.inputs.strides.items() if s > 1 and name in needed]
    for node in proto.graph.node:
        outs = [o for o in _outputs(node) if o in needed and o in states]
        ins = [states[i] for i in node.input if i in states]
        if not outs or not ins:
            continue
        before = math.lcm(1, *(_numerators(d.spans) for d in ins))
        after = math.lcm(1, *(_numerators(states[o].spans) for o in outs))
        if math.lcm(before, after) != before:
            change = _stride_text(ins[0].spans, states[outs[0]].spans)
            stride_ops.append(f"{node.op_type} '{node.name or outs[0]}': {change}")
    result = states[out]
    if result.unbounded:
        return GraphGeometry(multiple, None, result.unbounded, tuple(stride_ops))
    radius = max([_block_radius(s, multiple) for s in result.spans.values()] + [0])
    return GraphGeometry(multiple, radius, None, tuple(stride_ops))


# ---- the independent check: perturb the input in ONNX Runtime -------------------------------

# An output counts as moved when it changes by more than this fraction of the largest output
# magnitude: far above the float32 rounding differences (~1e-7) that kernels with
# position-dependent code paths (Winograd tiles, blocked GEMM) may add, far below what a bump of
# 64 leaves even at the edge of a deep receptive field.
_PROBE_RTOL = 1e-5
_PROBE_BUMP = 64.0


def probe_radius(model, *, in_channels: int, multiple: int, image_input: str | None = None,
                 extra_inputs: dict | None = None, max_size: int = 1024, seed: int = 0) -> int:
    """Receptive-field radius measured in ONNX Runtime (CPU), in the sense of `analyse`.

    Each pixel of the m x m block at an origin b0 (a multiple of m near the centre) is bumped in
    turn (m runs, one per stride phase: pixel (b0+k, b0+k)); an output block [b, b+m) that moves
    when pixel p is bumped reads p, so its radius is at least b - p (b > p) or p - (b+m-1)
    (b+m-1 < p). The largest of these over all phases is a lower bound of the radius of
    `analyse` and equals it unless contributions cancel. `extra_inputs` maps each other input's
    name to (channels, stride or None). The input size doubles until the moved outputs stay clear
    of the border, or it reaches `max_size`.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing("onnxruntime", "onnx", "probe_radius") from None
    proto = _load(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ConversionError(f"ONNX Runtime cannot load the model ({str(e)[:160]}); check the exported file") from None
    declared = {i.name: i for i in sess.get_inputs()}
    extra_inputs = dict(extra_inputs or {})
    image_input = _image_input(list(declared), extra_inputs, image_input, "extra_inputs",
                               "describe the others in extra_inputs")
    m = int(multiple)
    size = -(-min(max(128, 8 * m), max(max_size, m)) // m) * m
    rng = np.random.default_rng(seed)
    output = sess.get_outputs()[0].name
    while True:
        feeds = {image_input: rng.random((1, in_channels, size, size)).astype(_np_dtype(declared[image_input].type))}
        for name, (channels, stride) in extra_inputs.items():
            if stride is None:
                shape = [d if isinstance(d, int) else 1 for d in declared[name].shape]
                shape[0:2] = [1, channels][:len(shape)]
            else:
                shape = [1, channels, size // stride, size // stride]
            feeds[name] = rng.random(shape).astype(_np_dtype(declared[name].type))
        (y0,) = sess.run([output], feeds)
        if y0.ndim != 4 or y0.shape[2:] != (size, size):
            raise ConversionError(f"the model's first output {output!r} has shape {y0.shape} for a {size}x{size} "
                                  f"input; the SDK needs the image back at the input's resolution as (N, C, H, W)")
        tol = _PROBE_RTOL * max(float(np.abs(y0).max()), 1e-30)
        b0 = size // 2 // m * m
        radius, touches = 0, False
        for p in range(b0, b0 + m):
            bumped = dict(feeds)
            bumped[image_input] = feeds[image_input].copy()
            bumped[image_input][:, :, p, p] += _PROBE_BUMP
            (y1,) = sess.run([output], bumped)
            moved = np.abs(y1.astype(np.float64) - y0).max(axis=(0, 1)) > tol
            for along in (moved.any(axis=1), moved.any(axis=0)):   # rows (H), columns (W)
                hits = np.nonzero(along)[0]
                if not hits.size:
                    continue
                lo, hi = int(hits.min()), int(hits.max())
                touches |= lo == 0 or hi == size - 1
                radius = max(radius, p - (lo // m * m + m - 1), hi // m * m - p)
        if not touches or size >= max_size:
            return radius
        size *= 2
