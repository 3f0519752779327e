"""read_raw: .npy + sidecar, headerless dumps, camera files through rawpy, and clear refusals."""

import json
from pathlib import Path

import numpy as np
import pytest

from rawdenoise import dng, rawio
from rawdenoise.errors import InputError, RawFileError
from rawdenoise.rawio import read_raw

PHASES = ("RGGB", "BGGR", "GRBG", "GBRG")


def test_import_does_not_need_rawpy():
    import subprocess
    import sys

    code = ("import sys, rawdenoise.rawio, rawdenoise.dng, rawdenoise.cli; "
            "assert 'rawpy' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---- .npy + sidecar ---------------------------------------------------------------------------------
def test_npy_with_sidecar(tmp_path, rng):
    data = rng.integers(0, 4096, (13, 18)).astype(np.uint16)
    np.save(tmp_path / "f.npy", data)
    (tmp_path / "f.json").write_text(json.dumps(
        {"cfa": "grbg", "black_level": [1, 2, 3, 4], "white_level": 4095, "iso": 800, "make": "M"}))
    frame = read_raw(tmp_path / "f.npy")
    np.testing.assert_array_equal(frame.data, data)
    assert frame.cfa == "GRBG" and frame.black_level == (1, 2, 3, 4) and frame.white_level == 4095
    assert frame.meta["iso"] == 800 and frame.meta["make"] == "M"
    assert frame.meta["source"] == str(tmp_path / "f.npy")
    assert not frame.data.flags.writeable
    with pytest.raises(ValueError):
        frame.data[0, 0] = 1
    # overrides win over the sidecar; a scalar black level applies to all four sites
    frame = read_raw(tmp_path / "f.npy", cfa="BGGR", black_level=7, iso=100)
    assert frame.cfa == "BGGR" and frame.black_level == (7, 7, 7, 7) and frame.meta["iso"] == 100


def test_npy_needs_levels(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 4), np.uint16))
    with pytest.raises(InputError, match="cfa, black_level, white_level.*f.json"):
        read_raw(tmp_path / "f.npy")
    (tmp_path / "f.json").write_text("{not json")
    with pytest.raises(RawFileError, match="not valid JSON"):
        read_raw(tmp_path / "f.npy")


def test_npy_is_never_unpickled(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RawFileError, match="not a readable"):
        read_raw(tmp_path / "o.npy", cfa="RGGB", black_level=0, white_level=1)


def test_bad_levels_are_input_errors(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 4), np.uint16))
    with pytest.raises(InputError, match="below white_level"):
        read_raw(tmp_path / "f.npy", cfa="RGGB", black_level=500, white_level=100)
    with pytest.raises(InputError, match="not a 2x2 Bayer"):
        read_raw(tmp_path / "f.npy", cfa="RGBW", black_level=0, white_level=100)


# ---- headerless dumps -------------------------------------------------------------------------------
@pytest.mark.parametrize("cfa", PHASES)
@pytest.mark.parametrize("order", ["little", "big"])
def test_headerless_each_phase(tmp_path, rng, cfa, order):
    h, w, offset = 11, 14, 32
    data = rng.integers(0, 1024, (h, w)).astype(np.uint16)
    path = tmp_path / "dump.raw"
    path.write_bytes(b"\xab" * offset + data.astype("<u2" if order == "little" else ">u2").tobytes())
    frame = read_raw(path, width=w, height=h, cfa=cfa, black_level=[1, 2, 3, 4], white_level=1023,
                     byte_order=order, offset=offset)
    np.testing.assert_array_equal(frame.data, data)
    assert frame.data.dtype == np.uint16 and frame.data.dtype.isnative
    assert frame.cfa == cfa and frame.black_level == (1, 2, 3, 4) and frame.white_level == 1023


def test_headerless_dtypes(tmp_path, rng):
    data = rng.random((6, 8)).astype(np.float32)
    (tmp_path / "f.bin").write_bytes(data.tobytes())
    frame = read_raw(tmp_path / "f.bin", width=8, height=6, dtype="float32", cfa="RGGB", black_level=0,
                     white_level=1)
    np.testing.assert_array_equal(frame.data, data)


def test_headerless_size_checked_exactly(tmp_path):
    (tmp_path / "f.raw").write_bytes(bytes(2 * 10 * 8 + 1))
    with pytest.raises(RawFileError, match="161 bytes .* need exactly 160"):
        read_raw(tmp_path / "f.raw", width=10, height=8, cfa="RGGB", black_level=0, white_level=1023)
    with pytest.raises(InputError, match="width, height, cfa, black_level, white_level must be given"):
        read_raw(tmp_path / "f.raw")
    with pytest.raises(InputError, match="byte_order"):
        read_raw(tmp_path / "f.raw", width=10, height=8, cfa="RGGB", black_level=0, white_level=1023,
                 byte_order="middle")


def test_headerless_never_goes_to_rawpy(tmp_path, monkeypatch):
    def no_rawpy():
        raise AssertionError("a headerless dump was sent to rawpy")

    monkeypatch.setattr(rawio, "_import_rawpy", no_rawpy)
    (tmp_path / "f.raw").write_bytes(bytes(2 * 24 * 24))
    frame = read_raw(tmp_path / "f.raw", width=24, height=24, cfa="RGGB", black_level=0, white_level=1023)
    assert frame.data.shape == (24, 24)


def test_layout_options_only_for_headerless(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 4), np.uint16))
    with pytest.raises(InputError, match="headerless"):
        read_raw(tmp_path / "f.npy", width=4, cfa="RGGB", black_level=0, white_level=10)
    with pytest.raises(InputError, match="unknown option"):
        read_raw(tmp_path / "f.npy", whitelevel=10)


