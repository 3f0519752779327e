"""Geometric self-ensemble: the mean over orientations, each turned back, with CFA phase and
per-site black levels carried along."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rawdenoise import Denoiser, KSigma, zoo  # noqa: E402
from rawdenoise import noise as noise_mod  # noqa: E402
from rawdenoise.errors import InputError  # noqa: E402

BLACK = [64.0, 60.0, 70.0, 66.0]


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(5)
    m = zoo.create("unet", width=6, depth=2).eval()
    return m, zoo.default_spec("unet", width=6, depth=2).replace(receptive_radius=24)


def _turns():
    """The eight orientations written out with numpy, as (forward, inverse) pairs."""
    flips = [(lambda a: a, lambda a: a), (lambda a: a[::-1, ::-1], lambda a: a[::-1, ::-1]),
             (np.flipud, np.flipud), (np.fliplr, np.fliplr)]
    turns = list(flips)
    for f, g in flips:
        turns.append((lambda a, f=f: f(a.swapaxes(0, 1)), lambda a, g=g: g(a).swapaxes(0, 1)))
    return turns


def _turned_levels(shape, cfa, black, forward):
    """CFA and per-site black of a turned frame, read off a full-size map of site indices."""
    sites = (np.arange(shape[0]) % 2)[:, None] * 2 + (np.arange(shape[1]) % 2)[None, :]
    top = forward(sites)[:2, :2].ravel()
    return "".join(cfa[i] for i in top), [black[i] for i in top]


@pytest.mark.parametrize("shape,cfa", [((46, 62), "RGGB"), ((45, 63), "GBRG"), ((51, 40), "GRBG")])
def test_ensemble_is_the_mean_of_turned_runs(unet, rng, shape, cfa):
    module, spec = unet
    dn = Denoiser.from_module(module, spec, tile=56)
    raw = rng.uniform(60, 1000, size=shape)
    outs = []
    for forward, inverse in _turns():
        c, b = _turned_levels(shape, cfa, BLACK, forward)
        outs.append(inverse(dn.run(np.ascontiguousarray(forward(raw)), cfa=c, black_level=b, white_level=1023)))
    got = dn.run(raw, cfa=cfa, black_level=BLACK, white_level=1023, ensemble=8)
    np.testing.assert_allclose(got, np.mean(outs, axis=0), rtol=0, atol=1e-3)
    # and it is not just the plain run: the network is not equivariant
    assert np.abs(got - outs[0]).max() > 1.0
    four = dn.run(raw, cfa=cfa, black_level=BLACK, white_level=1023, ensemble=4)
    np.testing.assert_allclose(four, np.mean(outs[:4], axis=0), rtol=0, atol=1e-3)


def test_integer_frames_are_averaged_before_rounding(unet, rng):
    module, spec = unet
    dn = Denoiser.from_module(module, spec, tile=56)
    raw = rng.integers(60, 1000, size=(40, 54)).astype(np.uint16)
    raw.flags.writeable = False
    kw = dict(cfa="BGGR", black_level=BLACK, white_level=1023, ensemble=8)
    got = dn.run(raw, **kw)
    ref = np.clip(np.rint(dn.run(raw.astype(np.float64), **kw)), 0, 1023)
    assert got.dtype == np.uint16 and got.shape == raw.shape
    assert np.abs(got.astype(np.int64) - ref).max() <= 1
    assert np.mean(got == ref) > 0.99


def test_blind_noise_is_estimated_once_on_the_frame_as_given(unet, rng, monkeypatch):
    module, spec = unet
    ks = KSigma(k_coeffs=(0.0005995267, 0.00868861), sigma_coeffs=(7.11772e-7, 6.514934e-4, 0.11492713),
                anchor_iso=1600, v=959)
    dn = Denoiser.from_module(module, spec.replace(ksigma=ks), tile=64)
    raw = rng.uniform(60, 1000, size=(64, 64))
    calls = []
    real = noise_mod.estimate_noise_bayer
    monkeypatch.setattr(noise_mod, "estimate_noise_bayer", lambda *a, **k: calls.append(1) or real(*a, **k))
    blind = dn.run(raw, cfa="RGGB", black_level=BLACK, white_level=1023, ensemble=8)
    assert len(calls) == 1
    from rawdenoise.bayer import geometry

    est = real(raw, geometry(raw.shape, "RGGB", "RGGB"), np.array(BLACK), 1023.0)
    given = dn.run(raw, cfa="RGGB", black_level=BLACK, white_level=1023, noise=est, ensemble=8)
    np.testing.assert_allclose(blind, given, rtol=0, atol=1e-6)


def test_rgb_models_average_turned_images(rng):
    torch.manual_seed(2)
    m = zoo.create("n2n").eval()
    spec = zoo.default_spec("n2n").replace(receptive_radius=16)
    dn = Denoiser.from_module(m, spec, tile=96)
    img = rng.uniform(0, 1, size=(40, 56, 3))
    outs = [inv(dn.run(np.ascontiguousarray(fwd(img)))) for fwd, inv in _turns()]
    np.testing.assert_allclose(dn.run(img, ensemble=8), np.mean(outs, axis=0), rtol=0, atol=1e-5)


def test_bad_ensemble_sizes_are_refused_before_any_work(unet):
    module, spec = unet
    dn = Denoiser.from_module(module, spec)
    for bad in (0, 3, 16):
        with pytest.raises(InputError, match=r"ensemble must be one of \[1, 2, 4, 8\]"):
            dn.run(np.zeros((8, 8), np.float32), cfa="RGGB", ensemble=bad)
