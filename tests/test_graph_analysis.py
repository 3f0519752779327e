"""converters.graph_analysis against measures that do not read the graph: the support of the torch
input gradient (zoo.measure_receptive_radius), the ONNX Runtime perturbation probe, shift
equivariance in ONNX Runtime (for the size multiple), and values worked out by hand."""

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper as oh, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from converters import graph_analysis  # noqa: E402
from converters.graph_analysis import analyse, probe_radius  # noqa: E402
from rawdenoise.errors import ConversionError  # noqa: E402
from rawdenoise.spec import ExtraInput, ModelSpec  # noqa: E402
from rawdenoise.zoo.artifact import measure_receptive_radius  # noqa: E402


def export(module, channels=3) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(1, channels, 48, 64),), buf, input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}})
    return buf.getvalue()


def gradient_radius(module, multiple) -> int:
    spec = ModelSpec(layout="rgb", channel_order="RGB", in_channels=3, out_channels=3, multiple=multiple,
                     tile=64 * multiple)
    return measure_receptive_radius(module, spec)


def shift_mismatch(model: bytes, shift: int, margin: int, multiple: int, channels: int = 3) -> float:
    """Relative difference between model(x moved by `shift`) and model(x) moved by `shift`, away
    from the borders; ~0 when the network is equivariant to that shift."""
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    size = -(-(2 * margin + 64) // multiple) * multiple
    big = np.random.default_rng(3).random((1, channels, size + shift, size + shift), dtype=np.float32)
    (a,) = sess.run(None, {"input": big[:, :, :size, :size]})
    (b,) = sess.run(None, {"input": big[:, :, shift:, shift:]})
    keep = slice(margin, size - margin - shift)
    moved = slice(margin + shift, size - margin)
    return float(np.abs(a[:, :, moved, moved] - b[:, :, keep, keep]).max() / np.abs(a).max())


def check_multiple(model: bytes, multiple: int, margin: int, channels: int = 3):
    """Shifts by the multiple commute with the network; shifts by multiple / p (p prime) do not."""
    assert shift_mismatch(model, multiple, margin, multiple, channels) < 1e-6
    for p in (2, 3, 5, 7):
        if multiple % p == 0:
            assert shift_mismatch(model, multiple // p, margin, multiple, channels) > 1e-5, f"shift {multiple // p}"


# ---- torch networks -------------------------------------------------------------------------

def act():
    return nn.LeakyReLU(0.1)


def conv(cin, cout, k=3, **kw):
    kw.setdefault("padding", k // 2)
    return nn.Conv2d(cin, cout, k, **kw)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        layers = [conv(3, 16), act()]
        for _ in range(3):
            layers += [conv(16, 16), act()]
        self.body = nn.Sequential(*layers, conv(16, 3))

    def forward(self, x):
        return self.body(x) + x


class Dilated(nn.Module):
    def __init__(self):
        super().__init__()
        dilated = [m for d in (2, 4, 2) for m in (conv(16, 16, dilation=d, padding=d), act())]
        self.body = nn.Sequential(conv(3, 16), act(), *dilated, conv(16, 3))

    def forward(self, x):
        return self.body(x)


class StridedUNet(nn.Module):
    """Stride-2 conv encoder, 4x4 stride-2 transposed-conv decoder, concatenated skips."""

    def __init__(self):
        super().__init__()
        self.e0, self.e1, self.e2 = conv(3, 16), conv(16, 24, stride=2), conv(24, 32, stride=2)
        self.u2, self.d1 = nn.ConvTranspose2d(32, 24, 4, 2, 1), conv(48, 24)
        self.u1, self.d0 = nn.ConvTranspose2d(24, 16, 3, 2, 1, output_padding=1), conv(32, 16)
        self.head = conv(16, 3, 1)

    def forward(self, x):
        a = F.leaky_relu(self.e0(x), 0.1)
        b = F.leaky_relu(self.e1(a), 0.1)
        y = F.leaky_relu(self.e2(b), 0.1)
        y = F.leaky_relu(self.d1(torch.cat([F.leaky_relu(self.u2(y), 0.1), b], 1)), 0.1)
        y = F.leaky_relu(self.d0(torch.cat([F.leaky_relu(self.u1(y), 0.1), a], 1)), 0.1)
        return self.head(y) + x


class PoolUNet(nn.Module):
    """Three 2x2 max-pools, decoder upsampling with F.interpolate, concatenated skips."""

    def __init__(self, up="bilinear"):
        super().__init__()
        self.up = up
        widths = (12, 16, 24, 32)
        self.enc = nn.ModuleList([nn.Sequential(conv(cin, cout), act())
                                  for cin, cout in zip((3,) + widths[:2], widths[:3])])
        self.mid = nn.Sequential(conv(widths[2], widths[3]), act())
        self.dec = nn.ModuleList([nn.Sequential(conv(widths[i + 1] + widths[i], widths[i]), act()) for i in (2, 1, 0)])
        self.head = conv(widths[0], 3)

    def upsample(self, y, skip):
        if self.up == "size":
            return F.interpolate(y, size=skip.shape[2:], mode="nearest")
        if self.up == "nearest":
            return F.interpolate(y, scale_factor=2, mode="nearest")
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x):
        skips, y = [], x
        for block in self.enc:
            y = block(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.mid(y)
        for block, skip in zip(self.dec, reversed(skips)):
            y = block(torch.cat([self.upsample(y, skip), skip], 1))
        return self.head(y)


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(conv(12, 32), act(), conv(32, 12))

    def forward(self, x):
        return F.pixel_shuffle(self.body(F.pixel_unshuffle(x, 2)), 2)


class UnshuffleStrided(nn.Module):
    """pixel_unshuffle(2) then a stride-2 conv: multiple 4."""

    def __init__(self):
        super().__init__()
        self.down, self.mid = conv(12, 24, stride=2), conv(24, 24)
        self.up = nn.ConvTranspose2d(24, 12, 2, 2)

    def forward(self, x):
        y = F.leaky_relu(self.down(F.pixel_unshuffle(x, 2)), 0.1)
        return F.pixel_shuffle(self.up(F.leaky_relu(self.mid(y), 0.1)), 2)


class AsymmetricPads(nn.Module):
    """Extents that differ left and right: a one-sided pad, an even 'same' kernel and a shift."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = conv(3, 16, padding=0), conv(16, 16, 4, padding="same"), conv(16, 3, 1)

    def forward(self, x):
        y = F.leaky_relu(self.a(F.pad(x, (2, 0, 2, 0))), 0.1)   # reads [o-2, o]
        y = F.leaky_relu(self.b(y), 0.1)                        # reads [o-1, o+2]
        y = F.pad(y, (0, 0, 0, 3))[:, :, 3:, :]                 # row o is row o+3
        return self.head(y)


class AsymmetricStride(nn.Module):
    """A one-sided pad before a 2x2 stride-2 conv: the stride phases see different extents."""

    def __init__(self):
        super().__init__()
        self.down = conv(3, 16, 2, stride=2, padding=0)
        self.up, self.out = nn.ConvTranspose2d(16, 16, 3, 2, 1, output_padding=1), conv(16, 3)

    def forward(self, x):
        y = F.leaky_relu(self.down(F.pad(x, (1, 0, 1, 0))), 0.1)
        return self.out(F.leaky_relu(self.up(y), 0.1)) + x


class Stride3(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = conv(3, 16, 3, stride=3, padding=0)
        self.up, self.out = nn.ConvTranspose2d(16, 16, 3, 3), conv(16, 3)

    def forward(self, x):
        return self.out(F.leaky_relu(self.up(F.leaky_relu(self.down(x), 0.1)), 0.1))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat, self.gate, self.out = conv(3, 16), conv(3, 16, 5), conv(16, 3)

    def forward(self, x):
        return self.out(self.feat(x) * torch.sigmoid(self.gate(x))) + x


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(3), conv(3, 16), nn.BatchNorm2d(16), act(), conv(16, 3))
        with torch.no_grad():
            for m in self.body:
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.body(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels written as means over dim=1: pointwise in space."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 16), conv(16, 3)
        self.weight = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)

    def forward(self, x):
        y = self.a(x)
        mu = y.mean(1, keepdim=True)
        var = ((y - mu) ** 2).mean(1, keepdim=True)
        return self.b((y - mu) / torch.sqrt(var + 1e-5) * self.weight)


class ChannelOps(nn.Module):
    """Softmax, LayerNorm and a Linear layer over channels (channels-last in between): pointwise."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 16), conv(16, 3)
        self.norm, self.linear = nn.LayerNorm(16), nn.Linear(16, 16)

    def forward(self, x):
        y = self.a(x)
        y = torch.softmax(y, dim=1) * y
        y = self.linear(self.norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.b(y)


class ChannelRanges(nn.Module):
    """Channel halves with different receptive fields, as in the coupling blocks of invertible
    networks: split, concatenated, transposed, depthwise-convolved, and the narrow half kept."""

    def __init__(self):
        super().__init__()
        self.inp, self.wide = conv(3, 8), nn.Sequential(conv(4, 4), act(), conv(4, 4, dilation=2, padding=2))
        self.depthwise, self.out = conv(8, 8, groups=8), conv(4, 3)

    def forward(self, x):
        narrow, wide = self.inp(x).chunk(2, dim=1)                 # both read [o-1, o+1]
        y = torch.cat([narrow, self.wide(wide)], 1) * 0.5          # halves: 1 and 1 + 1 + 2 = 4
        y = F.leaky_relu(y.permute(0, 2, 3, 1), 0.1).permute(0, 3, 1, 2)
        y = self.depthwise(y)                                      # each half + 1: 2 and 5
        return self.out(y[:, :4]) + x                              # the narrow half + 1: 3


class InstanceNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(conv(3, 16), nn.InstanceNorm2d(16, affine=True), act(), conv(16, 3))

    def forward(self, x):
        return self.body(x)


class SqueezeExcite(nn.Module):
    def __init__(self, mean=False):
        super().__init__()
        self.mean = mean
        self.a, self.fc, self.b = conv(3, 16), conv(16, 16, 1), conv(16, 3)

    def forward(self, x):
        y = F.leaky_relu(self.a(x), 0.1)
        s = y.mean((2, 3), keepdim=True) if self.mean else F.adaptive_avg_pool2d(y, 1)
        return self.b(y * torch.sigmoid(self.fc(s)))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = conv(3, 48, 1), conv(16, 3)

    def forward(self, x):
        n, _, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)
        attn = torch.softmax(q.transpose(1, 2) @ k / 4.0, dim=-1)
        return self.out((v @ attn.transpose(1, 2)).reshape(n, 16, h, w))


class AlignCorners(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 16), conv(16, 3)

    def forward(self, x):
        y = F.avg_pool2d(self.a(x), 2)
        return self.b(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True))


# name: (factory, multiple the architecture needs)
BOUNDED = {
    "plain": (Plain, 1),
    "dilated": (Dilated, 1),
    "strided_unet": (StridedUNet, 4),
    "pool_unet_bilinear": (lambda: PoolUNet("bilinear"), 8),
    "pool_unet_nearest": (lambda: PoolUNet("nearest"), 8),
    "pool_unet_size": (lambda: PoolUNet("size"), 8),
    "pixel_shuffle": (Shuffle, 2),
    "unshuffle_strided": (UnshuffleStrided, 4),
    "asymmetric_pads": (AsymmetricPads, 1),
    "asymmetric_stride": (AsymmetricStride, 2),
    "stride3": (Stride3, 3),
    "gated": (Gated, 1),
    "batchnorm": (BatchNormNet, 1),
    "channel_layernorm": (ChannelLayerNorm, 1),
    "channel_ops": (ChannelOps, 1),
    "channel_ranges": (ChannelRanges, 1),
}

# name: (factory, text the reason must contain)
UNBOUNDED = {
    "instance_norm": (InstanceNormNet, "InstanceNormalization"),
    "squeeze_excite": (SqueezeExcite, "GlobalAveragePool"),
    "squeeze_excite_mean": (lambda: SqueezeExcite(mean=True), "ReduceMean"),
    "attention": (Attention, "flattens H and W"),
    "align_corners": (AlignCorners, "align_corners"),
}

_built = {}


def built(name):
    """(module, onnx bytes) of a named case, built once per session."""
    if name not in _built:
        factory = {**BOUNDED, **UNBOUNDED}[name][0]
        torch.manual_seed(sum(map(ord, name)))
        module = factory().eval()
        _built[name] = module, export(module)
    return _built[name]


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_radius_matches_torch_gradient_and_bounds_the_probe(name):
    module, model = built(name)
    multiple = BOUNDED[name][1]
    geo = analyse(model)
    assert geo.multiple == multiple
    assert geo.unbounded_by is None
    assert geo.receptive_radius == gradient_radius(module, multiple)
    probed = probe_radius(model, in_channels=3, multiple=multiple)
    assert geo.receptive_radius >= probed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in BOUNDED if BOUNDED[n][1] > 1) + ["plain"])
