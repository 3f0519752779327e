"""AirNet in the zoo: the published All.pth key structure, its import, the manifest, parity with an
independent transcription of the official forward (torch and ONNX Runtime, both export forms), and
tiling of a network whose deformable sampling makes the receptive field data-dependent."""

import io
import pickle
import time
import warnings
import zipfile
from collections import Counter, OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from rawdenoise import zoo  # noqa: E402
from rawdenoise.denoiser import Denoiser  # noqa: E402
from rawdenoise.errors import ConversionError, UnboundedContextWarning  # noqa: E402
from rawdenoise.zoo.deform import modulated_deform_conv2d  # noqa: E402

# The official forward zero-pads at the frame's edges; the SDK can mirror a border there instead
# (Denoiser border=). Comparisons with the official forward, and of tiled with untiled runs, turn it off.
NO_BORDER = {"border": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the published checkpoint's layout, from the official module structure ------------------------
def _conv(p, cout, cin, k, bias=True):
    return [(p + ".weight", (cout, cin, k, k))] + ([(p + ".bias", (cout,))] if bias else [])


def _bn(p, c):
    return [(p + "." + leaf, (c,)) for leaf in ("weight", "bias", "running_mean", "running_var")] + \
        [(p + ".num_batches_tracked", ())]


def _resblock(p, cin, cout):
    return (_conv(p + ".backbone.0", cout, cin, 3, False) + _bn(p + ".backbone.1", cout)
            + _conv(p + ".backbone.3", cout, cout, 3, False) + _bn(p + ".backbone.4", cout)
            + _conv(p + ".shortcut.0", cout, cin, 1, False) + _bn(p + ".shortcut.1", cout))


def _res_encoder(p):
    return (_resblock(p + ".E_pre", 3, 64) + _resblock(p + ".E.0", 64, 128) + _resblock(p + ".E.1", 128, 256)
            + [(p + ".mlp.0.weight", (256, 256)), (p + ".mlp.0.bias", (256,)),
               (p + ".mlp.2.weight", (256, 256)), (p + ".mlp.2.bias", (256,))])


def published_layout(groups=5, blocks=5):
    """(name, shape) of `AirNet(opt).state_dict()` in the official code (All.pth: 5 groups of 5
    blocks, opt.batch_size 5), in state_dict order: the restorer R, then the MoCo module's own
    buffers (queue, queue_ptr) before its two encoders."""
    keys = _conv("R.head.0", 64, 3, 3)
    for g in range(groups):
        for b in range(blocks):
            p = f"R.body.{g}.body.{b}"
            for dgm in ("dgm1", "dgm2"):
                q = f"{p}.{dgm}"
                keys += [(q + ".dcn.weight", (64, 64, 3, 3))] + _conv(q + ".dcn.conv_offset_mask", 27, 128, 3)
                for s in ("conv_gamma", "conv_beta"):
                    keys += _conv(f"{q}.sft.{s}.0", 64, 64, 1, False) + _conv(f"{q}.sft.{s}.2", 64, 64, 1, False)
            keys += _conv(p + ".conv1", 64, 64, 3) + _conv(p + ".conv2", 64, 64, 3)
        keys += _conv(f"R.body.{g}.body.{blocks}", 64, 64, 3)
    keys += _conv(f"R.body.{groups}", 64, 64, 3) + _conv("R.tail.0", 3, 64, 3)
    keys += [("E.E.queue", (256, 5 * 256)), ("E.E.queue_ptr", (1,))]
    return keys + _res_encoder("E.E.encoder_q") + _res_encoder("E.E.encoder_k")


PREFIX_COUNTS = {"R.": 466, "E.E.queue": 1, "E.E.queue_ptr": 1, "E.E.encoder_q.E_pre.": 18, "E.E.encoder_q.E.": 36,
                 "E.E.encoder_q.mlp.": 4, "E.E.encoder_k.": 58}
DROPPED = {"E.E.queue": 1, "E.E.queue_ptr": 1, "E.E.encoder_q.E.*": 36, "E.E.encoder_q.mlp.*": 4,
           "E.E.encoder_k.*": 58, "*.num_batches_tracked": 3}


def _prefix(name):
    if name in ("E.E.queue", "E.E.queue_ptr"):
        return name
    return next(p for p in PREFIX_COUNTS if p.endswith(".") and name.startswith(p))


def random_published(seed=0, offset_gain=10.0, groups=5, blocks=5):
    """Random tensors in the published layout. Convs are scaled to keep 25 residual blocks stable;
    `offset_gain` scales the offset/mask convs so that sampling moves by about 0.2 * gain px."""
    gen = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for name, shape in published_layout(groups, blocks):
        leaf = name.rsplit(".", 1)[1]
        if leaf in ("num_batches_tracked", "queue_ptr"):
            sd[name] = torch.randint(0, 1000, shape, generator=gen)
            continue
        t = torch.randn(shape, generator=gen)
        if leaf == "running_var":
            t = t.abs() * 0.5 + 0.5
        elif leaf in ("running_mean", "bias"):
            t = t * (0.005 * offset_gain if "conv_offset_mask" in name else 0.05)
        elif leaf == "weight" and len(shape) == 1:  # BatchNorm scale
            t = 1 + 0.1 * t
        elif leaf == "weight":
            gain = offset_gain if "conv_offset_mask" in name else 0.3 if ".sft." in name else 0.5
            t = t * gain / float(np.prod(shape[1:])) ** 0.5
        sd[name] = t
    return sd


# ---- the official forward, transcribed on the state dict (deformable conv: the float64-validated op)
def _bn_eval(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, 1e-5)


def _c(x, sd, p, pad=1):
    return F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), padding=pad)


