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


# ---- colour and rendering tags carried from a source DNG (meta["dng"]) -----------------------------------
def _example_value(name, spec, h, w):
    """A plausible value of each kind of carried tag, as meta["dng"] holds it."""
    if spec.type == dng.TEXT:
        return f"{name} ü" if name == "ProfileCopyright" else f"{name} text"  # UTF-8 goes as BYTE
    if name.startswith("OpcodeList"):
        return bytes(4)  # an empty opcode list: a big-endian count of 0
    if spec.type == dng.UNDEFINED:
        return bytes(range(1, 9))
    if name in ("DefaultCropOrigin", "DefaultCropSize"):
        return [2, 4] if name.endswith("Origin") else [w - 6, h - 8]
    if name == "DefaultUserCrop":
        return [0.1, 0.0, 0.9, 1.0]
    if name.startswith("BlackLevelDelta"):
        n = w if name.endswith("H") else h
        return [(-1.0) ** i * 0.5 for i in range(n)]  # mean 0 or 0.5/n: LibRaw adds nothing
    n = {"width": w, "height": h}.get(spec.count, spec.count) or 6
    if spec.type in (dng.SHORT, dng.LONG):
        return 3 if n == 1 else list(range(1, n + 1))
    vals = [round(0.25 + 0.125 * i, 4) * (-1 if spec.type == dng.SRATIONAL and i % 4 == 1 else 1) for i in range(n)]
    return vals[0] if n == 1 else vals


def test_every_carried_tag_round_trips(tmp_path, rng):
    """write_dng writes each tag of CARRIED_TAGS and read_raw reads it back the same."""
    h, w = 24, 36
    carried = {name: _example_value(name, spec, h, w) for name, spec in dng.CARRIED_TAGS.items()}
    carried["DNGVersion"] = [1, 6, 0, 0]
    from rawdenoise.rawio import read_raw

    meta = {**META, "as_shot_neutral": None, "dng": carried}  # AsShotWhiteXY is the white here
    p = dng.write_dng(tmp_path / "x.dng", _mosaic(rng, h, w, [64] * 4), cfa="RGGB", black_level=64,
                      white_level=4095, meta=meta)
    back = read_raw(p).meta["dng"]
    assert sorted(back) == sorted(carried)
    for name, value in carried.items():
        if isinstance(value, (list, float)):
            np.testing.assert_allclose(back[name], value, rtol=0, atol=1e-9, err_msg=name)
        else:
            assert back[name] == value, name


def test_carried_tag_types(tmp_path, rng):
    tifffile = pytest.importorskip("tifffile")
    carried = {"ColorMatrix2": np.eye(3).ravel().tolist(), "BaselineExposure": -0.5, "AnalogBalance": [1, 1, 1.1],
               "CalibrationIlluminant2": 21, "ProfileToneCurve": [0.0, 0.0, 0.5, 0.6, 1.0, 1.0],
               "ProfileName": "Neutral", "ProfileCopyright": "© nobody", "OpcodeList3": bytes(4),
               "DefaultCropOrigin": [2, 2], "DefaultCropSize": [10.5, 8]}
    p = dng.write_dng(tmp_path / "x.dng", _mosaic(rng, 16, 16, [0] * 4), cfa="RGGB", black_level=0,
                      white_level=4095, meta={"dng": carried})
    with tifffile.TiffFile(p) as tf:
        tags = {t.code: (int(t.dtype), t.value) for t in tf.pages[0].tags}
    kinds = {50722: 10, 50730: 10, 50727: 5, 50779: 3, 50940: 11, 50936: 2, 50942: 1, 51022: 7, 50719: 4, 50720: 5}
    assert {code: tags[code][0] for code in kinds} == kinds
    assert tags[50942][1].rstrip(b"\0").decode("utf-8") == "© nobody"
    np.testing.assert_allclose(tags[50940][1], carried["ProfileToneCurve"])


@pytest.mark.parametrize("given, written", [(None, (1, 4, 0, 0)), ([1, 2, 0, 0], (1, 4, 0, 0)),
                                            ([1, 6, 0, 0], (1, 6, 0, 0))])
