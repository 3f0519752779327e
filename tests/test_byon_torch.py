"""Bring your own torch network: any nn.Module becomes a rawdenoise model through torch2onnx.

Each network has a shape the zoo does not have. It is exported with a spec that leaves the
measurable fields out, then run through Denoiser.run on ONNX Runtime and compared with torch's
own output on the network input built here in float64 numpy (never by the SDK's packing)."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from converters import torch2onnx  # noqa: E402
from converters.graph_analysis import probe_radius  # noqa: E402
from rawdenoise import Denoiser, ModelSpec  # noqa: E402
from rawdenoise.errors import InputError, UnboundedContextWarning  # noqa: E402
from rawdenoise.extra_inputs import positional_normal  # noqa: E402

RTOL = 1e-4


# ---- networks -----------------------------------------------------------------------------------
class GatedShuffleNet(nn.Module):
    """RGB: pixel-unshuffle, BatchNorm, a sigmoid gate, a transposed conv, pixel-shuffle, residual."""

    def __init__(self, width=8):
        super().__init__()
        self.head = nn.Conv2d(12, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.gate = nn.Conv2d(width, width, 1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.tail = nn.Conv2d(width, 12, 3, padding=1)

    def forward(self, x):
        f = F.leaky_relu(self.bn(self.head(F.pixel_unshuffle(x, 2))), 0.1)
        f = f * torch.sigmoid(self.gate(f))
        f = f + self.up(F.relu(self.down(f)))
        return x + F.pixel_shuffle(self.tail(f), 2)


class MosaicNet(nn.Module):
    """One-channel CFA frame in and out; learns its own 2x2 packing with a stride-2 conv."""

    def __init__(self, width=8):
        super().__init__()
        self.pack = nn.Conv2d(1, width, 2, stride=2)
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(width, 4, 3, padding=1))

    def forward(self, x):
        return x + F.pixel_shuffle(self.body(self.pack(x)), 2)


class NoiseMapNet(nn.Module):
    """Grayscale, FFDNet-like: the noise-level map is a second input, concatenated to the image."""

    def __init__(self, width=8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x, sigma):
        return x - self.net(torch.cat([x, sigma], 1))


class LatentNet(nn.Module):
    """Packed Bayer with a random latent at 1/4 resolution (as invertible networks sample one)."""

    def __init__(self, width=8):
        super().__init__()
        self.enc = nn.Conv2d(4, width, 4, stride=4)
        self.mix = nn.Conv2d(width + 3, width, 3, padding=1)
        self.dec = nn.ConvTranspose2d(width, 4, 4, stride=4)

    def forward(self, x, z):
        return x + self.dec(F.relu(self.mix(torch.cat([self.enc(x), z], 1))))


class SqueezeExcite(nn.Module):
    """Global average pooling: no finite receptive field."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        f = self.conv(x)
        return f * torch.sigmoid(self.fc(f.mean(dim=(2, 3), keepdim=True)))


def random_module(cls, seed=0):
    torch.manual_seed(seed)
    m = cls()
    for mod in m.modules():  # non-trivial running statistics, so BatchNorm is really exercised
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    return m.eval()


def torch_out(module, *xs):
    with torch.no_grad():
        return module(*(torch.from_numpy(np.asarray(x, np.float32)) for x in xs)).double().numpy()


def export(module, spec, tmp_path, name="m.onnx"):
    path = tmp_path / name
    out_spec, diffs = torch2onnx.export(module, spec, path)
    assert diffs["max_abs_diff"] <= RTOL * diffs["output_range"]
    return path, out_spec


def assert_close(got, want):
    scale = max(1.0, float(np.ptp(want)))
    assert float(np.abs(np.asarray(got, np.float64) - want).max()) <= RTOL * scale


def check_radius(path, spec):
    radius = probe_radius(str(path), in_channels=spec.in_channels, multiple=spec.multiple,
                          extra_inputs={i.name: (i.channels, i.stride) for i in spec.inputs})
    assert spec.receptive_radius is not None and radius <= spec.receptive_radius
    assert spec.notes["measured"]["receptive_radius"]["value"] == spec.receptive_radius


