"""tools.evaluate and tools.classical: metrics against float64 references, the baseline, the table."""

import csv

import numpy as np
import pytest

from tools import classical, evaluate
from rawdenoise.profile import default_profile


def test_psnr_matches_its_definition(rng):
    a = rng.uniform(size=(20, 30))
    b = a + rng.normal(0, 0.01, a.shape)
    assert evaluate.psnr(a, b) == pytest.approx(-10 * np.log10(np.mean((a - b) ** 2)))
    assert evaluate.psnr(a, a) == float("inf")


def test_ssim_matches_a_scipy_reference(rng):
    ndimage = pytest.importorskip("scipy.ndimage")
    a = rng.uniform(size=(40, 50))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)

    def ref(x, y):
        f = lambda z: ndimage.gaussian_filter(z, 1.5, truncate=5 / 1.5, mode="constant")[5:-5, 5:-5]  # noqa: E731
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        return np.mean((2 * mx * my + c1) * (2 * sxy + c2) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2)))

    assert evaluate.ssim(a, b) == pytest.approx(ref(a, b), rel=1e-9)
    assert evaluate.ssim(a, a) == pytest.approx(1.0)


def test_inverse_gat_is_unbiased_on_poisson_data():
    rng = np.random.default_rng(0)
    k, s2 = 0.01, 0.0
    for mean in (0.02, 0.1, 1.0):  # 2, 10, 100 electrons
        x = rng.poisson(mean / k, 400_000) * k
        f = classical.gat(x, k, s2)
        assert f.var() == pytest.approx(1.0, abs=0.08)
        # the exact unbiased inverse maps E[f] back to the mean
        assert classical.inverse_gat(np.array([f.mean()]), k, s2)[0] == pytest.approx(mean, rel=0.03)


def test_nlm_baseline_reduces_noise(rng):
    clean = np.zeros((4, 64, 64), np.float32)
    clean[:, :, 32:] = 0.3
    clean += 0.05
    k, s2 = 2e-3, 1e-5
    noisy = (rng.poisson(clean / k) * k + rng.normal(0, np.sqrt(s2), clean.shape)).astype(np.float32)
    before = noisy.copy()
    den = classical.denoise_packed(noisy, k, s2)
    np.testing.assert_array_equal(noisy, before)
    assert evaluate.psnr(den, clean) > evaluate.psnr(noisy, clean) + 5


def test_test_set_is_fixed_and_has_the_profile_noise():
    p = default_profile()
    a = evaluate.test_set(p, [1600], n_scenes=2, size=64, photos=False)
    b = evaluate.test_set(p, [1600], n_scenes=2, size=64, photos=False)
    fa, fb = a[1600.0], b[1600.0]
    assert [f.cfa for f in fa] == ["RGGB", "BGGR"]
    for x, y in zip(fa, fb):
        np.testing.assert_array_equal(x.noisy_dn, y.noisy_dn)
        assert x.noisy_dn.dtype == np.uint16 and x.noisy_dn.shape == x.clean.shape
    k, s2 = p.normalised(1600)
    f = fa[0]
    resid = (f.noisy_dn - 512.0) / p.range - f.clean
    assert np.mean(resid ** 2) == pytest.approx(np.mean(k * f.clean + s2), rel=0.1)


@pytest.fixture(scope="module")
def ksigma_model(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from rawdenoise import zoo

    torch.manual_seed(0)
    m = zoo.create("unet", width=4, depth=1)
    with torch.no_grad():
        for prm in m.parameters():
            prm.mul_(0.01)  # close to the identity (the UNet adds its input)
    spec = zoo.default_spec("unet", width=4, depth=1).replace(ksigma=default_profile().ksigma(3200), tile=64)
    path = tmp_path_factory.mktemp("m") / "m.pt"
    zoo.save(m, path, spec)
    return path


def test_evaluate_rows_and_cli(ksigma_model, tmp_path, capsys):
    rows = evaluate.evaluate(ksigma_model, isos=[3200], blind=True, n_scenes=1, size=192, photos=False)
    methods = {r["method"]: r for r in rows}
    assert set(methods) == {"noisy", evaluate.baseline_name(), "model", "model-blind"}
    # a near-identity model scores about the noisy input; the baseline beats both
    assert abs(methods["model"]["psnr"] - methods["noisy"]["psnr"]) < 1.0
    assert methods[evaluate.baseline_name()]["psnr"] > methods["noisy"]["psnr"]
    out = tmp_path / "r.csv"
    rc = evaluate.main([str(ksigma_model), "--iso", "1600", "--scenes", "1", "--size", "64", "--no-photos",
                        "--csv", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ISO" in printed and "1600" in printed and "gain dB" in printed
    with open(out) as f:
        got = list(csv.DictReader(f))
    assert {r["method"] for r in got} == {"noisy", evaluate.baseline_name(), "model"}
    assert all(r["iso"] == "1600" for r in got)


def test_ensemble_rows_are_the_self_ensemble_runs(ksigma_model):
    from rawdenoise import Denoiser

    rows = evaluate.evaluate(ksigma_model, isos=[3200], blind=True, baseline=False, n_scenes=1, size=96,
                             photos=False, ensemble=2)
    methods = {r["method"]: r for r in rows}
    assert set(methods) == {"noisy", "model", "model-blind", "model-x2", "model-blind-x2"}
    prof = default_profile()
    f = evaluate.test_set(prof, [3200], n_scenes=1, size=96, photos=False)[3200.0][0]
    out = Denoiser.load(ksigma_model).run(f.noisy_dn, cfa=f.cfa, black_level=list(prof.black_level),
                                          white_level=prof.white_level, ensemble=2)
    got = evaluate.psnr((out.astype(np.float64) - np.mean(prof.black_level)) / prof.range, f.clean)
    assert methods["model-blind-x2"]["psnr"] == pytest.approx(got, abs=1e-3)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert evaluate.main([str(tmp_path / "missing.pt"), "--iso", "800"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evaluate: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_edge_band_and_inner_psnr_split_the_frame():
    from tools.evaluate import edge_mask

    m = edge_mask((40, 60), 16)
    assert m.sum() == 40 * 60 - 8 * 28 and not m[16:24, 16:44].any() and m[0].all() and m[:, -1].all()