def test_dng_version_follows_a_newer_source(tmp_path, given, written):
    tifffile = pytest.importorskip("tifffile")
    meta = {"dng": {"DNGVersion": given}} if given else {}
    p = dng.write_dng(tmp_path / "x.dng", np.zeros((8, 8), np.uint16), cfa="RGGB", black_level=0,
                      white_level=4095, meta=meta)
    with tifffile.TiffFile(p) as tf:
        assert tuple(tf.pages[0].tags[50706].value) == written


def test_white_balance_is_written_once(tmp_path):
    tifffile = pytest.importorskip("tifffile")

    def tags(meta):
        p = dng.write_dng(tmp_path / "x.dng", np.zeros((8, 8), np.uint16), cfa="RGGB", black_level=0,
                          white_level=4095, meta=meta, overwrite=True)
        with tifffile.TiffFile(p) as tf:
            return {t.code for t in tf.pages[0].tags}

    xy = {"AsShotWhiteXY": [0.3457, 0.3585]}
    # the source's AsShotWhiteXY stands alone; LibRaw's multipliers (wb) do not add a neutral to it
    assert {50729} <= tags({"dng": xy, "wb": [2.0, 1.0, 1.5, 0]}) and 50728 not in tags({"dng": xy})
    # a neutral given explicitly wins over the source's white
    t = tags({"dng": xy, "as_shot_neutral": [0.5, 1, 0.7]})
    assert 50728 in t and 50729 not in t


@pytest.mark.parametrize("given, written", [(None, 21), (17, 17), (0, 0)])
def test_calibration_illuminant_stays_with_its_matrix(tmp_path, given, written):
    tifffile = pytest.importorskip("tifffile")
    meta = {"color_matrix": META["color_matrix"], "calibration_illuminant": given}
    p = dng.write_dng(tmp_path / "x.dng", np.zeros((8, 8), np.uint16), cfa="RGGB", black_level=0,
                      white_level=4095, meta=meta)
    with tifffile.TiffFile(p) as tf:
        assert tf.pages[0].tags[50778].value == written
    # without a matrix the XYZ->sRGB fallback is written, which is for D65 whatever was given
    p = dng.write_dng(tmp_path / "y.dng", np.zeros((8, 8), np.uint16), cfa="RGGB", black_level=0,
                      white_level=4095, meta={"calibration_illuminant": given})
    with tifffile.TiffFile(p) as tf:
        assert tf.pages[0].tags[50778].value == 21
        cm = np.asarray(tf.pages[0].tags[50721].value, float).reshape(-1, 2)
        np.testing.assert_allclose(cm[:, 0] / cm[:, 1], np.ravel(dng.XYZ_TO_SRGB), atol=1e-6)


@pytest.mark.parametrize("carried, match", [
    ({"Foo": 1}, r"'Foo', which is not a DNG tag the writer carries"),
    ({"ColorMatrix1": [1] * 9}, r"written from meta\['color_matrix'\]"),
    ({"ColorMatrix2": [1] * 8}, r"\['ColorMatrix2'\] has 8 values, the DNG tag holds 9"),
    ({"BlackLevelDeltaH": [0] * 5}, r"holds 12 \(one per column of the 12x8 image written\)"),
    ({"DefaultCropOrigin": [4, 0], "DefaultCropSize": [10, 8]}, r"does not fit the 12x8 image written"),
    ({"OpcodeList2": [0, 0, 0, 0]}, r"must be non-empty bytes"),
    ({"BaselineNoise": -1}, r"must not be negative"),
    ({"ProfileEmbedPolicy": 1.5}, r"must be whole numbers"),
    ({"BaselineExposure": "bright"}, r"must be finite numbers"),
    ({"DNGVersion": [1, 4]}, r"must be 4 numbers"),
])
def test_bad_dng_meta_is_one_clear_error(tmp_path, carried, match):
    with pytest.raises(InputError, match=match) as e:
        dng.write_dng(tmp_path / "x.dng", np.zeros((8, 12), np.uint16), cfa="RGGB", black_level=0,
                      white_level=4095, meta={"dng": carried})
    assert "\n" not in str(e.value) and ("fix" in str(e.value) or "remove" in str(e.value)
                                         or "put the value" in str(e.value) or "such as" in str(e.value))
    assert list(tmp_path.iterdir()) == []
