"""DNG/TIFF/NPY writers, checked with independent readers (rawpy/LibRaw, tifffile, numpy)."""

import json

import numpy as np
import pytest

from rawdenoise import dng
from rawdenoise.errors import InputError

PHASES = ("RGGB", "BGGR", "GRBG", "GBRG")
SITES = ((0, 0), (0, 1), (1, 0), (1, 1))
META = {"make": "Testmaker", "model": "TM-1", "iso": 1600, "exposure_time": 1 / 250,
        "color_matrix": [[0.9, -0.3, -0.05], [-0.4, 1.2, 0.2], [-0.1, 0.25, 0.6]],
        "as_shot_neutral": [0.5, 1.0, 0.8], "orientation": 1}


def _mosaic(rng, h, w, black, white=4095):
    return rng.integers(int(min(black)), white + 1, size=(h, w)).astype(np.uint16)


@pytest.mark.parametrize("cfa", PHASES)
@pytest.mark.parametrize("shape", [(37, 53), (40, 64), (23, 22)])
def test_dng_read_back_by_libraw(tmp_path, rng, cfa, shape):
    rawpy = pytest.importorskip("rawpy")
    black = [60, 62, 64, 66]  # unequal, including the two greens
    data = _mosaic(rng, *shape, black)
    before = data.copy()
    p = dng.write_dng(tmp_path / "x.dng", data, cfa=cfa, black_level=black, white_level=4095, meta=META)
    np.testing.assert_array_equal(data, before)
    with rawpy.imread(str(p)) as r:
        np.testing.assert_array_equal(r.raw_image_visible, data)
        desc = r.color_desc.decode()
        assert "".join(desc[i] for i in r.raw_pattern.ravel()) == cfa
        colors = r.raw_colors_visible  # colour index per pixel, independent of our mapping
        for (y, x), b in zip(SITES, black):
            assert r.black_level_per_channel[colors[y, x]] == b
        assert r.white_level == 4095
        assert r.other.iso_speed == 1600
        assert r.other.shutter_speed == pytest.approx(1 / 250, rel=1e-6)
        wb = r.camera_whitebalance  # LibRaw's multipliers are 1 / AsShotNeutral
        assert wb[0] / wb[1] == pytest.approx(2.0, rel=1e-5)
        assert wb[2] / wb[1] == pytest.approx(1.25, rel=1e-5)
        assert r.sizes.flip == 0


def test_dng_tags_read_by_tifffile(tmp_path, rng):
    tifffile = pytest.importorskip("tifffile")
    data = _mosaic(rng, 30, 41, [0] * 4)
    meta = {**META, "orientation": 6}
    p = dng.write_dng(tmp_path / "x.dng", data, cfa="GRBG", black_level=[1, 2, 3, 4], white_level=4095, meta=meta)
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        tags = {t.code: t.value for t in page.tags}
        np.testing.assert_array_equal(page.asarray(), data)
    assert tags[271] == "Testmaker" and tags[272] == "TM-1" and tags[50708] == "Testmaker TM-1"
    assert tuple(tags[50706]) == (1, 4, 0, 0)
    assert tags[262] == 32803 and tags[274] == 6 and tags[50778] == 21
    assert tuple(tags[33421]) == (2, 2) and tuple(tags[50713]) == (2, 2)
    assert bytes(tags[33422]) == bytes([1, 0, 2, 1])
    cm = np.asarray(tags[50721], dtype=float).reshape(-1, 2)
    np.testing.assert_allclose(cm[:, 0] / cm[:, 1], np.ravel(META["color_matrix"]), atol=1e-9)


def test_orientation_reaches_libraw(tmp_path, rng):
    rawpy = pytest.importorskip("rawpy")
    data = _mosaic(rng, 24, 32, [0] * 4)
    # EXIF orientation 6 (rotate 90 CW) and 8 are LibRaw flips 6 and 5
    for orientation, flip in ((6, 6), (8, 5), (3, 3)):
        p = dng.write_dng(tmp_path / f"o{orientation}.dng", data, cfa="RGGB", black_level=0, white_level=4095,
                          meta={"orientation": orientation})
        with rawpy.imread(str(p)) as r:
            assert r.sizes.flip == flip


