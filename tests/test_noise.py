"""rawdenoise.noise: Poisson-Gaussian sampling and the blind estimate from the frame itself."""

import numpy as np
import pytest

from rawdenoise import bayer
from rawdenoise.errors import InputError
from rawdenoise.noise import add_noise, estimate_noise, estimate_noise_bayer, fit_variance, variance
from tools import synth
from rawdenoise.profile import default_profile


def test_add_noise_moments_and_input_untouched():
    rng = np.random.default_rng(0)
    clean = np.repeat(np.array([0.0, 0.05, 0.5])[:, None], 100_000, axis=1).astype(np.float32)
    before = clean.copy()
    noisy = add_noise(clean, 1e-3, 2e-5, rng).astype(np.float64)
    np.testing.assert_array_equal(clean, before)
    np.testing.assert_allclose(noisy.mean(axis=1), [0.0, 0.05, 0.5], atol=3e-4)
    np.testing.assert_allclose(noisy.var(axis=1), 1e-3 * np.array([0.0, 0.05, 0.5]) + 2e-5, rtol=0.03)
    with pytest.raises(InputError):
        add_noise(clean, 0.0, 1e-5, rng)


def test_fit_variance_recovers_an_exact_line():
    m = np.linspace(0.01, 0.8, 400)
    k, s2 = fit_variance(m, 3e-3 * m + 1e-5)
    assert k == pytest.approx(3e-3, rel=1e-6) and s2 == pytest.approx(1e-5, rel=1e-4)
    # a known point (e.g. read noise from black frames) joins the fit
    k, s2 = fit_variance(m[200:], 3e-3 * m[200:] + 1e-5, fixed=[(0.0, 1e-5, 50)])
    assert s2 == pytest.approx(1e-5, rel=1e-3)


def _frame(scene_seed, k, s2, size=512, dark=1.0):
    rng = np.random.default_rng(scene_seed)
    clean = synth.unprocess(synth.dead_leaves(size, size, rng), rng, exposure=dark)
    noisy = synth.add_sensor_noise(clean, k, s2, rng)
    g = bayer.geometry(noisy.shape, "RGGB", "RGGB")
    return bayer.pack(clean, g, np.zeros(4), 1.0), bayer.pack(noisy, g, np.zeros(4), 1.0)


@pytest.mark.parametrize("iso", [200, 800, 1600, 3200, 6400])
@pytest.mark.parametrize("seed", [11, 12])
def test_blind_estimate_within_15_percent(iso, seed):
    k, s2 = default_profile().normalised(iso)
    clean, noisy = _frame(seed, k, s2)
    ke, se = estimate_noise(noisy)
    assert ke == pytest.approx(k, rel=0.15)
    # the noise the model sees: predicted variance at the frame's own signal levels
    levels = np.percentile(clean, [10, 50, 90])
    np.testing.assert_allclose(variance(levels, ke, se), variance(levels, k, s2), rtol=0.15)


def test_blind_estimate_recovers_read_noise_when_it_matters():
    # a dark, strongly read-noise-limited frame: sigma2 is identifiable and must be right
    k, s2 = 2e-4, 4e-5
    clean, noisy = _frame(21, k, s2, dark=0.3)
    ke, se = estimate_noise(noisy)
    assert se == pytest.approx(s2, rel=0.15)
    assert ke == pytest.approx(k, rel=0.15)


def test_blind_estimate_on_a_smooth_gradient_and_pure_noise_frames():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:512, 0:512] / 512
    clean = (0.05 + 0.6 * xx * (0.5 + 0.5 * yy)).astype(np.float32)
    k, s2 = 1e-3, 1e-5
    noisy = add_noise(clean, k, s2, rng)
    g = bayer.geometry(noisy.shape, "RGGB", "RGGB")
    ke, se = estimate_noise(bayer.pack(noisy, g, np.zeros(4), 1.0))
    assert ke == pytest.approx(k, rel=0.1) and se == pytest.approx(s2, rel=0.15)


def test_estimate_does_not_modify_and_rejects_tiny_frames():
    x = np.random.default_rng(0).uniform(0, 0.5, size=(4, 64, 64)).astype(np.float32)
    before = x.copy()
    estimate_noise(x)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(InputError, match="too small"):
        estimate_noise(x[:, :4, :4])


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_estimate_from_bands_of_a_big_bayer_frame(cfa):
    """The estimate read from bands of rows (any CFA phase, odd size, per-site black levels in DN)
    agrees with the known noise and with the estimate over the whole packed frame."""
    from rawdenoise.noise import estimate_noise_bayer

    rng = np.random.default_rng(5)
    k, s2 = default_profile().normalised(3200)
    clean = synth.unprocess(synth.dead_leaves(768, 768, rng), rng, cfa, exposure=0.6)
    clean = np.tile(clean, (3, 3))[:2301, :2299]         # keeps the CFA phase: 768 is even
    noisy = synth.add_sensor_noise(clean, k, s2, rng)
    black = np.array([512.0, 508.0, 515.0, 520.0])       # per site of `cfa`, in DN
    white = 16383.0
    site = 2 * (np.arange(noisy.shape[0])[:, None] % 2) + np.arange(noisy.shape[1])[None, :] % 2
    raw = np.clip(np.rint(noisy * (white - black[site]) + black[site]), 0, white).astype(np.uint16)
    before = raw.copy()
    g = bayer.geometry(raw.shape, cfa, "RGGB")
    kb, sb = estimate_noise_bayer(raw, g, black, white)
    kf, sf = estimate_noise(bayer.pack(raw, g, black, white))
    np.testing.assert_array_equal(raw, before)
    assert kb == pytest.approx(k, rel=0.15)
    levels = np.percentile(clean, [10, 50, 90])
    np.testing.assert_allclose(variance(levels, kb, sb), variance(levels, k, s2), rtol=0.15)
    np.testing.assert_allclose(variance(levels, kb, sb), variance(levels, kf, sf), rtol=0.05)


@pytest.mark.parametrize("make,cause", [
    (lambda rng: np.full((256, 256), 0.3), "no noise at all"),
    (lambda rng: np.tile(np.linspace(0.1, 0.9, 256), (256, 1)), "no noise at all"),
    (lambda rng: np.clip(1.0 + rng.normal(0, 0.01, (256, 256)), 0, 1), "mostly saturated"),
    (lambda rng: 0.001 + rng.normal(0, 0.002, (256, 256)), "almost black"),
])
def test_blind_estimate_names_the_cause(make, cause, rng):
    from rawdenoise import bayer
    from rawdenoise.errors import NoiseEstimateError

    raw = make(rng).astype(np.float32)
    g = bayer.geometry(raw.shape, "RGGB", "RGGB")
    with pytest.raises(NoiseEstimateError, match=cause):
        estimate_noise_bayer(raw, g, np.zeros(4), 1.0)


def test_sizes_are_given_in_the_callers_pixels(rng):
    from rawdenoise import bayer
    from rawdenoise.errors import NoiseEstimateError

    raw = rng.random((2, 5000)).astype(np.float32)
    g = bayer.geometry(raw.shape, "RGGB", "RGGB")
    with pytest.raises(NoiseEstimateError, match=r"a 2 x 5000 frame is too small .*16 x 16 pixels"):
        estimate_noise_bayer(raw, g, np.zeros(4), 1.0)
