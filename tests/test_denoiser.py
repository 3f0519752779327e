import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rawdenoise import Denoiser, KSigma, ModelSpec, zoo  # noqa: E402
from rawdenoise.errors import InputError, ModelFileError  # noqa: E402

LEVELS = dict(cfa="RGGB", black_level=[512, 500, 520, 508], white_level=16383)


def reference_run(module, raw, black, white, multiple, border):
    """Independent float64 pipeline for an RGGB frame of even size: slice, mirror by the border on
    every side and pad to the multiple, run, crop, invert."""
    r = raw.astype(np.float64)
    chans = [r[0::2, 0::2], r[0::2, 1::2], r[1::2, 0::2], r[1::2, 1::2]]
    x = np.stack([(c - b) / (white - b) for c, b in zip(chans, black)])
    h, w = x.shape[1:]
    ph, pw = -h % multiple, -w % multiple
    xp = np.pad(x, ((0, 0), (border, border + ph), (border, border + pw)), mode="reflect")
    with torch.inference_mode():
        y = module.double()(torch.from_numpy(xp[None])).numpy()[0, :, border:border + h, border:border + w]
    module.float()
    out = np.empty_like(r)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[i::2, j::2] = y[k] * (white - black[k]) + black[k]
    return out


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(3)
    m = zoo.create("unet", width=8, depth=2)
    return m.eval(), zoo.default_spec("unet", width=8, depth=2).replace(
        receptive_radius=zoo.measure_receptive_radius(m, zoo.default_spec("unet", width=8, depth=2)))


def test_run_matches_independent_float64_pipeline(unet, rng):
    module, spec = unet
    raw = rng.uniform(500, 16000, size=(126, 190))
    black = [512.0, 500.0, 520.0, 508.0]
    for border in (0, 8):
        ref = reference_run(module, raw, black, 16383.0, spec.multiple, border)
        for tile in (0, 56, 64):
            got = Denoiser.from_module(module, spec, tile=tile, border=border).run(raw, cfa="RGGB", black_level=black,
                                                                                 white_level=16383)
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * 16383)
    assert Denoiser.from_module(module, spec).border == 8      # the default: 8 network pixels on the grid of 4


def test_tiled_equals_untiled_random_unet(unet, rng):
    module, spec = unet
    raw = rng.uniform(0, 1, size=(301, 415)).astype(np.float32)
    full = Denoiser.from_module(module, spec, tile=0).run(raw, cfa="GBRG")
    for tile, batch in ((56, 1), (64, 3), (96, 2)):
        tiled = Denoiser.from_module(module, spec, tile=tile, batch=batch).run(raw, cfa="GBRG")
        scale = np.abs(full).max()
        assert np.abs(tiled - full).max() <= 1e-4 * scale, tile


def test_too_little_overlap_shows_seams(unet, rng):
    module, spec = unet
    raw = rng.uniform(0, 1, size=(256, 256)).astype(np.float32)
    full = Denoiser.from_module(module, spec, tile=0).run(raw, cfa="RGGB")
    seamy = Denoiser.from_module(module, spec, tile=32, overlap=2).run(raw, cfa="RGGB")
    # beyond the 1e-4 of the range that test_tiled_equals_untiled_random_unet allows
    assert np.abs(seamy - full).max() > 1e-4 * np.abs(full).max()


def test_output_shape_dtype_and_clipping(rng):
    torch.manual_seed(0)
    m = zoo.create("unet", width=4, depth=1)
    with torch.no_grad():
        m.head.bias.fill_(5.0)  # push everything above white
    spec = zoo.default_spec("unet", width=4, depth=1).replace(receptive_radius=8)
    dn = Denoiser.from_module(m, spec)
    for dtype, white in ((np.uint8, 255), (np.uint16, 4095), (np.uint32, 70000), (np.int32, 1000)):
        raw = rng.integers(0, white, size=(21, 35)).astype(dtype)
        out = dn.run(raw, cfa="GRBG", black_level=3, white_level=white)
        assert out.shape == raw.shape and out.dtype == raw.dtype
        assert out.min() >= 0 and out.max() == white