# ---- routes ------------------------------------------------------------------------------------
def test_rgb_network_with_gates_and_pixel_shuffle(tmp_path, rng):
    module = random_module(GatedShuffleNet)
    path, spec = export(module, {"layout": "rgb"}, tmp_path)
    assert (spec.multiple, spec.channel_order, spec.in_channels) == (4, "RGB", 3)
    assert set(spec.notes["measured"]) == {"multiple", "receptive_radius", "tile"}
    img = rng.integers(0, 65536, (96, 160, 3)).astype(np.uint16)
    x = (img.astype(np.float64) / 65535.0).transpose(2, 0, 1)[None]
    want = np.clip(np.rint(torch_out(module, x)[0].transpose(1, 2, 0) * 65535.0), 0, 65535)
    with Denoiser.load(path, tile=0, border=0) as dn:
        got = dn.run(img)
    assert got.dtype == np.uint16 and got.shape == img.shape
    assert np.abs(got.astype(np.int64) - want).max() <= 1       # rounding of values within 1e-4
    with Denoiser.load(path, tile=32, border=0) as dn:
        tiled = dn.run(img)
        assert dn.plan(dn.prepare(img).x).n_tiles > 4
    np.testing.assert_array_equal(tiled, got)
    check_radius(path, spec)


@pytest.mark.parametrize("cfa", ["GRBG", "BGGR"])
def test_mosaic_network(tmp_path, cfa):
    module = random_module(MosaicNet)
    path, spec = export(module, {"layout": "mosaic", "channel_order": "GRBG", "output": "image"}, tmp_path)
    assert spec.multiple == 2 and spec.in_channels == 1
    rng = np.random.default_rng(3)
    black = np.array([0.01, 0.02, 0.03, 0.04])      # in the 2x2 order of the frame's cfa
    frame = rng.random((64, 96)).astype(np.float32)
    with Denoiser.load(path, tile=0, border=0) as dn:
        got = dn.run(frame, cfa=cfa, black_level=black, white_level=1.0)
    with Denoiser.load(path, tile=16, border=0) as dn:
        tiled = dn.run(frame, cfa=cfa, black_level=black, white_level=1.0)
    np.testing.assert_allclose(tiled, got, atol=1e-6)
    if cfa == spec.channel_order:   # the reference: the frame already in the model's phase
        site_black = np.tile(black.reshape(2, 2), (32, 48))
        x = (frame - site_black) / (1.0 - site_black)
        want = torch_out(module, x[None, None])[0, 0] * (1.0 - site_black) + site_black
        assert_close(got, want)
    check_radius(path, spec)


def test_grayscale_network_with_a_noise_level_input(tmp_path, rng):
    module = random_module(NoiseMapNet)
    spec_in = {"layout": "rgb", "in_channels": 1,
               "inputs": [{"name": "sigma", "kind": "noise_level", "channels": 1, "form": "std"}]}
    path, spec = export(module, spec_in, tmp_path)
    assert spec.channel_order == "L" and spec.inputs[0].name == "sigma"
    img = rng.random((80, 112)).astype(np.float32)
    k, s2 = 0.004, 1e-4
    want = torch_out(module, img[None, None], np.sqrt(k * np.maximum(img, 0) + s2)[None, None])[0, 0]
    for shape in [(80, 112), (80, 112, 1)]:
        with Denoiser.load(path, tile=0, border=0) as dn:
            got = dn.run(img.reshape(shape), noise=(k, s2))
        assert got.shape == shape
        assert_close(got.reshape(80, 112), want)
    with Denoiser.load(path, tile=32, border=0) as dn:
        np.testing.assert_allclose(dn.run(img, noise=(k, s2)), got.reshape(80, 112), atol=1e-6)


def test_random_latent_input_is_positional(tmp_path, rng):
    module = random_module(LatentNet)
    spec_in = {"layout": "bayer4", "inputs": [{"name": "z", "kind": "gaussian", "channels": 3, "stride": 4,
                                               "seed": 7}]}
    path, spec = export(module, spec_in, tmp_path)
    assert spec.multiple == 4
    raw = rng.integers(0, 4096, (128, 192)).astype(np.uint16)
    with Denoiser.load(path, tile=0, border=0) as dn:
        whole = dn.run(raw, cfa="RGGB", black_level=0, white_level=4095)
        again = dn.run(raw, cfa="RGGB", black_level=0, white_level=4095)
        z = rng.standard_normal((3, 16, 24)).astype(np.float32)
        given = dn.run(raw.astype(np.float32) / 4095, cfa="RGGB", inputs={"z": z})
    np.testing.assert_array_equal(whole, again)              # a function of the seed, not of the call
    with Denoiser.load(path, tile=16, border=0) as dn:
        np.testing.assert_array_equal(dn.run(raw, cfa="RGGB", black_level=0, white_level=4095), whole)
    # the caller's latent reproduces torch's output with that latent
    packed = (raw.astype(np.float64) / 4095).reshape(64, 2, 96, 2).transpose(1, 3, 0, 2).reshape(4, 64, 96)
    want = torch_out(module, packed[None], z[None])[0]
    assert_close(given, want.reshape(2, 2, 64, 96).transpose(2, 0, 3, 1).reshape(128, 192))
    check_radius(path, spec)


