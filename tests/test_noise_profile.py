"""tools.noise_profile: frames with known noise at five ISOs are recovered within 5 %."""

import json

import numpy as np
import pytest

from tools import noise_profile
from rawdenoise.profile import NoiseProfile, default_profile

ISOS = [100, 400, 1600, 3200, 6400]
BLACK = np.array([510.0, 512.0, 511.0, 514.0])  # per site, RGGB raster order
WHITE = 16383.0
G = 0.004        # k(ISO) = G * ISO  (DN per electron)
A, C = 2e-5, 9.0  # sigma2(ISO) = A * ISO^2 + C  (DN^2)


def _k(iso):
    return G * iso


def _s2(iso):
    return A * iso ** 2 + C


def _write(path, data, iso=None):
    np.save(path, data)
    side = {"cfa": "RGGB", "black_level": BLACK.tolist(), "white_level": WHITE}
    if iso is not None:
        side["iso"] = iso
    path.with_suffix(".json").write_text(json.dumps(side))


def _black_site_map(h, w):
    b = np.empty((h, w))
    b[0::2, 0::2], b[0::2, 1::2], b[1::2, 0::2], b[1::2, 1::2] = BLACK
    return b


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(7)
    h = w = 384
    yy, xx = (np.mgrid[0:h, 0:w] - 192) / 192
    card = 0.6 * (1 - 0.35 * (yy ** 2 + xx ** 2))  # vignetted gray card, fraction of range
    site_gain = np.ones((h, w))
    site_gain[0::2, 0::2], site_gain[1::2, 1::2] = 0.55, 0.7  # R and B darker than G
    black = _black_site_map(h, w)
    for iso in ISOS:
        k, s2 = _k(iso), _s2(iso)
        (root / "black").mkdir(exist_ok=True)
        dark = black + rng.normal(0, np.sqrt(s2), (h, w))
        _write(root / "black" / f"b{iso}.npy", np.clip(np.rint(dark), 0, WHITE).astype(np.uint16), iso=iso)
        sub = root / "gray" / f"ISO{iso}"
        sub.mkdir(parents=True)
        for i, expo in enumerate((1.0, 0.35)):
            signal = card * site_gain * expo * (WHITE - 514)
            raw = black + k * rng.poisson(signal / k) + rng.normal(0, np.sqrt(s2), (h, w))
            _write(sub / f"g{i}.npy", np.clip(np.rint(raw), 0, WHITE).astype(np.uint16))  # ISO from folder
    return root


def test_recovers_k_and_sigma_within_5_percent(frames, tmp_path):
    out = tmp_path / "profile.json"
    rc = noise_profile.main(["--black", str(frames / "black"), "--gray", str(frames / "gray"), "-o", str(out),
                             "--plots", str(tmp_path / "plots")])
    assert rc == 0
    prof = NoiseProfile.load(out)
    for iso in ISOS:
        assert prof.k(iso) == pytest.approx(_k(iso), rel=0.05), iso
        assert prof.sigma2(iso) == pytest.approx(_s2(iso), rel=0.05), iso
    np.testing.assert_allclose(prof.black_level, BLACK, atol=0.2)
    assert prof.white_level == WHITE
    assert prof.iso_range == (100.0, 6400.0)
    assert (tmp_path / "plots" / "mean_variance.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "k_sigma_vs_iso.png").stat().st_size > 1000


def test_given_rois_work_too(frames, tmp_path):
    out = tmp_path / "p.json"
    rois = [f"{y},{x},32,32" for y in range(16, 360, 48) for x in range(16, 360, 48)]
    args = ["--black", str(frames / "black"), "--gray", str(frames / "gray"), "-o", str(out)]
    for r in rois:
        args += ["--roi", r]
    assert noise_profile.main(args) == 0
    prof = NoiseProfile.load(out)
    for iso in ISOS:
        assert prof.k(iso) == pytest.approx(_k(iso), rel=0.05), iso


def test_missing_iso_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "gray").mkdir()
    _write(tmp_path / "gray" / "x.npy", np.full((64, 64), 600, np.uint16))
    rc = noise_profile.main(["--gray", str(tmp_path / "gray"), "-o", str(tmp_path / "p.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no ISO" in err and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


def test_profile_round_trips_and_maps_to_ksigma(tmp_path):
    p = default_profile()
    p.save(tmp_path / "p.json")
    q = NoiseProfile.load(tmp_path / "p.json")
    assert q == p
    ks = p.ksigma(3200)
    # the k-sigma transform maps any ISO to the anchor's noise: check variances in float64
    for iso in (100, 800, 6400):
        k, s2 = p.normalised(iso)
        ka, sa = p.normalised(3200)
        gain, offset = ks.gain_offset(iso=iso)
        for x in (0.01, 0.3):
            var_t = gain ** 2 * (k * x + s2)
            assert var_t == pytest.approx(ka * (x * gain + offset) + sa, rel=1e-9)
    yaml = pytest.importorskip("yaml")
    p.save(tmp_path / "p.yaml")
    assert NoiseProfile.load(tmp_path / "p.yaml") == p
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["white_level"] == p.white_level