def test_multiple_is_what_onnx_runtime_needs(name):
    module, model = built(name)
    multiple = BOUNDED[name][1]
    assert analyse(model).multiple == multiple
    check_multiple(model, multiple, margin=gradient_radius(module, multiple) + 2 * multiple)


def test_hand_computed_extents():
    # pads (2,0) then a valid 3x3, an even 'same' kernel (1 left, 2 right), a 3-row shift: H reads
    # [o, o+5], W reads [o-3, o+2]; a symmetric bound would miss the 5
    assert analyse(built("asymmetric_pads")[1]).receptive_radius == 5
    # block [2n, 2n+1] reads [2n-3, 2n+2]
    assert analyse(built("asymmetric_stride")[1]).receptive_radius == 3
    assert analyse(built("dilated")[1]).receptive_radius == 1 + 2 + 4 + 2 + 1
    # the wide half (radius 5) is dropped before the output
    assert analyse(built("channel_ranges")[1]).receptive_radius == 3


def test_stride_ops_name_the_downsampling_layers():
    geo = analyse(built("pool_unet_nearest")[1])
    assert [s.split(" ")[0] for s in geo.stride_ops] == ["MaxPool"] * 3
    assert geo.stride_ops[-1].endswith("stride 4 -> 8")
    assert analyse(built("plain")[1]).stride_ops == ()


