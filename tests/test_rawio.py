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


# ---- colour metadata: LibRaw's camera matrix for non-DNG files, DNG tags for DNGs ----------------------------
class _FakeRaw:
    """What libraw_colour reads from a rawpy.RawPy, for cameras we have no files of."""

    def __init__(self, cam_xyz=None, cmatrix=None, camera_wb=(0.0, 1.0, 0.0, 0.0), daylight=(2.0, 1.0, 1.5, 0.0)):
        self.rgb_xyz_matrix = np.zeros((4, 3), np.float32) if cam_xyz is None else np.vstack(
            [np.asarray(cam_xyz, np.float32), np.zeros((1, 3), np.float32)])
        self.color_matrix = np.zeros((3, 4), np.float32) if cmatrix is None else np.hstack(
            [np.asarray(cmatrix, np.float32), np.zeros((3, 1), np.float32)])
        self.camera_whitebalance = list(camera_wb)
        self.daylight_whitebalance = list(daylight)


# LibRaw's table entry for the Canon EOS 5D Mark II (x 10000 in LibRaw's source)
CANON_5D2 = np.array([[4716, 603, -830], [-7798, 15474, 2480], [-1496, 1937, 6651]]) / 10000


def test_libraw_matrix_is_the_dng_color_matrix():
    """rawpy's rgb_xyz_matrix is already divided by 10000: written as it is, decimals kept, for D65."""
    c = rawio.libraw_colour(_FakeRaw(cam_xyz=CANON_5D2, camera_wb=(2.2, 1.0, 1.6, 1.0)))
    assert c["color_matrix"] == CANON_5D2.tolist()  # 0.4716 exactly, not float32's 0.47159999
    assert c["calibration_illuminant"] == dng.CALIBRATION_D65
    np.testing.assert_allclose(c["as_shot_neutral"], [1 / 2.2, 1.0, 1 / 1.6])
    assert c["wb"] == pytest.approx([2.2, 1.0, 1.6, 1.0])


def test_file_without_white_balance_gets_the_daylight_neutral():
    c = rawio.libraw_colour(_FakeRaw(cam_xyz=CANON_5D2))  # camera_whitebalance [0, 1, 0, 0]: none
    assert c["wb"] is None
    np.testing.assert_allclose(c["as_shot_neutral"], [0.5, 1.0, 1 / 1.5])


def test_matrix_read_from_the_file_develops_as_libraw_would(tmp_path):
    """No table entry but a camera -> sRGB matrix from the file: the XYZ -> camera matrix written
    makes LibRaw compute that same camera -> sRGB matrix for the DNG."""
    rawpy = pytest.importorskip("rawpy")
    rgb_cam = np.array([[1.71, -0.52, -0.19], [-0.21, 1.48, -0.27], [0.02, -0.55, 1.53]])  # rows sum to 1
    c = rawio.libraw_colour(_FakeRaw(cmatrix=rgb_cam, camera_wb=(1.9, 1.0, 1.4, 0.0)))
    assert c["calibration_illuminant"] == dng.CALIBRATION_D65
    p = dng.write_dng(tmp_path / "x.dng", np.full((24, 24), 1000, np.uint16), cfa="RGGB", black_level=0,
                      white_level=4095, meta=c)
    with rawpy.imread(str(p)) as r:
        np.testing.assert_allclose(r.color_matrix[:, :3], rgb_cam, atol=2e-4)


def test_no_matrix_anywhere_falls_back_to_srgb():
    c = rawio.libraw_colour(_FakeRaw(camera_wb=(2.0, 1.0, 1.5, 0.0)))
    assert c["color_matrix"] is None and c["calibration_illuminant"] is None
    tags = dng.dng_tags(8, 8, "RGGB", [0] * 4, 4095, c)
    np.testing.assert_allclose(tags[50721][1], np.ravel(dng.XYZ_TO_SRGB))


def test_libraw_crop_is_relative_to_the_visible_area():
    from types import SimpleNamespace

    sizes = SimpleNamespace(width=6000, height=4000, left_margin=100, top_margin=40, crop_left_margin=124,
                            crop_top_margin=52, crop_width=5952, crop_height=3968)
    assert rawio.libraw_crop(sizes) == {"DefaultCropOrigin": [24, 12], "DefaultCropSize": [5952, 3968]}
    for bad in ({"crop_width": 0}, {"crop_left_margin": 90}, {"crop_width": 6000},
                {"crop_left_margin": 100, "crop_top_margin": 40, "crop_width": 6000, "crop_height": 4000}):
        assert rawio.libraw_crop(SimpleNamespace(**{**vars(sizes), **bad})) == {}