def _resblock_fwd(x, sd, p, stride):
    y = F.leaky_relu(_bn_eval(F.conv2d(x, sd[p + ".backbone.0.weight"], stride=stride, padding=1), sd,
                              p + ".backbone.1"), 0.1)
    y = _bn_eval(F.conv2d(y, sd[p + ".backbone.3.weight"], padding=1), sd, p + ".backbone.4")
    return F.leaky_relu(y + _bn_eval(F.conv2d(x, sd[p + ".shortcut.0.weight"], stride=stride), sd, p + ".shortcut.1"),
                        0.1)


def official_forward(sd, x):
    """net(x_query=x, x_key=x) in eval mode: CBDE -> MoCo.encoder_q -> (fea, _, inter); R(x, inter)."""
    groups = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("R.body.") and ".body." in k[7:])
    blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("R.body.0.body.") and ".dgm1." in k)
    inter = _resblock_fwd(x, sd, "E.E.encoder_q.E_pre", 1)
    if "E.E.encoder_q.E.0.backbone.0.weight" in sd:  # the pooled embedding; computed, never used by R
        _resblock_fwd(_resblock_fwd(inter, sd, "E.E.encoder_q.E.0", 2), sd, "E.E.encoder_q.E.1", 2).mean((2, 3))

    def dgm(h, p):
        o1, o2, m = torch.chunk(_c(torch.cat([h, inter], 1), sd, p + ".dcn.conv_offset_mask"), 3, dim=1)
        d = modulated_deform_conv2d(h, torch.cat((o1, o2), 1), torch.sigmoid(m), sd[p + ".dcn.weight"], None,
                                    1, 1, 1, 1, 1)
        gamma = _c(F.leaky_relu(_c(inter, sd, p + ".sft.conv_gamma.0", 0), 0.1), sd, p + ".sft.conv_gamma.2", 0)
        beta = _c(F.leaky_relu(_c(inter, sd, p + ".sft.conv_beta.0", 0), 0.1), sd, p + ".sft.conv_beta.2", 0)
        return h + (d + (h * gamma + beta))

    head = _c(x, sd, "R.head.0")
    res = head
    for g in range(groups):
        r = res
        for b in range(blocks):
            p = f"R.body.{g}.body.{b}"
            o = F.leaky_relu(dgm(r, p + ".dgm1"), 0.1)
            o = F.leaky_relu(_c(o, sd, p + ".conv1"), 0.1)
            o = F.leaky_relu(dgm(o, p + ".dgm2"), 0.1)
            r = _c(o, sd, p + ".conv2") + r
        res = _c(r, sd, f"R.body.{g}.body.{blocks}") + res
    return _c(_c(res, sd, f"R.body.{groups}") + head, sd, "R.tail.0")