def test_positional_normal_is_a_field():
    a = positional_normal(5, 0, 2, 10, 20, 64, 64)
    b = positional_normal(5, 0, 2, 11, 23, 64, 64)
    np.testing.assert_array_equal(a[:, 1:, 3:], b[:, :-1, :-3])        # windows of one field
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1) < 0.05
    assert abs(np.corrcoef(a[0].ravel(), a[1].ravel())[0, 1]) < 0.05   # channels independent
    assert abs(np.corrcoef(a[0, :, :-1].ravel(), a[0, :, 1:].ravel())[0, 1]) < 0.05
    other = positional_normal(6, 0, 2, 10, 20, 64, 64)
    assert abs(np.corrcoef(a.ravel(), other.ravel())[0, 1]) < 0.05     # seeds independent
    assert abs(np.corrcoef(a.ravel(), positional_normal(5, 1, 2, 10, 20, 64, 64).ravel())[0, 1]) < 0.05


def test_global_context_is_unbounded_and_feathered(tmp_path, rng):
    module = random_module(SqueezeExcite)
    path, spec = export(module, {"layout": "rgb"}, tmp_path)
    assert spec.receptive_radius is None
    assert "ReduceMean" in spec.notes["unbounded_by"] and "whole frame" in spec.notes["unbounded_by"]
    img = rng.random((64, 96, 3)).astype(np.float32)
    with Denoiser.load(path, tile=0, border=0) as dn:                          # one pass: exact
        assert_close(dn.run(img), torch_out(module, img.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0))
    with pytest.warns(UnboundedContextWarning, match="feathered"):
        dn = Denoiser.load(path, tile=32, border=0)
    assert dn.blend == "feather" and dn.overlap > 0
    dn.close()


# ---- command line and bad input ----------------------------------------------------------------------
NETS_PY = '''
import torch
from torch import nn

class Small(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))
'''


@pytest.fixture
def user_code(tmp_path):
    (tmp_path / "mynets.py").write_text(NETS_PY)
    sys.path.insert(0, str(tmp_path))
    try:
        import mynets
        torch.manual_seed(1)
        net = mynets.Small(width=6)
        torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "w.pth")
        (tmp_path / "spec.json").write_text(json.dumps({"layout": "rgb", "name": "small"}))
        yield tmp_path, net
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynets", None)


