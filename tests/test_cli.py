"""The `rawdenoise` command: denoise through an identity model, info, refusals, file safety."""

import json
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest

from rawdenoise import dng
from rawdenoise.cli import main
from rawdenoise.fileio import sha256_file

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("RGGB", "BGGR", "GRBG", "GBRG")
BLACK = [60, 62, 64, 66]


def _frame(rng, h=37, w=53):
    return rng.integers(60, 4096, (h, w)).astype(np.uint16)


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err):
    assert rc == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rawdenoise: error: "), err


@pytest.mark.parametrize("cfa", PHASES)
def test_identity_model_reproduces_dng_exactly(tmp_path, rng, identity_pt, capsys, cfa):
    rawpy = pytest.importorskip("rawpy")
    data = _frame(rng)
    matrix = [[0.9, -0.3, -0.05], [-0.4, 1.2, 0.2], [-0.1, 0.25, 0.6]]
    src = dng.write_dng(tmp_path / "in.dng", data, cfa=cfa, black_level=BLACK, white_level=4095,
                        meta={"make": "Testmaker", "model": "TM-1", "iso": 800, "orientation": 6,
                              "color_matrix": matrix, "as_shot_neutral": [0.5, 1.0, 0.8]})
    digest = sha256_file(src)
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "out.dng", "--model", identity_pt], capsys)
    assert rc == 0, err
    assert sha256_file(src) == digest  # the input is never touched
    with rawpy.imread(str(tmp_path / "out.dng")) as r:
        np.testing.assert_array_equal(r.raw_image_visible, data)
        desc = r.color_desc.decode()
        assert "".join(desc[i] for i in r.raw_pattern.ravel()) == cfa
        colors = r.raw_colors_visible
        assert [r.black_level_per_channel[colors[y, x]] for y, x in ((0, 0), (0, 1), (1, 0), (1, 1))] == BLACK
        assert r.white_level == 4095 and r.other.iso_speed == 800 and r.sizes.flip == 6
        wb = r.camera_whitebalance
        assert (wb[0] / wb[1], wb[2] / wb[1]) == pytest.approx((2.0, 1.25), rel=1e-5)
    tifffile = pytest.importorskip("tifffile")
    with tifffile.TiffFile(tmp_path / "out.dng") as tf:
        tags = {t.code: t.value for t in tf.pages[0].tags}
    assert (tags[271], tags[272]) == ("Testmaker", "TM-1")
    cm = np.asarray(tags[50721], dtype=float).reshape(-1, 2)
    np.testing.assert_allclose(cm[:, 0] / cm[:, 1], np.ravel(matrix), atol=1e-9)


@pytest.mark.parametrize("cfa", PHASES)
def test_headerless_through_cli(tmp_path, rng, identity_pt, capsys, cfa):
    data = _frame(rng, 22, 31)
    src = tmp_path / "dump.raw"
    src.write_bytes(data.astype(">u2").tobytes())
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "out.npy", "--model", identity_pt,
                       "--width", 31, "--height", 22, "--cfa", cfa, "--black", "60,62,64,66", "--white", 4095,
                       "--byte-order", "big"], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), data)
    side = json.loads((tmp_path / "out.json").read_text())
    assert side["cfa"] == cfa and side["black_level"] == BLACK and side["white_level"] == 4095


def test_headerless_needs_its_options(tmp_path, identity_pt, capsys):
    src = tmp_path / "dump.bin"
    src.write_bytes(bytes(2 * 24 * 24))
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "out.dng", "--model", identity_pt], capsys)
    _assert_one_line_error(rc, err)
    assert "--width" in err and "--black" in err
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "out.dng", "--model", identity_pt, "--width", 25,
                       "--height", 24, "--cfa", "RGGB", "--black", 0, "--white", 1023], capsys)
    _assert_one_line_error(rc, err)
    assert "need exactly" in err
    assert not (tmp_path / "out.dng").exists()


def test_several_inputs_to_folder(tmp_path, rng, identity_pt, capsys):
    pytest.importorskip("rawpy")
    frames = {}
    for name, cfa in (("a", "RGGB"), ("b", "GBRG")):
        frames[name] = _frame(rng, 24, 30)
        dng.write_dng(tmp_path / f"{name}.dng", frames[name], cfa=cfa, black_level=BLACK, white_level=4095)
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = _run(["denoise", tmp_path / "a.dng", tmp_path / "b.dng", "-o", out, "--model", identity_pt,
                       "--format", "npy", "--no-progress"], capsys)
    assert rc == 0, err
    for name, data in frames.items():
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), data)
    # several inputs need a folder
    rc, _, err = _run(["denoise", tmp_path / "a.dng", tmp_path / "b.dng", "-o", tmp_path / "x.dng",
                       "--model", identity_pt], capsys)
    _assert_one_line_error(rc, err)