def reference(sd, img):
    """official_forward in float64 on an H x W x 3 image; returns H x W x 3."""
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    with torch.no_grad():
        y = official_forward(sd64, torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float64)))
    return y[0].numpy().transpose(1, 2, 0)


# ---- a file laid out like the release: torch 1.7 zip, OrderedDict state_dict, CUDA storages ---------
class _Storage:
    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, tuple(shape)

    def __reduce__(self):
        stride, step = [], 1
        for d in reversed(self.shape):
            stride.insert(0, step)
            step *= d
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.shape, tuple(stride), False, OrderedDict())


class _CudaPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return "storage", obj.storage_type, obj.key, "cuda:0", obj.numel
        return None


def write_release_file(sd, path):
    """`torch.save(net.state_dict(), 'ckpt/All.pth')` as torch 1.7 on a GPU writes it: a zip whose folder is
    the file's stem, pickle protocol 2 of an OrderedDict (with `_metadata`), one record per storage."""
    records, state = {}, OrderedDict()
    for i, (name, t) in enumerate(sd.items()):
        long = t.dtype == torch.int64
        records[f"data/{i}"] = t.contiguous().numpy().astype("<i8" if long else "<f4").tobytes()
        kind = torch.LongStorage if long else torch.FloatStorage
        state[name] = _Tensor(_Storage(str(i), kind, t.numel()), t.shape)
    state._metadata = OrderedDict((".".join(k.split(".")[:j]), {"version": 1})
                                  for k in sd for j in range(k.count(".") + 1))
    buf = io.BytesIO()
    _CudaPickler(buf, protocol=2).dump(state)
    stem = path.stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{stem}/data.pkl", buf.getvalue())
        for name, data in records.items():
            z.writestr(f"{stem}/{name}", data)
        z.writestr(f"{stem}/version", b"3\n")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(path, state dict) of a random All.pth in the release's layout, sampling moving ~2 px."""
    sd = random_published(seed=0, offset_gain=10.0)
    path = tmp_path_factory.mktemp("airnet") / "All.pth"
    write_release_file(sd, path)
    return path, sd


def _offset_stats(module, img):
    seen = []
    hooks = [m.conv_offset_mask.register_forward_hook(lambda mod, i, o: seen.append(o[:, :18].abs()))
             for m in module.modules() if hasattr(m, "conv_offset_mask")]
    with torch.no_grad():
        module(torch.from_numpy(img.transpose(2, 0, 1)[None].copy()))
    for h in hooks:
        h.remove()
    a = torch.cat([s.flatten() for s in seen])
    return float(a.mean()), float(a.max())


