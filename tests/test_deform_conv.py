"""Modulated deformable convolution (rawdenoise.zoo.deform) against a float64 loop reference written
from mmcv's sampling rule, and its two ONNX forms against ONNX Runtime."""

import io
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rawdenoise.errors import InputError  # noqa: E402
from rawdenoise.zoo import deform  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the reference: one output pixel, one tap, one channel at a time (float64 numpy) -------------
def _pixel(img, y, x):
    h, w = img.shape
    return img[y, x] if 0 <= y < h and 0 <= x < w else 0.0


def _bilinear(img, y, x):
    """Bilinear sample at (y, x); each of the four neighbours is zero outside the image."""
    y0, x0 = math.floor(y), math.floor(x)
    fy, fx = y - y0, x - x0
    return ((1 - fy) * (1 - fx) * _pixel(img, y0, x0) + (1 - fy) * fx * _pixel(img, y0, x0 + 1)
            + fy * (1 - fx) * _pixel(img, y0 + 1, x0) + fy * fx * _pixel(img, y0 + 1, x0 + 1))


def reference(x, offset, mask, weight, bias, stride, pad, dil, groups, dgroups):
    """mmcv semantics: tap k = i*kw + j of deformable group g reads its (dy, dx) from offset channels
    g*2K + 2k and g*2K + 2k + 1 and its modulation from mask channel g*K + k."""
    n, c, _, _ = x.shape
    o, cin_g, kh, kw = weight.shape
    taps = kh * kw
    ho, wo = offset.shape[2:]
    out = np.zeros((n, o, ho, wo))
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                for ch in range(c):
                    g = ch // (c // dgroups)
                    grp = ch // cin_g
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            y = oy * stride - pad + i * dil + offset[b, g * 2 * taps + 2 * k, oy, ox]
                            xx = ox * stride - pad + j * dil + offset[b, g * 2 * taps + 2 * k + 1, oy, ox]
                            v = _bilinear(x[b, ch], y, xx) * mask[b, g * taps + k, oy, ox]
                            for oc in range(grp * (o // groups), (grp + 1) * (o // groups)):
                                out[b, oc, oy, ox] += weight[oc, ch - grp * cin_g, i, j] * v
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def _case(rng, n, c, h, w, o, k, stride, pad, dil, groups, dgroups, spread):
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    offset = rng.standard_normal((n, dgroups * 2 * k * k, ho, wo)) * spread
    # some offsets exactly on integers, on the border (-1, size) and far outside
    flat = offset.reshape(-1)
    idx = rng.choice(flat.size, flat.size // 4, replace=False)
    flat[idx] = rng.choice([-h - 2, -1.0, 0.0, 1.0, 2.0, float(h), float(w), w + 3.0], idx.size)
    return (rng.standard_normal((n, c, h, w)), offset, rng.random((n, dgroups * k * k, ho, wo)),
            rng.standard_normal((o, c // groups, k, k)), rng.standard_normal(o))


CASES = {  # n, c, h, w, o, k, stride, pad, dil, groups, deform_groups (AirNet: 3x3, pad 1, 1, 1)
    "airnet-like": (2, 4, 7, 9, 5, 3, 1, 1, 1, 1, 1),
    "deform-groups-2-groups-2": (1, 4, 8, 6, 4, 3, 1, 1, 1, 2, 2),
    "stride-2": (1, 6, 9, 8, 3, 3, 2, 1, 1, 1, 3),
    "dilation-2-pad-2": (1, 2, 6, 7, 3, 3, 1, 2, 2, 1, 2),
}


@pytest.mark.parametrize("all_taps", [False, True], ids=["tap-by-tap", "all-taps"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_float64_loop_reference(name, all_taps):
    n, c, h, w, o, k, stride, pad, dil, groups, dgroups = CASES[name]
    rng = np.random.default_rng(sorted(CASES).index(name))
    x, offset, mask, weight, bias = _case(rng, n, c, h, w, o, k, stride, pad, dil, groups, dgroups, spread=3.0)
    ref = reference(x, offset, mask, weight, bias, stride, pad, dil, groups, dgroups)
    args = (stride, pad, dil, groups, dgroups, all_taps)
    t = [torch.from_numpy(a) for a in (x, offset, mask, weight, bias)]
    got64 = deform.modulated_deform_conv2d(*t, *args).numpy()
    assert got64.shape == ref.shape
    np.testing.assert_allclose(got64, ref, atol=1e-10, rtol=0)
    got32 = deform.modulated_deform_conv2d(*(a.float() for a in t), *args).double().numpy()
    np.testing.assert_allclose(got32, ref, atol=2e-5 * np.abs(ref).max(), rtol=0)


def test_half_precision_samples_at_float32_positions():
    rng = np.random.default_rng(5)
    t = [torch.from_numpy(a) for a in _case(rng, 1, 4, 9, 40, 3, 3, 1, 1, 1, 1, 1, spread=3.0)]
    ref = deform.modulated_deform_conv2d(*t, 1, 1, 1, 1, 1)
    got = deform.modulated_deform_conv2d(*(a.half() for a in t), 1, 1, 1, 1, 1)
    assert got.dtype == torch.float16
    assert float((got.double() - ref).abs().max()) < 5e-3 * float(ref.abs().max())


def test_offsets_are_dy_dx_pairs_per_tap():
    # only the centre tap has weight 1: the output is the input read at (y + dy, x + dx)
    img = torch.arange(48, dtype=torch.float64).reshape(1, 1, 6, 8)
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1
    offset = torch.zeros(1, 18, 6, 8, dtype=torch.float64)
    offset[:, 8] = 2.0     # channel 2k, k = 4 (centre): dy
    offset[:, 9] = -1.0    # channel 2k + 1: dx
    mask = torch.full((1, 9, 6, 8), 0.5, dtype=torch.float64)
    out = deform.modulated_deform_conv2d(img, offset, mask, weight, None, 1, 1, 1, 1, 1)[0, 0]
    want = torch.zeros(6, 8, dtype=torch.float64)
    want[:4, 1:] = img[0, 0, 2:, :7]
    assert torch.equal(out, 0.5 * want)


def test_gradients_flow():
    rng = np.random.default_rng(3)
    x, offset, mask, weight, bias = (torch.from_numpy(a).requires_grad_(True)
                                     for a in _case(rng, 1, 2, 5, 6, 2, 3, 1, 1, 1, 1, 1, spread=1.5))
    deform.modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1, 1, 1, 1).square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (x, offset, mask, weight, bias))


def test_unknown_export_form_is_refused_in_one_line():
    with pytest.raises(InputError) as e:
        deform.check_export_form("mmcv")
    msg = str(e.value)
    assert "'mmcv'" in msg and "deformconv" in msg and "gridsample" in msg and "\n" not in msg


# ---- ONNX: DeformConv (opset 19) and the GridSample decomposition --------------------------------
class _Layer(torch.nn.Module):
    """Offsets and mask from a conv (scaled so that sampling moves by several pixels), then DCNv2."""

    def __init__(self, form, groups, dgroups, bias):
        super().__init__()
        self.form, self.groups, self.dgroups = form, groups, dgroups
        self.off = torch.nn.Conv2d(4, dgroups * 27, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.randn(6, 4 // groups, 3, 3) * 0.3)
        self.bias = torch.nn.Parameter(torch.randn(6)) if bias else None
        with torch.no_grad():
            self.off.weight.mul_(12.0)

    def forward(self, x):
        o = self.off(x)
        taps = 9 * self.dgroups
        return deform.deform_conv(x, o[:, :2 * taps], torch.sigmoid(o[:, 2 * taps:]), self.weight, self.bias,
                                  padding=1, groups=self.groups, deform_groups=self.dgroups, export=self.form)


@pytest.mark.parametrize("form", deform.EXPORT_FORMS)
def test_onnx_forms_match_torch_in_onnxruntime(form, groups=2, dgroups=2, bias=True):
    # AirNet's own configuration (one group, no bias) is exported in tests/test_airnet.py
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    layer = _Layer(form, groups, dgroups, bias).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.rand(1, 4, 16, 20),), buf, input_names=["input"], output_names=["output"],
                          opset_version=deform.MIN_OPSET[form] if form == "deformconv" else 17, dynamo=False,
                          dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}})
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert ("DeformConv" in ops) == (form == "deformconv") and ("GridSample" in ops) == (form == "gridsample")
    x = np.random.default_rng(1).random((2, 4, 23, 31), dtype=np.float32)   # not the traced size
    with torch.no_grad():
        ref = layer(torch.from_numpy(x))
        offsets = layer.off(torch.from_numpy(x))[:, :18 * dgroups]
    assert offsets.abs().mean() > 2.0 and offsets.abs().max() > 8.0   # sampling really moves
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x})
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=0)
