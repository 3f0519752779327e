"""The default model shipped in rawdenoise/models: loads on both runtimes, estimates noise
blind, and denoises a synthetic frame well."""

import importlib.util

import numpy as np
import pytest

from rawdenoise import Denoiser, ModelSpec, models
from rawdenoise.errors import InputError, ModelFileError
from tools import synth
from tools.evaluate import psnr
from rawdenoise.profile import NoiseProfile, default_profile

pytest.importorskip("torch")
PT = models.MODELS_DIR / "default.pt"
ONNX = models.MODELS_DIR / "default.onnx"


def test_files_are_shipped_and_small():
    assert PT.is_file() and ONNX.is_file()
    assert PT.stat().st_size + ONNX.stat().st_size <= 10 * 2 ** 20


def test_default_model_path_picks_the_runtime(monkeypatch, tmp_path):
    assert models.default_model_path("torch") == PT
    assert models.default_model_path("onnxruntime") == ONNX
    assert models.default_model_path("ort") == ONNX
    want = ONNX if importlib.util.find_spec("onnxruntime") else PT
    assert models.default_model_path() == want
    with pytest.raises(InputError, match="torch and onnxruntime"):
        models.default_model_path("tensorrt")
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    with pytest.raises(ModelFileError, match="missing"):
        models.default_model_path("torch")


def test_manifest_records_its_training():
    from rawdenoise import zoo

    spec = zoo.load(PT)[1]
    assert spec.ksigma is not None and spec.layout == "bayer4"
    prof = NoiseProfile.from_dict(spec.notes["training_profile"])
    assert prof == default_profile()
    assert "tools.train" in spec.notes["trained"]
    pytest.importorskip("onnx")
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(ONNX)).metadata_props}
    onnx_spec = ModelSpec.from_json(meta["rawdenoise.spec"])
    assert onnx_spec.replace(origin={}) == spec.replace(origin={})


def _frame(iso, size=256, seed=3):
    prof = default_profile()
    rng = np.random.default_rng([seed, int(iso)])
    clean = synth.unprocess(synth.dead_leaves(size, size, rng), rng, "GRBG", exposure=0.6)
    k, s2 = prof.normalised(iso)
    noisy = synth.to_dn(synth.add_sensor_noise(clean, k, s2, rng), prof)
    return clean, noisy, prof


def _norm(dn, prof):
    return (dn.astype(np.float64) - 512.0) / prof.range


@pytest.fixture(scope="module")
def denoised():
    """Outputs on one ISO-3200 frame: torch with ISO, onnxruntime with ISO, torch blind."""
    clean, noisy, prof = _frame(3200)
    kw = dict(cfa="GRBG", black_level=512, white_level=prof.white_level)
    with Denoiser.load("default", runtime="torch") as d:
        out_t = d.run(noisy.astype(np.float32), iso=3200, **kw)
        out_blind = d.run(noisy.astype(np.float32), **kw)
    out_o = None
    if importlib.util.find_spec("onnxruntime"):
        with Denoiser.load("default", runtime="onnxruntime") as d:
            out_o = d.run(noisy.astype(np.float32), iso=3200, **kw)
    return clean, noisy, prof, out_t, out_o, out_blind


def test_both_runtimes_agree(denoised):
    clean, noisy, prof, out_t, out_o, _ = denoised
    if out_o is None:
        pytest.skip("onnxruntime is not installed")
    np.testing.assert_allclose(out_o, out_t, atol=0.05)  # DN on a 14-bit scale


def test_denoising_gain_is_substantial(denoised):
    clean, noisy, prof, out_t, _, _ = denoised
    p_noisy, p_out = psnr(_norm(noisy, prof), clean), psnr(_norm(out_t, prof), clean)
    assert p_out > p_noisy + 6.0, (p_noisy, p_out)


def test_blind_is_close_to_non_blind(denoised):
    clean, noisy, prof, out_t, _, out_blind = denoised
    assert psnr(_norm(out_blind, prof), clean) > psnr(_norm(out_t, prof), clean) - 0.5


@pytest.mark.parametrize("iso", [400, 1600, 6400])
def test_blind_estimate_within_15_percent_on_the_default_profile(iso):
    from rawdenoise import bayer
    from rawdenoise.noise import estimate_noise

    clean, noisy, prof = _frame(iso, size=384, seed=9)
    g = bayer.geometry(noisy.shape, "GRBG", "RGGB")
    k_est, s2_est = estimate_noise(bayer.pack(noisy, g, np.full(4, 512.0), prof.white_level))
    k, s2 = prof.normalised(iso)
    assert k_est == pytest.approx(k, rel=0.15)


def test_demo_writes_its_files(tmp_path, capsys):
    pytest.importorskip("PIL")
    from rawdenoise.cli import main

    rc = main(["demo", "-o", str(tmp_path), "--size", "128", "192"])
    assert rc == 0
    for name in ("noisy.dng", "denoised.dng", "side_by_side.png"):
        assert (tmp_path / name).stat().st_size > 1000
    out = capsys.readouterr().out
    assert "PSNR" in out and "dB" in out
    pytest.importorskip("rawpy")
    from rawdenoise.rawio import read_raw

    frame = read_raw(tmp_path / "noisy.dng")
    assert frame.data.shape == (128, 192) and frame.cfa == "RGGB" and frame.meta.get("iso") == 3200


@pytest.mark.parametrize("frame", [np.full((64, 64), 4000, np.uint16), np.full((64, 64), 512, np.uint16),
                                   np.full((2, 5000), 900, np.uint16)])
def test_frames_without_measurable_noise_run_at_the_lowest_trained_noise(frame):
    from rawdenoise.errors import NoiseFallbackWarning

    dn = Denoiser.load("default")
    with pytest.warns(NoiseFallbackWarning, match=r"ISO 100"):
        out = dn.run(frame, cfa="RGGB", black_level=512, white_level=16383)
    assert out.shape == frame.shape and out.dtype == np.uint16
    explicit = dn.run(frame, cfa="RGGB", black_level=512, white_level=16383, iso=100)
    np.testing.assert_array_equal(out, explicit)


def test_flat_frames_stay_flat_to_their_edges():
    """The frame is mirrored before the network, so edge pixels do not see zero padding (before the
    border: +-146 DN on the outer rows of this frame, 9 DN inside)."""
    flat = np.full((256, 256), 4000, np.uint16)
    out = Denoiser.load("default").run(flat, cfa="RGGB", black_level=512, white_level=16383, iso=1600)
    assert np.abs(out.astype(np.int64) - 4000).max() <= 12
    bare = Denoiser.load("default", border=0).run(flat, cfa="RGGB", black_level=512, white_level=16383, iso=1600)
    assert np.abs(bare.astype(np.int64) - 4000)[:2].max() > 50        # the check can fail