def test_one_bad_file_among_several(tmp_path, rng, identity_pt, capsys):
    pytest.importorskip("rawpy")
    good = dng.write_dng(tmp_path / "good.dng", _frame(rng, 24, 24), cfa="RGGB", black_level=0, white_level=4095)
    bad = tmp_path / "bad.nef"
    bad.write_bytes(b"not a raw file" * 10)
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = _run(["denoise", bad, good, "-o", out, "--model", identity_pt], capsys)
    assert rc == 1 and "Traceback" not in err
    assert "bad.nef" in err and "1 of 2 files failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.dng"]


def test_refuses_non_cfa_and_truncated(tmp_path, rng, identity_pt, capsys, linear_dng):
    pytest.importorskip("rawpy")
    linear = linear_dng(tmp_path / "linear.dng")
    good = dng.write_dng(tmp_path / "good.dng", _frame(rng, 32, 32), cfa="RGGB", black_level=0, white_level=4095)
    cut = tmp_path / "cut.dng"
    cut.write_bytes(good.read_bytes()[:-100])
    for src, why in ((linear, "no CFA"), (cut, "truncated")):
        digest = sha256_file(src)
        rc, _, err = _run(["denoise", src, "-o", tmp_path / "out.dng", "--model", identity_pt], capsys)
        _assert_one_line_error(rc, err)
        assert why in err
        assert sha256_file(src) == digest
    # nothing left behind: no output, no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.dng", "good.dng", "linear.dng"]


def test_refusal_in_a_subprocess_has_no_traceback(tmp_path, rng):
    """Whole-process stderr (LibRaw's own C messages included) is one line."""
    pytest.importorskip("rawpy")
    (tmp_path / "x.nef").write_bytes(b"\0" * 64)
    good = dng.write_dng(tmp_path / "good.dng", _frame(rng, 32, 32), cfa="RGGB", black_level=0, white_level=4095)
    cut = tmp_path / "cut.dng"
    cut.write_bytes(good.read_bytes()[:-100])
    for src in (tmp_path / "x.nef", cut):
        r = subprocess.run([sys.executable, "-m", "rawdenoise", "info", str(src)], capture_output=True, text=True,
                           cwd=ROOT)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr
        assert r.stderr.startswith("rawdenoise: error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_no_overwrite_without_flag(tmp_path, rng, identity_pt, capsys):
    pytest.importorskip("rawpy")
    data = _frame(rng, 24, 24)
    src = dng.write_dng(tmp_path / "in.dng", data, cfa="RGGB", black_level=BLACK, white_level=4095)
    out = tmp_path / "out.dng"
    out.write_bytes(b"precious")
    rc, _, err = _run(["denoise", src, "-o", out, "--model", identity_pt], capsys)
    _assert_one_line_error(rc, err)
    assert "--overwrite" in err and out.read_bytes() == b"precious"
    rc, _, err = _run(["denoise", src, "-o", out, "--model", identity_pt, "--overwrite"], capsys)
    assert rc == 0, err
    assert out.read_bytes() != b"precious"
    # writing over the input itself is refused even with --overwrite
    digest = sha256_file(src)
    rc, _, err = _run(["denoise", src, "-o", tmp_path, "--model", identity_pt, "--overwrite"], capsys)
    _assert_one_line_error(rc, err)
    assert "input file itself" in err and sha256_file(src) == digest


def test_preview(tmp_path, rng, identity_pt, capsys):
    pytest.importorskip("rawpy")
    Image = pytest.importorskip("PIL.Image")
    src = dng.write_dng(tmp_path / "in.dng", _frame(rng, 40, 56), cfa="GRBG", black_level=BLACK, white_level=4095)
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "out.dng", "--model", identity_pt,
                       "--preview", tmp_path / "p.png"], capsys)
    assert rc == 0, err
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
        pix = np.asarray(im)
    from rawdenoise.preview import GAP

    assert pix.shape == (40, 2 * 56 + GAP, 3)
    # identity model: both halves identical, developed with the same settings
    np.testing.assert_array_equal(pix[:, :56], pix[:, 56 + GAP:])
    assert pix[:, :56].std() > 0