@pytest.mark.parametrize("name", sorted(UNBOUNDED))
def test_unbounded_networks_name_the_op(name):
    _, model = built(name)
    geo = analyse(model)
    assert geo.receptive_radius is None
    assert UNBOUNDED[name][1] in geo.unbounded_by and "node '" in geo.unbounded_by


@pytest.mark.parametrize("name", ["instance_norm", "squeeze_excite", "attention"])
def test_global_ops_really_see_the_whole_frame(name):
    # an independent witness: perturbing the centre moves outputs everywhere, at every size
    model = built(name)[1]
    radius = probe_radius(model, in_channels=3, multiple=1, max_size=32)   # attention is O((HW)^2)
    assert radius == 16


def test_align_corners_is_not_shift_equivariant():
    model = built("align_corners")[1]
    assert analyse(model).multiple == 2
    assert shift_mismatch(model, 2, margin=16, multiple=2) > 1e-5   # even a shift by the pooling stride changes it


# ---- one op at a time: every output row's span against ONNX Runtime -------------------------

def one_op(op, attrs=None, inits=None, opset=19, extra_inputs=()):
    """input (1, 1, H, 8) -> op -> output; the op's kernel (if any) spans H only."""
    inits = dict(inits or {})
    node = oh.make_node(op, ["input", *extra_inputs], ["output"], **(attrs or {}))
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, "H", "W"])],
                          [oh.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)]).SerializeToString()