def test_missing_file(tmp_path):
    with pytest.raises(RawFileError, match="does not exist"):
        read_raw(tmp_path / "nope.cr2")


# ---- camera files through rawpy -----------------------------------------------------------------------
@pytest.mark.parametrize("cfa", PHASES)
def test_dng_through_rawpy(tmp_path, rng, cfa):
    rawpy = pytest.importorskip("rawpy")
    black = [60, 62, 64, 66]
    data = rng.integers(60, 4096, (27, 38)).astype(np.uint16)
    meta = {"make": "Testmaker", "model": "TM-1", "iso": 400, "exposure_time": 0.01,
            "color_matrix": [[0.9, -0.3, -0.05], [-0.4, 1.2, 0.2], [-0.1, 0.25, 0.6]],
            "as_shot_neutral": [0.5, 1.0, 0.8], "orientation": 8}
    p = dng.write_dng(tmp_path / "x.dng", data, cfa=cfa, black_level=black, white_level=4095, meta=meta)
    frame = read_raw(p)
    # reference: LibRaw's own per-pixel colour index and per-colour black
    with rawpy.imread(str(p)) as r:
        colors, per_color = r.raw_colors_visible, r.black_level_per_channel
        expect_black = tuple(float(per_color[colors[y, x]]) for y, x in ((0, 0), (0, 1), (1, 0), (1, 1)))
    np.testing.assert_array_equal(frame.data, data)
    assert not frame.data.flags.writeable
    assert frame.cfa == cfa
    assert frame.black_level == expect_black == tuple(float(b) for b in black)
    assert frame.white_level == 4095
    m = frame.meta
    assert (m["make"], m["model"], m["iso"], m["orientation"]) == ("Testmaker", "TM-1", 400, 8)
    assert m["exposure_time"] == pytest.approx(0.01, rel=1e-6)
    np.testing.assert_allclose(m["color_matrix"], meta["color_matrix"], atol=1e-9)
    np.testing.assert_allclose(m["as_shot_neutral"], meta["as_shot_neutral"], atol=1e-6)
    # overrides win over the file
    assert read_raw(p, iso=3200, white_level=4000).meta["iso"] == 3200


def _xtrans_dng(path):
    pattern = [1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1,
               1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1]
    tags = dng.dng_tags(48, 48, "RGGB", [0] * 4, 4095, {})
    tags.update({33421: (dng.SHORT, (6, 6)), 33422: (dng.BYTE, bytes(pattern)),
                 50713: (dng.SHORT, (1, 1)), 50714: (dng.LONG, 0)})
    dng.write_tiff_file(path, tags, np.full((48, 48), 1000, "<u2").tobytes())
    return path


def test_refusals(tmp_path, rng, linear_dng):
    pytest.importorskip("rawpy")
    with pytest.raises(RawFileError, match="no CFA mosaic"):
        read_raw(linear_dng(tmp_path / "linear.dng"))
    with pytest.raises(RawFileError, match="X-Trans 6x6"):
        read_raw(_xtrans_dng(tmp_path / "xtrans.dng"))
    good = dng.write_dng(tmp_path / "good.dng", rng.integers(0, 4096, (32, 32)).astype(np.uint16),
                         cfa="RGGB", black_level=0, white_level=4095)
    blob = good.read_bytes()
    for n in (len(blob) - 2, len(blob) // 2, 100, 0):
        (tmp_path / "cut.dng").write_bytes(blob[:n])
        with pytest.raises(RawFileError, match="truncated"):
            read_raw(tmp_path / "cut.dng")
    (tmp_path / "noise.cr2").write_bytes(rng.integers(0, 256, 5000).astype(np.uint8).tobytes())
    with pytest.raises(RawFileError, match="not a RAW file"):
        read_raw(tmp_path / "noise.cr2")


def test_rgb_tiff_refused(tmp_path, rng):
    pytest.importorskip("rawpy")
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(rng.integers(0, 255, (24, 32, 3)).astype(np.uint8)).save(tmp_path / "rgb.tif")
    with pytest.raises(RawFileError):
        read_raw(tmp_path / "rgb.tif")


def test_describe_is_json(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 6), np.uint16))
    frame = read_raw(tmp_path / "f.npy", cfa="RGGB", black_level=[1, 2, 3, 4.5], white_level=1023)
    d = json.loads(json.dumps(frame.describe()))
    assert d["height"] == 4 and d["width"] == 6 and d["black_level"] == [1, 2, 3, 4.5] and d["cfa"] == "RGGB"


def test_white_level_below_the_data_is_raised(tmp_path, rng):
    """A file whose WhiteLevel is below its own data would clip highlights: use the bit depth."""
    rawpy = pytest.importorskip("rawpy")
    data = rng.integers(0, 3000, (24, 24)).astype(np.uint16)
    data[5, 5] = 3900
    p = dng.write_dng(tmp_path / "x.dng", data, cfa="RGGB", black_level=0, white_level=1000)
    with rawpy.imread(str(p)) as r:
        assert r.white_level == 1000  # what the file says
    assert read_raw(p).white_level == 4095
    assert read_raw(p, white_level=3900).white_level == 3900


def test_cfa_tiff_round_trip(tmp_path, rng):
    pytest.importorskip("tifffile")
    data = rng.integers(0, 4096, (17, 30)).astype(np.uint16)
    p = dng.write_tiff(tmp_path / "x.tiff", data, cfa="GBRG", black_level=[1, 2, 3, 4], white_level=4095)
    frame = read_raw(p)
    np.testing.assert_array_equal(frame.data, data)
    assert frame.cfa == "GBRG" and frame.black_level == (1, 2, 3, 4) and frame.white_level == 4095
    assert read_raw(p, cfa="RGGB").cfa == "RGGB"