def test_identity_model_reproduces_integers_exactly(rng):
    m = zoo.create("unet", width=4, depth=1)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    spec = zoo.default_spec("unet", width=4, depth=1).replace(receptive_radius=8)
    raw = rng.integers(0, 4096, size=(47, 63)).astype(np.uint16)
    dn = Denoiser.from_module(m, spec, tile=16, overlap=4)
    for cfa in ("RGGB", "BGGR", "GRBG", "GBRG"):
        # the self-ensemble turns the frame through all eight orientations and back
        for ensemble in (1, 8):
            out = dn.run(raw, cfa=cfa, black_level=[64, 60, 62, 66], white_level=4095, ensemble=ensemble)
            np.testing.assert_array_equal(out, raw)


def test_ksigma_transform_is_inverted(rng):
    m = zoo.create("unet", width=4, depth=1)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    ks = KSigma(k_coeffs=(0.0005995267, 0.00868861), sigma_coeffs=(7.11772e-7, 6.514934e-4, 0.11492713),
                anchor_iso=1600, v=959)
    spec = zoo.default_spec("unet", width=4, depth=1).replace(receptive_radius=8, ksigma=ks, scale=256.0)
    raw = rng.uniform(0, 1, size=(32, 48))
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return m(x)

    out = Denoiser.from_module(Spy(), spec, tile=0).run(raw, cfa="RGGB", iso=3200)
    np.testing.assert_allclose(out, raw, rtol=1e-5, atol=1e-5)
    # the network saw the published transform, computed here in float64
    k = np.polyval(ks.k_coeffs, 3200); s = np.polyval(ks.sigma_coeffs, 3200)
    ka = np.polyval(ks.k_coeffs, 1600); sa = np.polyval(ks.sigma_coeffs, 1600)
    expect = (raw[0::2, 0::2] * 959 * ka / k + (s / k**2 - sa / ka**2) * ka) / 959 * 256
    b = 8                                      # the frame arrives mirrored by the border on every side
    np.testing.assert_allclose(seen[0][0, 0, b:b + 16, b:b + 24].numpy(), expect, rtol=1e-5)
    with pytest.raises(InputError, match="positive"):
        Denoiser.from_module(Spy(), spec).run(raw, cfa="RGGB", iso=-5)


def test_input_is_never_written(unet, rng):
    module, spec = unet
    raw = rng.integers(0, 1023, size=(40, 40)).astype(np.uint16)
    raw.flags.writeable = False
    before = raw.copy()
    Denoiser.from_module(module, spec, tile=56).run(raw, cfa="RGGB", black_level=64, white_level=1023)
    np.testing.assert_array_equal(raw, before)


def test_threads_give_serial_results(unet, rng):
    module, spec = unet
    dn = Denoiser.from_module(module, spec, tile=56)
    frames = [rng.integers(0, 4095, size=(64 + 2 * i, 80)).astype(np.uint16) for i in range(8)]
    serial = [dn.run(f, cfa="RGGB", black_level=64, white_level=4095) for f in frames]
    results = [None] * 8

    def work(i):
        results[i] = dn.run(frames[i], cfa="RGGB", black_level=64, white_level=4095)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("raw,kw,msg", [
    (np.zeros((8, 8, 3), np.uint16), LEVELS, "2-D"),
    (np.full((8, 8), np.nan, np.float32), dict(cfa="RGGB"), "NaN"),
    (np.zeros((8, 8), np.uint16), dict(cfa="RGGB", black_level=5000, white_level=4000), "below"),
    (np.zeros((8, 8), np.uint16), dict(cfa="RGGB", black_level=-1, white_level=4000), ">= 0"),
    (np.zeros((8, 8), np.uint16), dict(cfa="RGBX", black_level=0, white_level=4000), "2x2 Bayer"),
    (np.zeros((1, 1), np.uint16), LEVELS, "smaller"),
    (np.zeros((8, 8), dtype="U1"), LEVELS, "dtype"),
    (np.zeros((8, 8), np.uint16), dict(black_level=0, white_level=4000), "cfa is required"),
    (np.zeros((8, 8), np.uint16), dict(cfa="RGGB"), "white_level is required"),
    (np.zeros((8, 8), np.uint16), dict(cfa="RGGB", white_level=4000), "black_level is required"),
    ([[1, 2], [3, 4]], LEVELS, "numpy array"),
])
def test_bad_input_is_refused_clearly(unet, raw, kw, msg):
    module, spec = unet
    with pytest.raises(InputError, match=msg):
        Denoiser.from_module(module, spec).run(raw, **kw)