def test_cli_module_weights_kwargs(user_code, capsys):
    d, net = user_code
    out = d / "small.onnx"
    assert torch2onnx.main(["--module", "mynets:Small", "--kwargs", '{"width": 6}', "--weights", str(d / "w.pth"),
                            "--spec", str(d / "spec.json"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "receptive_radius 2 (measured)" in printed and "multiple 1 (measured)" in printed
    img = np.random.default_rng(0).random((40, 56, 3)).astype(np.float32)
    with Denoiser.load(out, tile=0, border=0) as dn:
        assert dn.spec.origin["module"] == "mynets:Small" and dn.spec.origin["sha256"]
        assert_close(dn.run(img), torch_out(net, img.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0))
    # rawdenoise info shows which values were measured
    r = subprocess.run([sys.executable, "-m", "rawdenoise", "info", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "measured" in r.stdout and "receptive_radius" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--module", "no_such_pkg.nets:Net"], "does not import"),
    (["--module", "mynets:Missing"], "has no attribute"),
    (["--module", "mynets:Small", "--weights", "w_bad.pth"], "do not fit Small"),
    (["--module", "mynets:Small", "--spec", "bad_spec.json"], "unknown fields"),
    (["--module", "mynets:Small", "--spec", "bayer_spec.json"], "4 channel"),
    (["--module", "mynets:Small", "--kwargs", "{width: 6}"], "not valid JSON"),
])
def test_bad_input_is_one_line_and_writes_nothing(user_code, capsys, args, message):
    d, _ = user_code
    torch.save(nn.Conv2d(3, 3, 5).state_dict(), d / "w_bad.pth")
    (d / "bad_spec.json").write_text(json.dumps({"layout": "rgb", "widht": 3}))
    (d / "bayer_spec.json").write_text(json.dumps({"layout": "bayer4"}))
    argv = args + ([] if "--spec" in args else ["--spec", str(d / "spec.json")])
    argv = [str(d / a) if a.startswith(("w_bad", "bad_spec", "bayer_spec")) else a for a in argv]
    out = d / "x.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch2onnx.main(argv + ["-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not out.exists() and not list(d.glob(".x.onnx*"))


def test_spec_object_and_given_values_win(tmp_path):
    module = random_module(MosaicNet)
    spec = ModelSpec(layout="mosaic", multiple=8, receptive_radius=12, tile=64)
    _, out = export(module, spec, tmp_path)
    assert (out.multiple, out.receptive_radius, out.tile) == (8, 12, 64) and "measured" not in out.notes


def test_monte_carlo_samples_average_draws_before_rounding(tmp_path, rng):
    module = random_module(LatentNet)
    spec_in = {"layout": "bayer4", "samples": 3,
               "inputs": [{"name": "z", "kind": "gaussian", "channels": 3, "stride": 4, "seed": 7, "std": 2.0}]}
    path, spec = export(module, spec_in, tmp_path)
    frame = rng.random((64, 96)).astype(np.float32)
    with Denoiser.load(path, tile=0, border=0) as dn:
        # the draws the SDK makes: the seed's field at draw d over the (32 x 48 packed) frame, times std
        runs = [dn.run(frame, cfa="RGGB", inputs={"z": 2.0 * positional_normal(7, d, 3, 0, 0, 8, 12)})
                for d in range(3)]
        mean = dn.run(frame, cfa="RGGB")                            # the manifest's samples: 3
        np.testing.assert_allclose(mean, np.mean(runs, axis=0), atol=1e-6)
        assert np.abs(runs[0] - runs[1]).max() > 1e-3              # the draws really differ
        np.testing.assert_allclose(dn.run(frame, cfa="RGGB", samples=1), runs[0], atol=1e-6)
        ints = (frame * 4095).astype(np.uint16)
        got = dn.run(ints, cfa="RGGB", black_level=0, white_level=4095, samples=2)
        each = [dn.run(ints.astype(np.float64) / 4095, cfa="RGGB",
                       inputs={"z": 2.0 * positional_normal(7, d, 3, 0, 0, 8, 12)}) for d in range(2)]
        assert np.abs(got - np.clip(np.rint(np.mean(each, axis=0) * 4095), 0, 4095)).max() <= 1
        with pytest.raises(InputError, match="samples must be a positive integer"):
            dn.run(frame, cfa="RGGB", samples=0)
        with pytest.raises(InputError, match="fixes all"):
            dn.run(frame, cfa="RGGB", samples=2, inputs={"z": np.zeros((3, 8, 12), np.float32)})


def test_samples_need_random_inputs(tmp_path):
    path, _ = export(random_module(GatedShuffleNet), {"layout": "rgb"}, tmp_path)
    with Denoiser.load(path) as dn, pytest.raises(InputError, match="has none"):
        dn.run(np.zeros((8, 8, 3), np.float32), samples=4)


def test_spec_objects_leave_measurable_fields_to_the_graph(tmp_path):
    """ModelSpec.from_json of a partial spec.json knows what it was given; a ModelSpec built in code
    with the measurable fields at their defaults gets them measured too."""
    module = random_module(GatedShuffleNet)
    for k, spec in enumerate([ModelSpec.from_json('{"layout": "rgb", "name": "g"}'), ModelSpec(layout="rgb")]):
        _, out = export(module, spec, tmp_path, f"s{k}.onnx")
        assert out.multiple == 4 and out.receptive_radius > 0
        assert set(out.notes["measured"]) == {"multiple", "receptive_radius", "tile"}
    _, out = export(module, ModelSpec.from_json('{"layout": "rgb", "multiple": 8}'), tmp_path, "s3.onnx")
    assert out.multiple == 8 and "multiple" not in out.notes["measured"]