def test_info_raw_and_model(tmp_path, rng, identity_pt, capsys):
    np.save(tmp_path / "f.npy", _frame(rng, 10, 12))
    (tmp_path / "f.json").write_text(json.dumps({"cfa": "BGGR", "black_level": 64, "white_level": 4095}))
    rc, out, err = _run(["info", tmp_path / "f.npy", "--json"], capsys)
    assert rc == 0, err
    info = json.loads(out)
    assert (info["height"], info["width"], info["cfa"], info["black_level"], info["white_level"]) == (
        10, 12, "BGGR", [64] * 4, 4095)
    rc, out, err = _run(["info", identity_pt, "--json"], capsys)
    assert rc == 0, err
    info = json.loads(out)
    assert info["runtime"] == "torch" and info["spec"]["name"] == "unet" and info["spec"]["layout"] == "bayer4"
    assert info["io"]["inputs"][0]["shape"][1] == 4
    rc, out, err = _run(["info", identity_pt], capsys)
    assert rc == 0 and "channel_order: RGGB" in out


def test_model_omitted_uses_the_default_model(tmp_path, rng, capsys):
    """Without --model the shipped default model runs (blind noise estimate: no ISO in the file)."""
    from rawdenoise import Denoiser

    src = tmp_path / "f.npy"
    data = _frame(rng, 128, 160)
    np.save(src, data)
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "o.npy", "--cfa", "RGGB", "--black", 60, "--white", 4095],
                      capsys)
    assert rc == 0, err
    want = Denoiser.load("default").run(data, cfa="RGGB", black_level=60, white_level=4095)
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), want)
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "e.npy", "--cfa", "RGGB", "--black", 60, "--white", 4095,
                       "--ensemble", 4], capsys)
    assert rc == 0, err
    want = Denoiser.load("default").run(data, cfa="RGGB", black_level=60, white_level=4095, ensemble=4)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), want)


def test_profile_gives_the_noise_at_the_file_iso(tmp_path, rng, capsys):
    """--profile: the frame's noise comes from the camera profile at its ISO, not from the frame."""
    pytest.importorskip("onnxruntime")
    from rawdenoise import Denoiser
    from rawdenoise.profile import default_profile

    profile = default_profile()
    ppath = profile.save(tmp_path / "cam.json")
    src = tmp_path / "f.npy"
    data = _frame(rng, 128, 160)
    np.save(src, data)
    base = ["denoise", src, "--cfa", "RGGB", "--black", 60, "--white", 4095, "--profile", ppath]
    rc, _, err = _run(base + ["-o", tmp_path / "noiso.npy"], capsys)
    _assert_one_line_error(rc, err)
    assert "--iso" in err
    assert _run(base + ["-o", tmp_path / "o.npy", "--iso", 1600], capsys)[0] == 0
    want = Denoiser.load("default").run(data, cfa="RGGB", black_level=60, white_level=4095,
                                        noise=profile.normalised(1600))
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), want)


def test_unknown_output_suffix(tmp_path, rng, identity_pt, capsys):
    src = tmp_path / "f.npy"
    np.save(src, _frame(rng, 8, 8))
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "o.jpg", "--model", identity_pt], capsys)
    _assert_one_line_error(rc, err)


def test_denoiser_run_accepts_paths_and_frames(tmp_path, rng, identity_pt):
    from rawdenoise import Denoiser
    from rawdenoise.rawio import read_raw

    data = _frame(rng, 19, 26)
    src = dng.write_npy(tmp_path / "f.npy", data, cfa="GRBG", black_level=BLACK, white_level=4095)
    with Denoiser.load(identity_pt) as dn:
        np.testing.assert_array_equal(dn.run(str(src)), data)
        frame = read_raw(src)
        np.testing.assert_array_equal(dn.run(frame), data)
        np.testing.assert_array_equal(frame.data, data)