@pytest.mark.parametrize("cfa", PHASES)
def test_postprocess_of_grey_card_is_grey(tmp_path, cfa):
    """A neutral patch in camera space develops to equal linear R, G, B at the expected level."""
    rawpy = pytest.importorskip("rawpy")
    black = np.array([60, 62, 64, 66])
    neutral = {"R": 0.5, "G": 1.0, "B": 0.8}
    data = np.zeros((40, 48), np.uint16)
    for i, (y, x) in enumerate(SITES):
        data[y::2, x::2] = black[i] + 1000 * neutral[cfa[i]]
    p = dng.write_dng(tmp_path / "grey.dng", data, cfa=cfa, black_level=black, white_level=4095,
                      meta={"as_shot_neutral": [neutral["R"], 1.0, neutral["B"]]})
    with rawpy.imread(str(p)) as r:
        rgb = r.postprocess(use_camera_wb=True, no_auto_bright=True, gamma=(1, 1), output_bps=16)
    assert rgb.shape == (40, 48, 3)
    mean = rgb.reshape(-1, 3).mean(0) / 65535
    # LibRaw scales green to (v - black) / (white - min(black)) and balances R and B onto it
    np.testing.assert_allclose(mean, 1000 / (4095 - 60), rtol=0.01)


def test_dng_refuses_what_does_not_fit(tmp_path, rng):
    with pytest.raises(InputError, match="normalised"):
        dng.write_dng(tmp_path / "a.dng", rng.random((8, 8)).astype(np.float32), cfa="RGGB",
                      black_level=0.0, white_level=1.0)
    with pytest.raises(InputError, match="16-bit"):
        dng.write_dng(tmp_path / "b.dng", np.zeros((8, 8), np.uint32), cfa="RGGB", black_level=0,
                      white_level=2 ** 20)
    with pytest.raises(InputError, match="cfa"):
        dng.write_dng(tmp_path / "c.dng", np.zeros((8, 8), np.uint16), black_level=0, white_level=100)
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_and_no_partial_file(tmp_path, rng, monkeypatch):
    data = _mosaic(rng, 24, 24, [0] * 4)
    target = tmp_path / "x.dng"
    target.write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        dng.write_dng(target, data, cfa="RGGB", black_level=0, white_level=4095)
    assert target.read_bytes() == b"keep me"

    def broken(path, tags, image):  # a write that dies half-way
        with open(path, "wb") as f:
            f.write(image[: len(image) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(dng, "write_tiff_file", broken)
    with pytest.raises(OSError):
        dng.write_dng(target, data, cfa="RGGB", black_level=0, white_level=4095, overwrite=True)
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.dng"]


def test_tiff_output(tmp_path, rng):
    tifffile = pytest.importorskip("tifffile")
    data = _mosaic(rng, 21, 34, [0] * 4)
    p = dng.write_output(tmp_path / "x.tif", data, cfa="BGGR", black_level=[1, 2, 3, 4], white_level=4095)
    with tifffile.TiffFile(p) as tf:
        np.testing.assert_array_equal(tf.pages[0].asarray(), data)
        desc = json.loads(tf.pages[0].description)
    assert desc == {"cfa": "BGGR", "black_level": [1, 2, 3, 4], "white_level": 4095}


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_npy_output_round_trip(tmp_path, rng, dtype):
    from rawdenoise.rawio import read_raw

    data = (rng.random((15, 26)) * 1000).astype(dtype)
    p = dng.write_output(tmp_path / "x.npy", data, cfa="GBRG", black_level=[1, 2, 3, 4], white_level=1000,
                         meta={"iso": 200})
    np.testing.assert_array_equal(np.load(p), data)
    side = json.loads((tmp_path / "x.json").read_text())
    assert side["cfa"] == "GBRG" and side["black_level"] == [1, 2, 3, 4] and side["iso"] == 200
    frame = read_raw(p)
    np.testing.assert_array_equal(frame.data, data)
    assert frame.black_level == (1, 2, 3, 4) and frame.white_level == 1000


def test_write_output_suffix(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        dng.write_output(tmp_path / "x.jpg", np.zeros((4, 4), np.uint16), cfa="RGGB", black_level=0,
                         white_level=10)


def test_like_frame_supplies_fields(tmp_path, rng):
    from rawdenoise.rawio import make_frame

    frame = make_frame(_mosaic(rng, 10, 12, [5] * 4), "GRBG", [5, 6, 7, 8], 4095, {"iso": 100})
    p = dng.write_output(tmp_path / "x.npy", np.asarray(frame.data), like=frame)
    side = json.loads(p.with_suffix(".json").read_text())
    assert side["cfa"] == "GRBG" and side["black_level"] == [5, 6, 7, 8] and side["iso"] == 100