def _tiff_page(tags: dict, shape):
    """What _map_geometry reads of tifffile's raw page."""
    from types import SimpleNamespace

    return SimpleNamespace(imagelength=shape[0], imagewidth=shape[1],
                           tags={code: SimpleNamespace(value=v) for code, v in tags.items()})


def test_geometry_follows_the_visible_area():
    from types import SimpleNamespace

    # active area rows 10..110, columns 20..220 of a 120 x 240 stored image; LibRaw shows 2 rows and
    # 4 columns less at the top-left
    raw = _tiff_page({50829: (10, 20, 110, 220)}, (120, 240))
    sizes = SimpleNamespace(top_margin=12, left_margin=24, height=98, width=196)
    tags = {"DefaultCropOrigin": [8, 4], "DefaultCropSize": [184, 92], "OpcodeList1": b"1", "OpcodeList2": b"2",
            "OpcodeList3": b"3", "BlackLevelDeltaH": [1.0] * 200, "ProfileName": "kept"}
    rawio._map_geometry(tags, raw, sizes)
    assert tags == {"DefaultCropOrigin": [4, 2], "DefaultCropSize": [184, 92], "ProfileName": "kept"}
    # a crop reaching outside the visible area is clipped to it
    tags = {"DefaultCropOrigin": [0, 0], "DefaultCropSize": [190, 95]}
    rawio._map_geometry(tags, raw, sizes)
    assert tags == {"DefaultCropOrigin": [0, 0], "DefaultCropSize": [186, 93]}
    tags = {"DefaultCropOrigin": [0, 0], "DefaultCropSize": [200, 100]}  # covers it all: no crop
    rawio._map_geometry(tags, raw, sizes)
    assert tags == {}
    # visible == active: area-wide opcode lists stay; OpcodeList1 needs the whole stored image
    sizes = SimpleNamespace(top_margin=10, left_margin=20, height=100, width=200)
    tags = {"OpcodeList1": b"1", "OpcodeList2": b"2", "OpcodeList3": b"3"}
    rawio._map_geometry(tags, raw, sizes)
    assert tags == {"OpcodeList2": b"2", "OpcodeList3": b"3"}
    whole = SimpleNamespace(top_margin=0, left_margin=0, height=120, width=240)
    for extra, kept in (({}, True), ({50712: (0, 1, 2)}, False)):  # LinearizationTable: values changed
        tags = {"OpcodeList1": b"1"}
        rawio._map_geometry(tags, _tiff_page(extra, (120, 240)), whole)
        assert ("OpcodeList1" in tags) is kept


def test_black_level_deltas_keep_the_black_of_every_pixel(tmp_path):
    """LibRaw folds the rounded mean of BlackLevelDeltaH/V into the black level it reports; the
    written deltas keep the rest, so BlackLevel + deltas per pixel equal the source's and LibRaw
    reports the same black for both files."""
    tifffile = pytest.importorskip("tifffile")
    rawpy = pytest.importorskip("rawpy")
    h, w = 24, 28  # LibRaw reads nothing under 22 pixels a side
    dh = [3.0 + 0.5 * (i % 3) for i in range(w)]  # mean 3.45
    dv = [1.0 + 0.25 * (i % 2) for i in range(h)]  # mean 1.125
    tags = dng.dng_tags(h, w, "RGGB", [100] * 4, 4095, {})
    tags[50715] = (dng.SRATIONAL, dh)
    tags[50716] = (dng.SRATIONAL, dv)
    data = np.full((h, w), 1000, "<u2")
    dng.write_tiff_file(tmp_path / "src.dng", tags, data.tobytes())
    frame = read_raw(tmp_path / "src.dng")
    assert frame.black_level == (104.0,) * 4  # 100 + round(3.45) + round(1.125)
    out = dng.write_dng(tmp_path / "out.dng", np.asarray(frame.data), like=frame)
    with tifffile.TiffFile(out) as tf:
        t = {x.code: x.value for x in tf.pages[0].tags}
    def ratio(v):
        a = np.asarray(v, float).reshape(-1, 2)
        return a[:, 0] / a[:, 1]

    total_src = 100 + np.add.outer(dv, dh)
    total_out = np.asarray(t[50714], float)[0] + np.add.outer(ratio(t[50716]), ratio(t[50715]))
    np.testing.assert_allclose(total_out, total_src, atol=1e-6)
    with rawpy.imread(str(out)) as a, rawpy.imread(str(tmp_path / "src.dng")) as b:
        assert a.black_level_per_channel == b.black_level_per_channel