def _image(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


# ---- structure and manifest -------------------------------------------------------------------------------
def test_published_layout_has_584_keys():
    names = [n for n, _ in published_layout()]
    assert len(names) == len(set(names)) == 584
    assert Counter(map(_prefix, names)) == PREFIX_COUNTS and sum(PREFIX_COUNTS.values()) == 584
    assert dict(published_layout())["E.E.queue"] == (256, 1280)


def test_module_is_the_inference_subset_in_published_order():
    own = {k: tuple(v.shape) for k, v in zoo.create("airnet").state_dict().items()}
    pub = dict(published_layout())
    assert len(own) == 466 + 18
    assert [k for k in pub if k in own] == list(own)
    assert all(pub[k] == s for k, s in own.items())
    rule = zoo.get("airnet").factory.training_only
    dropped = Counter(rule(k) for k in pub if rule(k))
    assert dropped == DROPPED and sum(dropped.values()) == 584 - 481
    # every published key is either loaded or declared training-only, never both
    assert all((k in own) != bool(rule(k)) or k.endswith("num_batches_tracked") for k in pub)


def test_manifest():
    s = zoo.default_spec("airnet")
    assert (s.layout, s.channel_order, s.in_channels, s.out_channels) == ("rgb", "RGB", 3, 3)
    assert (s.scale, s.offset, s.clip_input, s.output, s.multiple) == (1.0, 0.0, False, "image", 1)
    assert s.receptive_radius is None and s.unbounded and "108" in s.notes["unbounded_by"]
    assert "E.E.encoder_k" in s.notes["weights"] and "unclamped" in s.notes["preprocessing"]
    assert zoo.create("airnet").min_onnx_opset == 19
    assert zoo.create("airnet", deform_export="gridsample", groups=1, blocks=1).min_onnx_opset == 16


# ---- import of the release file -----------------------------------------------------------------------------
def test_import_reads_the_release_layout(release, tmp_path):
    path, sd = release
    with pytest.raises(RuntimeError, match="CUDA"):  # saved on a GPU, like the release
        torch.load(path, weights_only=True)
    from converters.import_weights import main

    assert main([str(path), "--arch", "airnet", "-o", str(tmp_path / "airnet.pt")]) == 0
    payload = zoo.read(tmp_path / "airnet.pt")
    assert payload["spec"]["origin"]["source_file"] == "All.pth" and payload["arch_kwargs"] == {}
    note = payload["spec"]["notes"]["dropped_on_import"]
    assert note.startswith("103 training-only tensors of All.pth")
    assert all(f"{group} ({n})" in note for group, n in DROPPED.items())
    assert payload["spec"]["receptive_radius"] is None
    module, _ = zoo.load(tmp_path / "airnet.pt")
    own = module.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in own if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("damage", ["shape", "missing"])
def test_import_refuses_a_wrong_shape_or_a_missing_key(release, tmp_path, damage, capsys):
    _, sd = release
    bad = OrderedDict(sd)
    if damage == "shape":
        bad["R.body.2.body.3.dgm2.dcn.conv_offset_mask.weight"] = torch.zeros(18, 128, 3, 3)
    else:
        del bad["E.E.encoder_q.E_pre.shortcut.1.running_var"]
    write_release_file(bad, tmp_path / "All.pth")
    from converters.import_weights import convert, main

    with pytest.raises(ConversionError) as e:
        convert(tmp_path / "All.pth", "airnet", tmp_path / "x.pt")
    msg = str(e.value)
    assert "\n" not in msg and "1 problems" in msg
    if damage == "shape":
        assert "R.body.2.body.3.dgm2.dcn.conv_offset_mask.weight" in msg and "(27, 128, 3, 3)" in msg
    else:
        assert "missing 'E.E.encoder_q.E_pre.shortcut.1.running_var'" in msg
    assert main([str(tmp_path / "All.pth"), "--arch", "airnet", "-o", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not match" in err
    assert not (tmp_path / "x.pt").exists()


# ---- parity with the official forward -----------------------------------------------------------------------
def test_torch_matches_the_official_forward(release, tmp_path):
    path, sd = release
    from converters.import_weights import convert

    convert(path, "airnet", tmp_path / "airnet.pt")
    module, spec = zoo.load(tmp_path / "airnet.pt")
    img = _image(12, 17)
    mean, peak = _offset_stats(module, img)
    assert mean > 1.0 and peak > 5.0, (mean, peak)   # the deformable convs sample pixels away
    ref = reference(sd, img)
    with Denoiser.from_module(module, spec, tile=0, **NO_BORDER) as dn:
        got = dn.run(img)
    assert got.shape == img.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("form", ["deformconv", "gridsample"])
def test_onnx_forms_match_the_official_forward(form, tmp_path):
    # a one-group, one-block AirNet: the same layers, exported in seconds
    pytest.importorskip("onnxruntime")
    from converters.torch2onnx import main

    sd = random_published(seed=1, offset_gain=12.0, groups=1, blocks=1)
    module = zoo.create("airnet", deform_export=form, groups=1, blocks=1)
    module.load_state_dict({k: sd[k] for k in module.state_dict()}, strict=True)
    spec = zoo.default_spec("airnet", deform_export=form, groups=1, blocks=1)
    zoo.save(module.eval(), tmp_path / "a.pt", spec)
    assert main([str(tmp_path / "a.pt"), "-o", str(tmp_path / "a.onnx")]) == 0
    import onnx

    model = onnx.load(tmp_path / "a.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert ("DeformConv" in ops) == (form == "deformconv") and ("GridSample" in ops) == (form == "gridsample")
    assert model.opset_import[0].version == (19 if form == "deformconv" else 17)
    img = _image(21, 26, seed=2)
    mean, peak = _offset_stats(module, img)
    assert mean > 1.0 and peak > 5.0, (mean, peak)
    ref = reference(sd, img)
    with Denoiser.load(tmp_path / "a.onnx", tile=0, threads=1, **NO_BORDER) as dn:
        got_ort = dn.run(img)
    with Denoiser.from_module(module, spec, tile=0, **NO_BORDER) as dn:
        got_torch = dn.run(img)
    np.testing.assert_allclose(got_ort, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_torch, ref, atol=1e-4, rtol=0)


# ---- tiling: exact at the static radius with zero offsets, only approximately with offsets ------------------
def _tiled(module, spec, img, tile, overlap):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnboundedContextWarning)
        with Denoiser.from_module(module, spec, tile=tile, overlap=overlap, blend="crop", **NO_BORDER) as dn:
            return dn.run(img)


def test_tiles_are_exact_at_the_static_radius_only_without_offsets():
    # one group of one block: static radius 3 + 1 * (4 + 1) = 8
    spec = zoo.default_spec("airnet", groups=1, blocks=1)
    img = _image(40, 56, seed=3)
    errors = {}
    for gain in (0.0, 15.0):
        sd = random_published(seed=4, offset_gain=gain, groups=1, blocks=1)
        module = zoo.create("airnet", groups=1, blocks=1).eval()
        module.load_state_dict({k: sd[k] for k in module.state_dict()}, strict=True)
        with Denoiser.from_module(module, spec, tile=0, **NO_BORDER) as dn:
            whole = dn.run(img)
        errors[gain] = {o: float(np.abs(_tiled(module, spec, img, 24, o) - whole).max()) for o in (4, 8)}
    assert errors[0.0][8] < 1e-5 < errors[0.0][4]          # zero offsets: radius 8, as counted
    assert errors[15.0][8] > 1e-4                           # offsets reach past the static radius


@pytest.mark.parametrize("form", ["deformconv", pytest.param("gridsample", marks=pytest.mark.slow)])
def test_release_file_to_onnx_matches_the_official_forward(release, tmp_path, form):
    # the whole route on the full network: import_weights -> torch2onnx -> ONNX Runtime via Denoiser
    pytest.importorskip("onnxruntime")
    from converters.import_weights import convert
    from converters.torch2onnx import main

    path, sd = release
    convert(path, "airnet", tmp_path / "airnet.pt", arch_kwargs={"deform_export": form})
    assert main([str(tmp_path / "airnet.pt"), "-o", str(tmp_path / "airnet.onnx")]) == 0
    img = _image(20, 28, seed=5)
    ref = reference(sd, img)
    with Denoiser.load(tmp_path / "airnet.onnx", tile=0, threads=1, **NO_BORDER) as dn:
        got = dn.run(img)
        big = _image(64, 64, seed=6)
        dn.run(big)
        t = time.perf_counter()
        dn.run(big)
        seconds_per_mp = (time.perf_counter() - t) / (64 * 64 / 1e6)
    print(f"airnet {form}: ONNX Runtime CPU {seconds_per_mp:.0f} s per megapixel")
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