def kernel(k):
    return {"w": np.random.default_rng(k).uniform(0.5, 1.0, (1, 1, k, 1)).astype(np.float32)}


def conv_case(op, k, stride=1, dilation=1, pads=None, **attrs):
    attrs = dict(kernel_shape=[k, 1], strides=[stride, 1], dilations=[dilation, 1], **attrs)
    if pads is not None:
        attrs["pads"] = [pads[0], 0, pads[1], 0]
    return one_op(op, attrs, kernel(k), extra_inputs=["w"])


def resize_case(scale, mode, ctm="half_pixel", nearest="round_prefer_floor", antialias=0):
    attrs = dict(mode=mode, coordinate_transformation_mode=ctm, nearest_mode=nearest, antialias=antialias)
    return one_op("Resize", attrs, {"scales": np.array([1, 1, scale, 1], np.float32)}, extra_inputs=["", "scales"])


SINGLE_OPS = {
    "conv_k3_p1": lambda: conv_case("Conv", 3, pads=(1, 1)),
    "conv_k4_s2_pads_1_2": lambda: conv_case("Conv", 4, 2, pads=(1, 2)),
    "conv_k5_s3_p2": lambda: conv_case("Conv", 5, 3, pads=(2, 2)),
    "conv_k3_d2": lambda: conv_case("Conv", 3, dilation=2, pads=(0, 0)),
    "conv_k4_s2_same_upper": lambda: conv_case("Conv", 4, 2, auto_pad="SAME_UPPER"),
    "conv_k4_s2_same_lower": lambda: conv_case("Conv", 4, 2, auto_pad="SAME_LOWER"),
    "conv_k3_s2_valid": lambda: conv_case("Conv", 3, 2, auto_pad="VALID"),
    "convT_k2_s2": lambda: conv_case("ConvTranspose", 2, 2, pads=(0, 0)),
    "convT_k4_s2_p1": lambda: conv_case("ConvTranspose", 4, 2, pads=(1, 1)),
    "convT_k3_s2_p1_out1": lambda: conv_case("ConvTranspose", 3, 2, pads=(1, 1), output_padding=[1, 0]),
    "convT_k3_s2_same_upper": lambda: conv_case("ConvTranspose", 3, 2, auto_pad="SAME_UPPER"),
    "convT_k3_s2_same_lower": lambda: conv_case("ConvTranspose", 3, 2, auto_pad="SAME_LOWER"),
    "convT_k5_s3_d2_p1": lambda: conv_case("ConvTranspose", 5, 3, 2, pads=(1, 1)),
    "maxpool_k3_s2_p1_ceil": lambda: one_op("MaxPool", dict(kernel_shape=[3, 1], strides=[2, 1], pads=[1, 0, 1, 0],
                                                             ceil_mode=1)),
    "avgpool_k3_s3_p1": lambda: one_op("AveragePool", dict(kernel_shape=[3, 1], strides=[3, 1], pads=[1, 0, 1, 0])),
    "lppool_k2_s2": lambda: one_op("LpPool", dict(kernel_shape=[2, 1], strides=[2, 1])),
    "nearest_x2_half_pixel": lambda: resize_case(2.0, "nearest"),
    "nearest_x0.5_half_pixel_ceil": lambda: resize_case(0.5, "nearest", nearest="round_prefer_ceil"),
    "nearest_x3_asymmetric_floor": lambda: resize_case(3.0, "nearest", "asymmetric", "floor"),
    "nearest_x1.5_half_pixel": lambda: resize_case(1.5, "nearest"),
    "nearest_x0.25_pytorch_ceil": lambda: resize_case(0.25, "nearest", "pytorch_half_pixel", "ceil"),
    "nearest_x2_tf_half_pixel": lambda: resize_case(2.0, "nearest", "tf_half_pixel_for_nn", "round_prefer_ceil"),
    "linear_x2_half_pixel": lambda: resize_case(2.0, "linear"),
    "linear_x3_asymmetric": lambda: resize_case(3.0, "linear", "asymmetric"),
    "linear_x1.5_pytorch": lambda: resize_case(1.5, "linear", "pytorch_half_pixel"),
    "linear_x0.5_antialias": lambda: resize_case(0.5, "linear", antialias=1),
    "cubic_x2_half_pixel": lambda: resize_case(2.0, "cubic"),
    "cubic_x0.25_asymmetric_antialias": lambda: resize_case(0.25, "cubic", "asymmetric", antialias=1),
    "upsample9_nearest_x3": lambda: one_op("Upsample", dict(mode="nearest"), {"s": np.array([1, 1, 3, 1], np.float32)},
                                           opset=9, extra_inputs=["s"]),
    "upsample9_linear_x2": lambda: one_op("Upsample", dict(mode="linear"), {"s": np.array([1, 1, 2, 1], np.float32)},
                                          opset=9, extra_inputs=["s"]),
    "pad_reflect_3_1": lambda: one_op("Pad", dict(mode="reflect"), {"p": np.array([0, 0, 3, 0, 0, 0, 1, 0])},
                                      extra_inputs=["p"]),
    "pad_negative": lambda: one_op("Pad", {}, {"p": np.array([0, 0, -3, 0, 0, 0, 1, 0])}, extra_inputs=["p"]),
    "slice_1_step_2": lambda: one_op("Slice", {}, {"s": np.array([1]), "e": np.array([2**62]), "a": np.array([2]),
                                                   "t": np.array([2])}, extra_inputs=["s", "e", "a", "t"]),
    "space_to_depth": lambda: one_op("SpaceToDepth", dict(blocksize=2)),
}


