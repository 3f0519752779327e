"""tools.synth: unprocessing inverses, mosaics, dead leaves, sensor noise, seeded pairs."""

import numpy as np
import pytest

from rawdenoise import bayer
from rawdenoise.errors import InputError
from tools import synth
from rawdenoise.profile import default_profile


def test_tone_and_gamma_have_exact_inverses(rng):
    x = rng.uniform(0, 1, 1000)
    np.testing.assert_allclose(synth.tone(synth.inverse_tone(x)), x, atol=1e-12)
    np.testing.assert_allclose(synth.srgb_to_linear(synth.linear_to_srgb(x)), x, atol=1e-12)
    # the sRGB curve at its published points
    np.testing.assert_allclose(synth.srgb_to_linear(np.array([0.0, 0.04045, 1.0])), [0.0, 0.04045 / 12.92, 1.0])


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_mosaic_takes_each_site_from_its_colour(cfa, rng):
    rgb = rng.uniform(size=(6, 8, 3))
    m = synth.mosaic(rgb, cfa)
    for y in range(6):
        for x in range(8):
            colour = cfa[2 * (y % 2) + x % 2]
            assert m[y, x] == rgb[y, x, "RGB".index(colour)]


def test_unprocess_then_develop_recovers_the_image(rng):
    # flat colour patches: develop() averages 2x2 cells, which is exact on flat colour
    colours = rng.uniform(0.2, 0.8, size=(4, 4, 3))
    img = np.kron(colours, np.ones((16, 16, 1))).astype(np.float32)
    raw, cam = synth.unprocess(img, rng, "GRBG", exposure=0.5, return_params=True)
    assert raw.shape == (64, 64) and raw.dtype == np.float32 and 0 <= raw.min() and raw.max() <= 1
    back = synth.develop(raw, "GRBG", cam).astype(np.float64) / 255
    np.testing.assert_allclose(back, img[::2, ::2], atol=1.5 / 255)


def test_unprocess_is_seeded_and_rejects_grey_images(rng):
    img = synth.dead_leaves(32, 32, np.random.default_rng(0))
    a = synth.unprocess(img, np.random.default_rng(5))
    b = synth.unprocess(img, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="H x W x 3"):
        synth.unprocess(img[..., 0], rng)


