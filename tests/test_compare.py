"""`rawdenoise compare`: the table's numbers against a direct numpy computation."""

import json
import math

import numpy as np
import pytest

from rawdenoise.cli import main as cli_main
from rawdenoise.compare import compare, seam_ratio
from rawdenoise.tiling import plan_tiles


def main(argv):
    return cli_main(["compare", *argv])

BLACK, WHITE = 128, 4095


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    d = tmp_path_factory.mktemp("frame")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:160, 0:224]
    clean = BLACK + 1500 * (1 + np.sin(xx / 9.0) * np.cos(yy / 7.0))
    clean[:, :20] = BLACK + 30  # a dark band for the dark-region metric
    raw = np.clip(clean + rng.normal(0, 20, clean.shape), 0, WHITE).astype(np.uint16)
    np.save(d / "f.npy", raw)
    (d / "f.json").write_text(json.dumps({"cfa": "GBRG", "black_level": BLACK, "white_level": WHITE, "iso": 400}))
    return d / "f.npy", raw


@pytest.fixture(scope="module")
def other_pt(tmp_path_factory):
    pytest.importorskip("torch")
    import torch

    from rawdenoise import zoo

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("m") / "other.pt"
    zoo.save(zoo.create("unet", width=8, depth=2), path)
    return path


def test_metrics_match_direct_computation(frame, tiny_unet_pt, other_pt):
    from rawdenoise.denoiser import Denoiser

    path, raw = frame
    rows = compare([tiny_unet_pt, other_pt], path, tile=64)
    kw = dict(cfa="GBRG", black_level=BLACK, white_level=WHITE)
    with Denoiser.load(tiny_unet_pt, tile=64) as a, Denoiser.load(other_pt, tile=64) as b:
        ya, yb = a.run(raw, **kw).astype(np.float64), b.run(raw, **kw).astype(np.float64)
    d = yb - ya
    assert rows[0].max_dn == 0 and rows[0].mean_dn == 0
    r = rows[1]
    assert r.max_dn == pytest.approx(np.abs(d).max())
    assert r.mean_dn == pytest.approx(np.abs(d).mean())
    assert r.psnr_db == pytest.approx(10 * math.log10((WHITE - BLACK) ** 2 / np.mean(d ** 2)))
    dark = (ya - BLACK) < 0.05 * (WHITE - BLACK)
    assert dark.any() and r.dark_dn == pytest.approx(np.abs(d[dark]).mean())
    # the corrections (output - input) of the two models against each other
    ca, cb = ya - raw, yb - raw
    assert r.correction_snr_db == pytest.approx(10 * math.log10(np.sum(ca ** 2) / np.sum((cb - ca) ** 2)))
    assert r.runtime == "torch" and r.seconds > 0


def test_cli_table_and_atol(frame, tiny_unet_pt, tiny_unet_onnx, other_pt, capsys):
    path, _ = frame
    assert main([str(tiny_unet_pt), str(tiny_unet_onnx), "--raw", str(path), "--tile", "64", "--atol", "2"]) == 0
    out = capsys.readouterr().out
    for word in ("max DN", "PSNR dB", "dark DN", "seam", "s/frame", "unet.pt (ref)", "unet.onnx", "onnxruntime"):
        assert word in out
    assert main([str(tiny_unet_pt), str(other_pt), "--raw", str(path), "--tile", "64", "--atol", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_errors_one_line(frame, tiny_unet_pt, tmp_path, capsys):
    path, _ = frame
    assert main([str(tiny_unet_pt), "--raw", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least two" in err
    assert main([str(tiny_unet_pt), str(tiny_unet_pt), "--raw", str(tmp_path / "absent.npy")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_seam_ratio_detects_steps_at_tile_borders():
    plan = plan_tiles(64, 64, tile=32, overlap=4, multiple=8)  # packed 64 x 64 -> sensor 128 x 128
    rng = np.random.default_rng(0)
    smooth = rng.normal(1000, 5, (128, 128))
    assert seam_ratio(smooth, plan, bayer=True) == pytest.approx(1.0, abs=0.15)
    stepped = smooth.copy()
    for b in [a for a, _ in plan.rows.keep[1:]]:
        stepped[2 * b:] += 40  # a jump where one tile's kept rows end and the next begin
    assert seam_ratio(stepped, plan, bayer=True) > 3
    # the same jump away from the borders is not a seam
    shifted = smooth.copy()
    shifted[2 * plan.rows.keep[1][0] + 9:] += 40
    assert seam_ratio(shifted, plan, bayer=True) < 1.5
    assert math.isnan(seam_ratio(smooth, plan_tiles(64, 64, tile=0, overlap=0, multiple=8), bayer=True))


def test_file_metadata_reaches_the_denoiser_as_file_metadata(frame, tiny_unet_pt, monkeypatch):
    """compare passes the RawFrame itself, so a file's ISO stays a file's ISO (blind models ignore it)."""
    from rawdenoise.denoiser import Denoiser

    seen = []
    real_run = Denoiser.run

    def spy(self, raw, **kw):
        seen.append((raw, kw))
        return real_run(self, raw, **kw)

    monkeypatch.setattr(Denoiser, "run", spy)
    path, _ = frame
    compare([tiny_unet_pt, tiny_unet_pt], path, tile=64)
    assert all(kw == {} and raw.meta["iso"] == 400 for raw, kw in seen)
    compare([tiny_unet_pt, tiny_unet_pt], path, tile=64, iso=800)
    assert seen[-1][1] == {"iso": 800}