@pytest.mark.parametrize("name", sorted(SINGLE_OPS))
def test_single_op_spans_match_onnx_runtime(name):
    # the analysis says output row o reads input rows [lo(o), hi(o)]; bump each input row in turn
    # (positive weights: nothing cancels) and collect the output rows that move
    model = SINGLE_OPS[name]()
    proto = onnx.load_from_string(model)
    g = graph_analysis._Graph(proto, graph_analysis._resolve_inputs(proto, None, None))
    span = graph_analysis._propagate(g)["output"].spans["H"]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    size = 48
    x = np.random.default_rng(0).random((1, 1, size, 8), dtype=np.float32)
    (y0,) = sess.run(None, {"input": x})
    reads = {}
    for row in range(size):
        bumped = x.copy()
        bumped[:, :, row] += 50
        (y1,) = sess.run(None, {"input": bumped})
        for o in np.nonzero(np.abs(y1 - y0).max(axis=(0, 1, 3)) > 1e-5 * np.abs(y0).max())[0]:
            reads.setdefault(int(o), []).append(row)
    spans = {o: span.at(o) for o in range(y0.shape[2])}
    interior = [o for o, (lo, hi) in spans.items() if lo is not None and 4 <= lo and hi < size - 4]
    assert len(interior) >= 6
    for o in interior:
        assert (min(reads[o]), max(reads[o])) == spans[o], f"output row {o}"


# ---- graphs built by hand, as other exporters write them --------------------------------------

def weight(*shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32)