def test_dead_leaves_is_seeded_varied_and_in_range():
    a = synth.dead_leaves(96, 80, np.random.default_rng(3))
    b = synth.dead_leaves(96, 80, np.random.default_rng(3))
    c = synth.dead_leaves(96, 80, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (96, 80, 3) and a.dtype == np.float32
    assert 0 <= a.min() and a.max() <= 1
    assert np.abs(a - c).mean() > 0.02
    # many distinct leaves: lots of distinct colours
    assert len(np.unique(a.reshape(-1, 3).round(3), axis=0)) > 50


def _background_fraction(seed, **kw):
    """Share of pixels still showing the background: its colour ratios are the scene's first draw,
    and illumination (a common factor) keeps them; any leaf has its own ratios."""
    img = synth.dead_leaves(128, 128, np.random.default_rng(seed), psf=0.0, **kw).astype(np.float64)
    bg = np.random.default_rng(seed).uniform(0.0, 1.0, size=3)
    ratios = img[..., [0, 2]] / np.maximum(img[..., 1:2], 1e-12)
    return np.mean(np.all(np.abs(ratios - bg[[0, 2]] / bg[1]) < 1e-4 * (bg[[0, 2]] / bg[1]), axis=-1))


def test_coverage_hides_the_background():
    # a Boolean model: centres spread over 1.44 x the frame leave exp(-coverage / 1.44) uncovered
    dense = np.mean([_background_fraction(s, coverage=3.0) for s in range(6)])
    denser = np.mean([_background_fraction(s, coverage=6.0) for s in range(6)])
    assert abs(dense - np.exp(-3.0 / 1.44)) < 0.04, dense
    assert abs(denser - np.exp(-6.0 / 1.44)) < 0.02, denser


def _detail(img):
    """Mean absolute Laplacian: the energy of the finest scales."""
    g = img.mean(axis=-1).astype(np.float64)
    return np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean()


def test_fine_scenes_carry_more_fine_detail_than_the_evaluation_scenes():
    rng = np.random.default_rng(0)
    fine = [_detail(synth.dead_leaves(256, 256, rng, **synth.fine_leaves_params(rng))) for _ in range(4)]
    plain = [_detail(synth.dead_leaves(256, 256, rng)) for _ in range(4)]
    assert np.mean(fine) > 2 * np.mean(plain), (fine, plain)


def test_fine_scenes_join_the_pool_without_changing_the_plain_scenes():
    p = default_profile()
    plain = synth.PairSource(p, patch=16, seed=3, pool_size=4, scene_size=64).pool
    mixed = synth.PairSource(p, patch=16, seed=3, pool_size=4, scene_size=64, fine_scenes=0.5).pool
    assert len(mixed) == 4
    for a, b in zip(plain[:2], mixed[:2]):
        np.testing.assert_array_equal(a, b)
    assert np.mean([_detail(m) for m in mixed[2:]]) > 1.5 * np.mean([_detail(m) for m in plain[2:]])
    with pytest.raises(InputError, match="fine_scenes"):
        synth.PairSource(p, patch=16, seed=3, pool_size=4, scene_size=64, fine_scenes=1.5)


def test_sensor_noise_has_the_poisson_gaussian_moments():
    rng = np.random.default_rng(0)
    k, s2 = 2e-3, 4e-5
    levels = np.array([0.02, 0.1, 0.4])
    clean = np.repeat(levels[:, None], 200_000, axis=1).astype(np.float32)
    noisy = synth.add_sensor_noise(clean, k, s2, rng, clip=False).astype(np.float64)
    np.testing.assert_allclose(noisy.mean(axis=1), levels, rtol=2e-3)
    np.testing.assert_allclose(noisy.var(axis=1), k * levels + s2, rtol=0.02)


def test_sensor_noise_clips_at_white_and_adds_row_noise():
    rng = np.random.default_rng(1)
    clean = np.full((400, 400), 0.999, np.float32)
    assert synth.add_sensor_noise(clean, 1e-3, 1e-5, rng).max() == 1.0
    flat = np.zeros((2000, 500), np.float32)
    s2 = 1e-4
    plain = synth.add_sensor_noise(flat, 1e-6, s2, rng, clip=False)
    rows = synth.add_sensor_noise(flat, 1e-6, s2, rng, row_noise=0.5, clip=False)
    # row means carry the row offsets: variance s2 / width without, plus (0.5^2) s2 with
    np.testing.assert_allclose(plain.mean(axis=1).var(), s2 / 500, rtol=0.15)
    np.testing.assert_allclose(rows.mean(axis=1).var(), s2 / 500 + 0.25 * s2, rtol=0.15)
    assert not clean.flags.writeable or clean.max() == np.float32(0.999)  # input untouched


def test_pack_rggb_matches_the_sdk_packer(rng):
    m = rng.uniform(size=(10, 12)).astype(np.float32)
    g = bayer.geometry(m.shape, "RGGB", "RGGB")
    np.testing.assert_array_equal(synth.pack_rggb(m), bayer.pack(m, g, np.zeros(4), 1.0))


def test_to_dn_rounds_and_clips():
    p = default_profile()
    dn = synth.to_dn(np.array([-1.0, 0.0, 0.5, 2.0]), p)
    assert dn.dtype == np.uint16
    np.testing.assert_array_equal(dn, [0, 512, round(512 + 0.5 * p.range), 16383])


def test_pairs_are_a_function_of_seed_and_index():
    p = default_profile()
    src = synth.PairSource(p, patch=16, seed=3, pool_size=2, scene_size=64)
    c1, n1, i1 = src.batch(7, 3)
    c2, n2, i2 = synth.PairSource(p, patch=16, seed=3, pool_size=2, scene_size=64).batch(7, 3)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(n1, n2)
    np.testing.assert_array_equal(i1, i2)
    assert c1.shape == n1.shape == (3, 4, 16, 16)
    assert not np.array_equal(src.batch(8, 3)[0], c1)
    assert np.all((i1 >= 100) & (i1 <= 6400))
    # the noise level follows the sampled ISO: residual variance vs k * x + sigma2
    c, n, _ = src.batch(0, 8, iso=6400)
    k, s2 = p.normalised(6400)
    unclipped = c < 0.9
    ratio = np.mean((n - c)[unclipped] ** 2) / np.mean(k * c[unclipped] + s2)
    assert 0.9 < ratio < 1.1


def test_pair_source_rejects_patches_larger_than_scenes():
    with pytest.raises(InputError, match="does not fit"):
        synth.PairSource(default_profile(), patch=64, scene_size=64, pool_size=1)


def test_blur_matches_scipy(rng):
    ndimage = pytest.importorskip("scipy.ndimage")
    img = rng.uniform(size=(20, 24, 3))
    sigma = 0.7
    r = int(np.ceil(3 * sigma))
    ref = ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="mirror", truncate=r / sigma)
    np.testing.assert_allclose(synth.blur(img, sigma), ref, atol=1e-12)


def test_sample_photographs_are_averaged_down():
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    full = synth.sample_images(downscale=1)
    half = synth.sample_images(downscale=2)
    if not full:
        pytest.skip("matplotlib ships no sample photograph here")
    f, h = full[0], half[0]
    assert h.shape == (f.shape[0] // 2, f.shape[1] // 2, 3)
    np.testing.assert_allclose(h[3, 5], f[6:8, 10:12].mean(axis=(0, 1)), rtol=1e-6)