def test_npy_input_and_its_sidecar_are_protected(tmp_path, rng, identity_pt, capsys):
    data = _frame(rng, 12, 12)
    src = dng.write_npy(tmp_path / "f.npy", data, cfa="RGGB", black_level=BLACK, white_level=4095)
    hashes = {p.name: sha256_file(p) for p in tmp_path.iterdir()}
    rc, _, err = _run(["denoise", src, "-o", tmp_path, "--format", "npy", "--model", identity_pt, "--overwrite"],
                      capsys)
    _assert_one_line_error(rc, err)
    assert "input file itself" in err
    assert {p.name: sha256_file(p) for p in tmp_path.iterdir()} == hashes


# ---- failures a user hits: one line each, nothing left behind --------------------------------------
def _npy(tmp_path, data, name="shot", **meta):
    np.save(tmp_path / f"{name}.npy", data)
    (tmp_path / f"{name}.json").write_text(json.dumps({"cfa": "RGGB", "black_level": 512, "white_level": 16383,
                                                       **meta}))
    return tmp_path / f"{name}.npy"


def test_iso_on_the_command_line_is_explicit(tmp_path, rng, capsys):
    from rawdenoise import Denoiser

    clean = 0.1 + 0.4 * np.add.outer(np.linspace(0, 1, 128), np.linspace(0, 1, 128)) / 2
    k, s2 = 2e-4, 4e-6                                       # a noisy ISO-1600-like frame
    noisy = np.clip(clean + rng.normal(0, np.sqrt(k * clean + s2)), 0, 1)
    data = np.rint(512 + noisy * (16383 - 512)).astype(np.uint16)
    src = _npy(tmp_path, data, iso=100)                       # the file says ISO 100
    assert _run(["denoise", src, "-o", tmp_path / "blind.npy"], capsys)[0] == 0
    assert _run(["denoise", src, "-o", tmp_path / "given.npy", "--iso", 1600], capsys)[0] == 0
    blind, given = np.load(tmp_path / "blind.npy"), np.load(tmp_path / "given.npy")
    assert np.abs(blind.astype(int) - given).max() > 0       # the ISO counted
    want = Denoiser.load("default").run(data, cfa="RGGB", black_level=512, white_level=16383, iso=1600)
    np.testing.assert_array_equal(given, want)


def test_output_folder_problems_are_found_before_any_work(tmp_path, rng, identity_pt, capsys, monkeypatch):
    src = _npy(tmp_path, _frame(rng), name="in")
    (tmp_path / "a_file.kdc").write_bytes(b"x")
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "a_file.kdc" / "out.dng", "--model", identity_pt], capsys)
    _assert_one_line_error(rc, err)
    assert "is a file, not a folder" in err
    import rawdenoise.cli as cli

    def refuse(path, mode):
        return Path(path) != tmp_path / "locked"
    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(cli.os, "access", refuse)
    monkeypatch.setattr("rawdenoise.denoiser.Denoiser.run", lambda *a, **k: pytest.fail("work started"))
    for argv in (["-o", tmp_path / "locked" / "out.dng"],
                 ["-o", tmp_path / "out.dng", "--preview", tmp_path / "locked" / "p.png"]):
        rc, _, err = _run(["denoise", src, "--model", identity_pt, *argv], capsys)
        _assert_one_line_error(rc, err)
        assert "not writable" in err
    assert not list((tmp_path / "locked").iterdir()) and not (tmp_path / "out.dng").exists()


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["denoise"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "rawdenoise denoise: error:" in err


def test_warnings_are_one_line(tmp_path, capsys):
    src = _npy(tmp_path, np.full((64, 64), 4000, np.uint16), name="flat")
    rc, _, err = _run(["denoise", src, "-o", tmp_path / "flat_out.npy"], capsys)
    assert rc == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rawdenoise: warning: ") and "no noise" in lines[0]


def test_info_into_a_closed_pipe_is_quiet(identity_pt):
    r = subprocess.run(f"{sys.executable} -m rawdenoise info {identity_pt} --json | head -c 10",
                       shell=True, capture_output=True, text=True, cwd=ROOT)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr and len(r.stdout) == 10


def test_compare_takes_the_headerless_options(tmp_path, rng, identity_pt, capsys):
    data = _frame(rng, 24, 32)
    (tmp_path / "dump.raw").write_bytes(data.astype("<u2").tobytes())
    rc, out, err = _run(["compare", identity_pt, identity_pt, "--raw", tmp_path / "dump.raw", "--width", 32,
                         "--height", 24, "--cfa", "RGGB", "--black", 60, "--white", 4095], capsys)
    assert rc == 0, err
    assert "identity.pt (ref)" in out