def make_model(nodes, inits, inputs=(("input", 3, 1),), opset=17):
    dims = {1: ("H", "W"), 4: ("H4", "W4")}
    graph = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, *dims[s]]) for n, c, s in inputs],
        [oh.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tf_style_nhwc():
    """tf2onnx with inputs_as_nchw: NHWC inside, transposes around each conv, a 1x1 conv as MatMul."""
    to_nhwc, to_nchw = [0, 2, 3, 1], [0, 3, 1, 2]
    nodes = [
        oh.make_node("Transpose", ["input"], ["x_nhwc"], perm=to_nhwc),
        oh.make_node("Transpose", ["x_nhwc"], ["c0_in"], perm=to_nchw),
        oh.make_node("Conv", ["c0_in", "w0", "b0"], ["c0"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        oh.make_node("Relu", ["c0"], ["r0"]),
        oh.make_node("Transpose", ["r0"], ["r0_nhwc"], perm=to_nhwc),
        oh.make_node("MatMul", ["r0_nhwc", "w1"], ["m1"]),
        oh.make_node("Add", ["m1", "b1"], ["a1"]),
        oh.make_node("Resize", ["a1", "", "scales"], ["up"], mode="nearest",
                     coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode="floor"),
        oh.make_node("Transpose", ["up"], ["up_nchw"], perm=to_nchw),
        oh.make_node("Conv", ["up_nchw", "w2"], ["output"], kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
    ]
    inits = {"w0": weight(16, 3, 3, 3), "b0": weight(16), "w1": weight(16, 16, seed=1), "b1": weight(16, seed=2),
             "scales": np.array([1, 2, 2, 1], np.float32), "w2": weight(3, 16, 3, 3, seed=3)}
    return make_model(nodes, inits)


def resize_to_shape():
    """Upsampling to a size computed from Shape (linear, half_pixel)."""
    nodes = [
        oh.make_node("Conv", ["input", "w0"], ["c0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c0"], ["r0"]),
        oh.make_node("Shape", ["r0"], ["s_low"], end=2),
        oh.make_node("Shape", ["input"], ["s_hw"], start=2),
        oh.make_node("Concat", ["s_low", "s_hw"], ["sizes"], axis=0),
        oh.make_node("Resize", ["r0", "", "", "sizes"], ["up"], mode="linear"),
        oh.make_node("Conv", ["up", "w1"], ["output"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    return make_model(nodes, {"w0": weight(8, 3, 3, 3), "w1": weight(3, 8, 3, 3, seed=1)})


def pad_and_slice():
    """Reflect pad (H: 3 before; W: 1 before, 2 after), a valid 3x3, a crop of one row and column."""
    nodes = [
        oh.make_node("Pad", ["input", "pads"], ["p"], mode="reflect"),
        oh.make_node("Conv", ["p", "w0"], ["c"], kernel_shape=[3, 3]),
        oh.make_node("Slice", ["c", "starts", "ends", "axes"], ["output"]),
    ]
    inits = {"pads": np.array([0, 0, 3, 1, 0, 0, 0, 2], np.int64), "w0": weight(3, 3, 3, 3),
             "starts": np.array([1, 0], np.int64), "ends": np.array([2**62, -1], np.int64),
             "axes": np.array([2, 3], np.int64)}
    return make_model(nodes, inits)


def depth_to_space_dcr():
    nodes = [
        oh.make_node("SpaceToDepth", ["input"], ["packed"], blocksize=2),
        oh.make_node("Conv", ["packed", "w0"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("DepthToSpace", ["c"], ["output"], blocksize=2, mode="DCR"),
    ]
    return make_model(nodes, {"w0": weight(12, 12, 3, 3)})


def reshape_shuffle():
    """pixel_unshuffle / conv / pixel_shuffle written as Reshape-Transpose-Reshape, shapes from Shape."""
    def dims(name, parts):
        # a shape tensor: ints are constants, "H"/"W" the input's H and W, "h"/"w" their halves
        return [oh.make_node("Concat", [{"h": "h2", "w": "w2", "H": "h", "W": "w"}.get(p, f"c{p}") for p in parts],
                             [name], axis=0)]

    nodes = [
        oh.make_node("Shape", ["input"], ["shape"]),
        oh.make_node("Gather", ["shape", "i2"], ["h"], axis=0),
        oh.make_node("Gather", ["shape", "i3"], ["w"], axis=0),
        oh.make_node("Div", ["h", "c2"], ["h2"]),
        oh.make_node("Div", ["w", "c2"], ["w2"]),
        *dims("split", [1, 3, "h", 2, "w", 2]),
        *dims("packed", [1, 12, "h", "w"]),
        *dims("unpack", [1, 3, 2, 2, "h", "w"]),
        *dims("merged", [1, 3, "H", "W"]),
        oh.make_node("Reshape", ["input", "split"], ["r0"]),
        oh.make_node("Transpose", ["r0"], ["t0"], perm=[0, 1, 3, 5, 2, 4]),
        oh.make_node("Reshape", ["t0", "packed"], ["r1"]),
        oh.make_node("Conv", ["r1", "w0"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("Reshape", ["c", "unpack"], ["r2"]),
        oh.make_node("Transpose", ["r2"], ["t1"], perm=[0, 1, 4, 2, 5, 3]),
        oh.make_node("Reshape", ["t1", "merged"], ["output"]),
    ]
    inits = {"i2": np.array([2], np.int64), "i3": np.array([3], np.int64), "w0": weight(12, 12, 3, 3),
             **{f"c{v}": np.array([v], np.int64) for v in (1, 2, 3, 12)}}
    return make_model(nodes, inits)


def latent_two_inputs():
    """An image and a latent at 1/4 resolution, conditioned by nearest x4 upsampling."""
    nodes = [
        oh.make_node("Conv", ["latent", "wz"], ["z"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("Resize", ["z", "", "scales"], ["zu"], mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor"),
        oh.make_node("Conv", ["input", "wx"], ["f"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("Concat", ["f", "zu"], ["cat"], axis=1),
        oh.make_node("Conv", ["cat", "wo"], ["output"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    inits = {"wz": weight(8, 8, 3, 3), "scales": np.array([1, 1, 4, 4], np.float32), "wx": weight(8, 3, 3, 3, seed=1),
             "wo": weight(3, 16, 3, 3, seed=2)}
    return make_model(nodes, inits, inputs=(("input", 3, 1), ("latent", 8, 4)))


# name: (builder, multiple, radius worked out by hand)
HAND_BUILT = {
    # conv s2 SAME_UPPER reads [2p, 2p+2]; nearest x2 reads o // 2; block [2n, 2n+1] reads [2n-2, 2n+4]
    "tf_nhwc": (tf_style_nhwc, 2, 3),
    # conv s2 p1 reads [2p-1, 2p+1]; linear x2 reads {n-1, n} / {n, n+1}; block reads [2n-3, 2n+3]
    "resize_to_shape": (resize_to_shape, 2, 3),
    # H: row o is conv row o+1, reading padded [o+1, o+3] = input [o-2, o]; W: [o-1, o+1]
    "pad_slice": (pad_and_slice, 1, 2),
    # packed 3x3: block [2n, 2n+1] reads [2n-2, 2n+3]
    "depth_to_space_dcr": (depth_to_space_dcr, 2, 2),
    "reshape_shuffle": (reshape_shuffle, 2, 2),
}


@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built_graphs(name):
    build, multiple, radius = HAND_BUILT[name]
    model = build()
    geo = analyse(model)
    assert (geo.multiple, geo.receptive_radius) == (multiple, radius)
    probed = probe_radius(model, in_channels=3, multiple=multiple)
    assert probed == radius
    check_multiple(model, multiple, margin=radius + 2 * multiple)


def non_local_graph(kind):
    """Small graphs whose output at a pixel depends on far-away pixels or on the frame size."""
    conv_in = oh.make_node("Conv", ["input", "w0"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    conv_out = oh.make_node("Conv", ["mid", "w1"], ["output"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    middle = {
        # channels (2, 2) folded into rows (2, H) -> 2H: the 3x3 conv then mixes row H-1 with row 0
        "outer_axis": [oh.make_node("Reshape", ["c", "fold"], ["f"]),
                       oh.make_node("Conv", ["f", "w2"], ["fc"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                       oh.make_node("Reshape", ["fc", "unfold"], ["mid"])],
        "fixed_size": [oh.make_node("Resize", ["c", "", "", "fixed"], ["small"], mode="linear"),
                       oh.make_node("Shape", ["c"], ["full"]),
                       oh.make_node("Resize", ["small", "", "", "full"], ["mid"], mode="linear")],
        "grid_sample": [oh.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
                        oh.make_node("Slice", ["t", "zero", "two", "three"], ["grid"]),
                        oh.make_node("GridSample", ["c", "grid"], ["mid"])],
        # rows of two copies stacked, then pooled in pairs: output row r reads rows 2r, 2r+1 mod H
        "concat_rows": [oh.make_node("Concat", ["c", "c"], ["cc"], axis=2),
                        oh.make_node("MaxPool", ["cc"], ["mid"], kernel_shape=[2, 1], strides=[2, 1])],
    }[kind]
    inits = {"w0": weight(4, 3, 3, 3), "w1": weight(3, 4, 3, 3, seed=1), "fold": np.array([0, 2, -1, 0]),
             "unfold": np.array([0, 4, -1, 0]), "fixed": np.array([1, 4, 32, 32]), "zero": np.array([0]),
             "two": np.array([2]), "three": np.array([3]), "w2": weight(2, 2, 3, 3, seed=2)}
    used = {i for n in [conv_in, *middle, conv_out] for i in n.input}
    return make_model([conv_in, *middle, conv_out], {k: v for k, v in inits.items() if k in used})


@pytest.mark.parametrize("kind, reason", [
    ("outer_axis", "Reshape (node 'f') merges the spatial axis H with a constant axis outside it"),
    ("fixed_size", "Resize (node 'small') gives an output whose size does not follow the frame's H"),
    ("grid_sample", "GridSample (node 'mid') samples at positions computed from the image"),
    ("concat_rows", "Concat (node 'cc') joins tensors along the spatial axis H"),
])
def test_non_local_graphs(kind, reason):
    model = non_local_graph(kind)
    geo = analyse(model)
    assert geo.receptive_radius is None and geo.unbounded_by.startswith(reason)
    if kind in ("grid_sample", "concat_rows"):   # bumping the centre moves outputs far away
        radius = probe_radius(model, in_channels=3, multiple=1, max_size=64)
        assert radius >= 16


def test_latent_input_at_quarter_resolution():
    model = latent_two_inputs()
    geo = analyse(model, input_strides={"latent": 4})
    # output block [4n, 4n+3] -> final 3x3 reads [4n-1, 4n+4] -> latent cells n-1..n+1 -> the latent
    # 3x3 reads cells n-2..n+2, which stand for pixels 4n-8 .. 4n+11
    assert (geo.multiple, geo.receptive_radius) == (4, 8)
    assert geo.stride_ops == ("input 'latent': stride 4",)
    # the probe perturbs the image only, which two 3x3 convs see
    probed = probe_radius(model, in_channels=3, multiple=4, extra_inputs={"latent": (8, 4)})
    assert probed == 2
    # perturb one latent cell q (pixels 4q .. 4q+3): outputs [4q - 5, 4q + 8] move, so a block
    # [4n, 4n+3] needs the cells standing for pixels 4n-8 .. 4n+11
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"input": rng.random((1, 3, 128, 128), dtype=np.float32),
             "latent": rng.random((1, 8, 32, 32), dtype=np.float32)}
    (y0,) = sess.run(None, feeds)
    feeds["latent"] = feeds["latent"].copy()
    feeds["latent"][:, :, 16, :] += 8
    (y1,) = sess.run(None, feeds)
    rows = np.nonzero(np.abs(y1 - y0).max(axis=(0, 1, 3)) > 1e-5 * np.abs(y0).max())[0]
    back, ahead = 64 - rows.min(), rows.max() - 64   # cell q moves outputs [4q - back, 4q + ahead]
    n = 16
    cells = [q for q in range(32) if 4 * q - back <= 4 * n + 3 and 4 * q + ahead >= 4 * n]
    assert max(4 * n - 4 * min(cells), 4 * max(cells) + 3 - (4 * n + 3)) == geo.receptive_radius


class LatentNet(nn.Module):
    """An image and a latent at 1/4 resolution whose rows are read two cells ahead."""

    def __init__(self):
        super().__init__()
        self.fx, self.out = conv(3, 8), conv(16, 3)

    def forward(self, x, z):
        z = F.pad(z, (0, 0, 0, 2))[:, :, 2:]   # cell q now holds cell q + 2
        return self.out(torch.cat([self.fx(x), F.interpolate(z, scale_factor=4, mode="nearest")], 1))


def test_latent_input_against_the_torch_gradient():
    torch.manual_seed(0)
    module = LatentNet().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(1, 3, 32, 48), torch.rand(1, 8, 8, 12)), buf, opset_version=17,
                          input_names=["input", "latent"], output_names=["output"], dynamo=False,
                          dynamic_axes={"input": {2: "H", 3: "W"}, "latent": {2: "h", 3: "w"},
                                        "output": {2: "H", 3: "W"}})
    spec = ModelSpec(layout="rgb", channel_order="RGB", in_channels=3, out_channels=3, multiple=4, tile=256,
                     inputs=(ExtraInput("latent", "gaussian", channels=8, stride=4),))
    geo = analyse(buf.getvalue(), input_strides={"latent": 4})
    # block [4n, 4n+3] -> 3x3 reads [4n-1, 4n+4] -> cells n-1..n+1 -> shifted: cells n+1..n+3, which
    # stand for pixels 4n+4 .. 4n+15: 12 beyond the block
    assert (geo.multiple, geo.receptive_radius) == (4, 12)
    assert measure_receptive_radius(module, spec) == 12


def test_extra_inputs_need_a_stride():
    with pytest.raises(ConversionError, match="input_strides"):
        analyse(latent_two_inputs())


@pytest.mark.slow
def test_onnx_runtime_fallback_gives_the_same_geometry(monkeypatch):
    # force the path for graphs whose shapes ONNX shape inference cannot follow
    model = built("pool_unet_size")[1]
    exact = analyse(model)
    monkeypatch.setattr(graph_analysis._Graph, "_infer_at", lambda self, hw: {})
    assert analyse(model) == exact


# ---- user errors ----------------------------------------------------------------------------

def test_unreadable_model(tmp_path):
    with pytest.raises(ConversionError, match="not a readable ONNX model"):
        analyse(b"\x00 definitely not protobuf \xff" * 3)
    with pytest.raises(ConversionError, match="does not exist"):
        analyse(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ConversionError):
        analyse(bad)


def test_unknown_image_input():
    with pytest.raises(ConversionError, match="'image' is not an input"):
        analyse(built("plain")[1], image_input="image")
    with pytest.raises(ConversionError, match="'image' is not an input"):
        probe_radius(built("plain")[1], in_channels=3, multiple=1, image_input="image")


def test_output_at_another_resolution():
    model = export(nn.Sequential(conv(3, 8, stride=2), act(), conv(8, 3)))
    with pytest.raises(ConversionError, match="resolution"):
        analyse(model)
    with pytest.raises(ConversionError, match="resolution"):
        probe_radius(model, in_channels=3, multiple=2)


def test_unknown_op_asks_for_the_radius():
    nodes = [oh.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             oh.make_node("Trilu", ["c"], ["d"]),
             oh.make_node("Add", ["c", "d"], ["output"])]
    geo = analyse(make_model(nodes, {"w": weight(3, 3, 3, 3)}))
    assert geo.receptive_radius is None
    assert geo.unbounded_by == "op Trilu (node 'd') is not analysed; give receptive_radius in the spec"