def test_load_picks_runtime_from_suffix(tiny_unet_pt, tmp_path):
    dn = Denoiser.load(tiny_unet_pt)
    assert dn.runtime.name == "torch" and dn.spec.receptive_radius > 0 and dn.overlap == dn.spec.receptive_radius
    with dn:
        pass
    assert not dn.runtime.is_active
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    from rawdenoise.errors import RawDenoiseError

    with pytest.raises(RawDenoiseError, match="tensorrt|trt"):
        Denoiser.load(engine)


def test_missing_truncated_corrupt_model_files(tiny_unet_pt, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        Denoiser.load(tmp_path / "nope.pt")
    data = tiny_unet_pt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        Denoiser.load(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError):
        Denoiser.load(tmp_path / "junk.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ModelFileError, match="import_weights"):
        Denoiser.load(tmp_path / "plain.pt")


def test_tile_and_batch_validation(unet):
    module, spec = unet
    with pytest.raises(InputError, match="multiple"):
        Denoiser.from_module(module, spec, tile=30)
    with pytest.raises(InputError, match="batch"):
        Denoiser.from_module(module, spec, batch=0)
    # a tile too small for exact tiling (radius 22 on a grid of 4 needs 48 of overlap) is refused
    # at load, not on the first frame large enough to be tiled
    with pytest.raises(InputError, match="too small for overlap 22"):
        Denoiser.from_module(module, spec, tile=48)


def test_rgb_layout_runs_hwc_frames(rng):
    m = zoo.create("unet", in_channels=3, out_channels=3, width=4, depth=1)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    spec = ModelSpec(name="rgb-id", layout="rgb", channel_order="RGB", in_channels=3, out_channels=3,
                     multiple=2, receptive_radius=8, tile=32, offset=-0.5)
    img = rng.integers(0, 256, size=(37, 45, 3)).astype(np.uint8)
    np.testing.assert_array_equal(Denoiser.from_module(m, spec).run(img), img)
    with pytest.raises(InputError, match="H x W x 3"):
        Denoiser.from_module(m, spec).run(img[..., 0])


def test_blind_models_ignore_file_iso_but_take_an_explicit_one(rng):
    """noise_source="frame": a file's ISO belongs to another camera's profile; estimate instead."""
    from types import SimpleNamespace

    from rawdenoise import bayer
    from rawdenoise.noise import estimate_noise

    m = zoo.create("unet", width=4, depth=1)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return m(x)

    ks = KSigma(k_coeffs=(0.01, 0.0), sigma_coeffs=(3e-4, 0.0, 9.0), anchor_iso=12800, v=15871)
    base = zoo.default_spec("unet", width=4, depth=1).replace(receptive_radius=8, ksigma=ks, scale=32.0)
    clean = rng.uniform(0.1, 0.6, size=(256, 256))
    raw = np.clip(clean + rng.normal(0, 0.02, clean.shape), 0, 1).astype(np.float32)
    frame = SimpleNamespace(data=raw, cfa="RGGB", black_level=(0, 0, 0, 0), white_level=1.0, meta={"iso": 100})
    x = bayer.pack(raw, bayer.geometry(raw.shape, "RGGB", "RGGB"), np.zeros(4), 1.0)

    def net_input(spec, *args, **kw):
        seen.clear()
        Denoiser.from_module(Spy(), spec, tile=0).run(*args, **kw)
        return seen[0]

    blind = base.replace(noise_source="frame")
    estimated = net_input(blind, raw, cfa="RGGB", noise=estimate_noise(x))
    assert torch.equal(net_input(blind, frame), estimated)
    assert not torch.equal(net_input(blind, frame, iso=100), estimated)
    # a camera-specific model uses the file's ISO
    assert torch.equal(net_input(base, frame), net_input(base, raw, cfa="RGGB", iso=100))
