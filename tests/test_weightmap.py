"""Layout transforms and strictness of converters.weightmap, against independent numpy references."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from converters.weightmap import apply_map, apply_transforms, build_map, normalise_tf_names  # noqa: E402
from rawdenoise.errors import ConversionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tf_depth_to_space(x, r):
    """TF semantics (NHWC, DCR): out[n, h*r+i, w*r+j, c] = x[n, h, w, (i*r+j)*C + c]."""
    n, h, w, crr = x.shape
    c = crr // (r * r)
    out = np.empty((n, h * r, w * r, c), x.dtype)
    for i in range(r):
        for j in range(r):
            out[:, i::r, j::r, :] = x[:, :, :, (i * r + j) * c:(i * r + j + 1) * c]
    return out


def test_dcr_to_crd_makes_pixel_shuffle_equal_depth_to_space(rng):
    r, c = 2, 3
    tf_channels = rng.standard_normal((c * r * r, 5, 4)).astype(np.float32)  # conv output in TF order
    want = tf_depth_to_space(tf_channels.transpose(1, 2, 0)[None], r)[0].transpose(2, 0, 1)
    reordered = apply_transforms(tf_channels, ["dcr_to_crd:2"])
    got = torch.pixel_shuffle(torch.from_numpy(reordered)[None], r)[0].numpy()
    np.testing.assert_array_equal(got, want)


def test_tf_batchnorm_with_keras_epsilon(rng):
    bn = nn.BatchNorm2d(4).eval()
    src = {"bn/gamma": rng.random(4) + 0.5, "bn/beta": rng.standard_normal(4),
           "bn/moving_mean": rng.standard_normal(4), "bn/moving_variance": rng.random(4) * 1e-3}
    holder = nn.Module()
    holder.bn = bn
    entries = build_map(holder, "tf")
    mapped = apply_map(entries, src, {k: tuple(v.shape) for k, v in holder.state_dict().items()}, "tf")
    holder.load_state_dict({k: torch.from_numpy(v) for k, v in mapped.items()}, strict=False)
    x = rng.standard_normal((1, 4, 3, 3))
    want = ((x - src["bn/moving_mean"][:, None, None]) / np.sqrt(src["bn/moving_variance"][:, None, None] + 1e-3)
            * src["bn/gamma"][:, None, None] + src["bn/beta"][:, None, None])
    with torch.no_grad():
        got = bn(torch.from_numpy(x.astype(np.float32))).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("framework", ["tf", "paddle"])
def test_dense_layout_in_out(rng, framework):
    holder = nn.Module()
    holder.fc = nn.Linear(5, 3)
    w, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    sep = "/" if framework == "tf" else "."
    src = {f"fc{sep}weight" if framework == "paddle" else "fc/kernel:0": w, f"fc{sep}bias": b}
    if framework == "tf":
        src = normalise_tf_names(src)
    mapped = apply_map(build_map(holder, framework), src, {k: tuple(v.shape) for k, v in holder.state_dict().items()},
                       framework)
    holder.load_state_dict({k: torch.from_numpy(v) for k, v in mapped.items()})
    x = rng.standard_normal((2, 5)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(holder.fc(torch.from_numpy(x)).numpy(), x @ w + b, atol=1e-5)


def test_conv_layouts_against_explicit_loops(rng):
    k = rng.standard_normal((3, 3, 2, 5))  # HWIO
    got = apply_transforms(k, ["hwio_to_oihw"])
    for o in range(5):
        for i in range(2):
            np.testing.assert_array_equal(got[o, i], k[:, :, i, o])
    dw = rng.standard_normal((5, 5, 4, 2))  # [kh, kw, in, mult]
    got = apply_transforms(dw, ["tf_depthwise"])
    assert got.shape == (8, 1, 5, 5)
    for c in range(4):
        for m in range(2):
            np.testing.assert_array_equal(got[c * 2 + m, 0], dw[:, :, c, m])
    tk = rng.standard_normal((2, 2, 6, 7))  # TF transposed conv [kh, kw, out, in]
    got = apply_transforms(tk, ["tf_deconv"])
    for i in range(7):
        for o in range(6):
            np.testing.assert_array_equal(got[i, o], tk[:, :, o, i])


def test_tf_name_normalisation():
    names = ["net/enc_conv0/_kernel/.ATTRIBUTES/VARIABLE_VALUE", "model_weights/a/a/kernel:0", "autoencoder/b/weight",
             "layers/conv2d_3/vars/1", "_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
             "enc/weight/Adam", "optimizer/iter"]
    got = sorted(normalise_tf_names({n: np.zeros(1) for n in names}))
    assert got == ["autoencoder/b/weight", "layers/conv2d_3/#1", "model_weights/a/a/weight", "net/enc_conv0/weight"]


def test_strict_errors_name_every_problem(rng):
    from rawdenoise import zoo

    m = zoo.create("n2n")
    src = {k.replace(".", "/"): np.zeros(tuple(v.shape)[2:] + tuple(v.shape)[1::-1] if v.ndim == 4 else v.shape,
                                         np.float32)
           for k, v in m.state_dict().items()}
    src["dec_conv1/weight"] = np.zeros((3, 3, 32, 4), np.float32)  # wrong out channels
    src["enc_conv3/bias_extra"] = np.zeros(48, np.float32)  # unused
    del src["enc_conv6/bias"]  # missing
    with pytest.raises(ConversionError) as e:
        apply_map(build_map(m, "tf", "n2n"), src, {k: tuple(v.shape) for k, v in m.state_dict().items()}, "tf")
    msg = str(e.value)
    assert "3 problems" in msg
    assert "missing 'enc_conv6/bias'" in msg
    assert "'dec_conv1/weight' (3, 3, 32, 4) -> (4, 32, 3, 3)" in msg and "(3, 32, 3, 3)" in msg
    assert "unused source tensor 'enc_conv3/bias_extra'" in msg and "closest: enc_conv6/bias" in msg


def test_tf_checkpoint_without_tensorflow_names_the_extra(tmp_path):
    (tmp_path / "model.index").write_bytes(b"x")
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "from converters.tf2torch import main\n"
            f"sys.exit(main([{str(tmp_path / 'model')!r}, '--arch', 'n2n', '-o', {str(tmp_path / 'o.pt')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "tensorflow" in r.stderr and "rawdenoise[tf]" in r.stderr and "Traceback" not in r.stderr