def test_dng_without_calibration_illuminant(tmp_path):
    """An absent CalibrationIlluminant1 is 0 ("unknown") in DNG and stays so in the output."""
    pytest.importorskip("rawpy")
    tags = dng.dng_tags(24, 24, "RGGB", [0] * 4, 4095, {"color_matrix": np.eye(3)})
    del tags[50778]
    dng.write_tiff_file(tmp_path / "src.dng", tags, np.full((24, 24), 500, "<u2").tobytes())
    frame = read_raw(tmp_path / "src.dng")
    assert frame.meta["calibration_illuminant"] == dng.CALIBRATION_UNKNOWN
    assert dng.dng_tags(8, 8, "RGGB", [0] * 4, 4095, frame.meta)[50778] == (dng.SHORT, 0)


def test_big_endian_source_keeps_opcodes_but_not_byte_order_blocks(tmp_path):
    """Opcode lists are big-endian by definition and are copied; blocks stored in the file's own
    byte order (IlluminantData...) would be misread in a little-endian output and are left out."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("rawpy")
    extratags = [(50706, "B", 4, (1, 6, 0, 0), True), (50721, "2i", 9, [1, 1, 0, 1, 0, 1] * 3, True),
                 (33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50717, "I", 1, 4095, True),
                 (51009, 7, 4, bytes(4), True), (52533, 7, 6, bytes([0, 1, 0, 0, 0, 2]), True)]
    for order, illuminant_kept in (("<", True), (">", False)):
        p = tmp_path / f"x{order == '<'}.dng"
        tifffile.imwrite(p, np.full((24, 24), 500, np.uint16), byteorder=order, photometric=dng.PHOTOMETRIC_CFA,
                         extratags=extratags, metadata=None)
        carried = read_raw(p).meta["dng"]
        assert carried["OpcodeList2"] == bytes(4) and carried["DNGVersion"] == [1, 6, 0, 0]
        assert ("IlluminantData1" in carried) is illuminant_kept


def test_describe_shows_blocks_by_size(tmp_path):
    pytest.importorskip("rawpy")
    p = dng.write_dng(tmp_path / "x.dng", np.zeros((24, 24), np.uint16), cfa="RGGB", black_level=0,
                      white_level=4095, meta={"dng": {"OpcodeList3": bytes(4), "BaselineExposure": 1.5}})
    d = json.loads(json.dumps(read_raw(p).describe()))
    assert d["dng"] == {"OpcodeList3": "<4 bytes>", "BaselineExposure": 1.5, "DNGVersion": [1, 4, 0, 0]}


def test_float_npy_defaults_to_normalised_levels(tmp_path):
    from rawdenoise import read_raw

    np.save(tmp_path / "f.npy", np.full((4, 6), 0.25, np.float32))
    frame = read_raw(tmp_path / "f.npy", cfa="RGGB")
    assert frame.white_level == 1.0 and list(frame.black_level) == [0.0] * 4
    np.save(tmp_path / "i.npy", np.full((4, 6), 100, np.uint16))
    with pytest.raises(InputError, match="black_level, white_level"):
        read_raw(tmp_path / "i.npy", cfa="RGGB")


def test_headerless_path_given_to_run_points_to_read_raw(tmp_path):
    pytest.importorskip("torch")
    from rawdenoise import Denoiser, zoo

    (tmp_path / "dump.raw").write_bytes(bytes(64))
    spec = zoo.default_spec("unet", width=4, depth=1).replace(receptive_radius=8)
    dn = Denoiser.from_module(zoo.create("unet", width=4, depth=1), spec)
    with pytest.raises(InputError, match=r"rawdenoise.read_raw\(path, width=\.\.\."):
        dn.run(tmp_path / "dump.raw")
