"""Colour fidelity of the DNGs this package writes, judged by two independent RAW developers.

LibRaw (through rawpy) and dcraw develop the source and the written file with the camera's white
balance, linear 16-bit output and no auto-brightening; the developed colours must agree. Sources:
a camera-like DNG with a rich profile built here with tifffile (two illuminants with very
different matrices, forward matrices, camera calibration, analog balance, +2.65 EV baseline
exposure, masked borders and a default crop, as Blackmagic and Adobe-converted DNGs carry), a file
LibRaw identifies as a non-DNG camera (Photron BC2-HD, recognised by its size), and the demo's
synthetic camera. The denoiser is stood in for by a light smoothing of each colour plane, which
moves raw means by well under 0.3 %.
"""

import importlib.util
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rawdenoise import dng
from rawdenoise.rawio import read_raw

rawpy = pytest.importorskip("rawpy")
tifffile = pytest.importorskip("tifffile")

DCRAW = shutil.which("dcraw")
needs_dcraw = pytest.mark.skipif(DCRAW is None,
                                 reason="dcraw is not installed (Debian/Ubuntu: apt-get install -y dcraw)")

# linear sRGB (D65) -> XYZ
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])

# The test camera: XYZ -> camera for D65 and for illuminant A differ a lot, as real profiles do
# (developers that picked the wrong one are off by several per cent), plus an individual unit's
# calibration and an analog gain on blue. Raw values are AnalogBalance @ CameraCalibration2 @
# ColorMatrix2 @ XYZ, the DNG model for a D65 shot.
CM_A = np.array([[0.92, -0.31, -0.02], [-0.46, 1.24, 0.25], [-0.05, 0.14, 0.88]])
CM_D65 = np.array([[0.71, -0.09, -0.08], [-0.52, 1.31, 0.24], [-0.11, 0.21, 0.62]])
CC = np.diag([1.04, 1.0, 0.97])
AB = np.array([1.0, 1.0, 1.08])
FM_A = np.array([[0.61, 0.20, 0.15], [0.24, 0.80, -0.04], [0.02, -0.21, 1.02]])
FM_D65 = np.array([[0.66, 0.16, 0.14], [0.27, 0.77, -0.04], [0.03, -0.14, 0.94]])
BLACK, WHITE = 256, 4095
ACTIVE = (80, 144)  # active area (rows, columns), as 2176 x 4128 scaled down
MARGINS = (6, 10)  # masked rows above, columns left of it (and as many below/right)
CROP_ORIGIN, CROP_SIZE = (8, 4), (128, 72)  # x, y and width, height: 4096 x 2160 of 4128 x 2176

# colour patches in linear sRGB; mostly warm, so per-channel means show matrix errors
PATCHES = np.array([[0.70, 0.20, 0.05], [0.60, 0.30, 0.05], [0.18, 0.18, 0.18], [0.10, 0.50, 0.10],
                    [0.65, 0.12, 0.10], [0.55, 0.50, 0.08], [0.05, 0.30, 0.45], [0.50, 0.35, 0.20]])


def patch_scene(h: int, w: int) -> np.ndarray:
    """H x W x 3 linear sRGB: vertical bands of PATCHES."""
    img = np.zeros((h, w, 3))
    n = len(PATCHES)
    for i, colour in enumerate(PATCHES):
        img[:, i * w // n:(i + 1) * w // n] = colour
    return img


def mosaic(rgb: np.ndarray, cfa: str) -> np.ndarray:
    out = np.empty(rgb.shape[:2])
    for i, ch in enumerate(cfa):
        r, c = divmod(i, 2)
        out[r::2, c::2] = rgb[r::2, c::2, "RGB".index(ch)]
    return out


def _rationals(values, den=10000) -> list[int]:
    out = []
    for v in np.ravel(values):
        out += [round(v * den), den]
    return out


OPCODE_LIST2 = bytes.fromhex("00000000")  # an empty list: 0 opcodes (big-endian count)


def camera_dng(path: Path, *, byteorder: str = "<", subifd: bool = True) -> Path:
    """A DNG as a camera or converter writes it: preview in IFD0 and the mosaic in a SubIFD (or all
    in IFD0), masked borders outside the ActiveArea, a default crop inside it, and the profile."""
    h, w = ACTIVE
    top, left = MARGINS
    cam_from_xyz = np.diag(AB) @ CC @ CM_D65
    cam = patch_scene(h, w) @ SRGB_TO_XYZ.T @ cam_from_xyz.T
    neutral = cam_from_xyz @ SRGB_TO_XYZ @ np.ones(3)  # the camera's D65 white
    cam *= 0.9 / neutral.max()
    raw = np.full((h + 2 * top, w + 2 * left), float(BLACK))
    raw[top:top + h, left:left + w] = BLACK + mosaic(cam, "RGGB") * (WHITE - BLACK)
    raw = np.round(raw).astype(np.uint16)
    profile = [
        (50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),
        (271, "s", 0, "Synthcam", True), (272, "s", 0, "SC-1", True), (50708, "s", 0, "Synthcam SC-1", True),
        (50721, "2i", 9, _rationals(CM_A), True), (50722, "2i", 9, _rationals(CM_D65), True),
        (50778, "H", 1, dng.CALIBRATION_STANDARD_A, True), (50779, "H", 1, dng.CALIBRATION_D65, True),
        (50723, "2i", 9, _rationals(CC), True), (50724, "2i", 9, _rationals(CC), True),
        (50964, "2i", 9, _rationals(FM_A), True), (50965, "2i", 9, _rationals(FM_D65), True),
        (50727, "2I", 3, _rationals(AB), True), (50728, "2I", 3, _rationals(neutral / neutral[1]), True),
        (50730, "2i", 1, (265, 100), True), (50731, "2I", 1, (8, 10), True), (50732, "2I", 1, (12, 10), True),
        (50734, "2I", 1, (9, 10), True), (50936, "s", 0, "Synthcam Standard", True),
        (50931, "s", 0, "com.example.synthcam", True), (50932, "s", 0, "com.example.synthcam", True),
        (50937, "I", 3, (2, 2, 1), True), (50938, "f", 12, [0.0, 1.0, 1.0] * 4, True),
        (50939, "f", 12, [1.0, 1.02, 1.0] * 4, True), (50940, "f", 4, (0.0, 0.0, 1.0, 1.0), True),
    ]
    raw_ifd = [
        (33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50710, "B", 3, (0, 1, 2), True),
        (50711, "H", 1, 1, True), (50714, "I", 1, BLACK, True), (50717, "I", 1, WHITE, True),
        (50829, "I", 4, (top, left, top + h, left + w), True),
        (50719, "I", 2, CROP_ORIGIN, True), (50720, "I", 2, CROP_SIZE, True),
        (50718, "2I", 2, (1, 1, 1, 1), True), (50780, "2I", 1, (3, 2), True),
        (51009, 7, len(OPCODE_LIST2), OPCODE_LIST2, True),
    ]
    with tifffile.TiffWriter(path, byteorder=byteorder) as tw:
        if subifd:
            tw.write(np.zeros((12, 18, 3), np.uint8), photometric="rgb", subfiletype=1, subifds=1,
                     extratags=profile, metadata=None)
            tw.write(raw, photometric=dng.PHOTOMETRIC_CFA, subfiletype=0, extratags=raw_ifd, metadata=None)
        else:
            tw.write(raw, photometric=dng.PHOTOMETRIC_CFA, subfiletype=0, extratags=profile + raw_ifd,
                     metadata=None)
    return path


def smooth(frame) -> np.ndarray:
    """Stand-in for a denoiser: each pixel halfway to the mean of its 3x3 same-colour neighbours."""
    d = np.asarray(frame.data, np.float64)
    p = np.pad(d, 2, mode="reflect")
    h, w = d.shape
    mean = sum(p[2 + dy:2 + dy + h, 2 + dx:2 + dx + w] for dy in (-2, 0, 2) for dx in (-2, 0, 2)) / 9
    return np.round(d + 0.5 * (mean - d)).astype(np.uint16)


# ---- the two developers ---------------------------------------------------------------------------------
def develop_libraw(path, camera_wb: bool = True) -> np.ndarray:
    with rawpy.imread(str(path)) as r:
        rgb = r.postprocess(use_camera_wb=camera_wb, no_auto_bright=True, gamma=(1, 1), output_bps=16,
                            user_flip=0)
    return rgb.astype(np.float64) / 65535


def develop_dcraw(path) -> np.ndarray:
    # -w camera white balance, -T TIFF, -4 linear 16-bit without auto-brightening, -c to stdout
    out = subprocess.run([DCRAW, "-w", "-T", "-4", "-c", str(path)], capture_output=True, check=True).stdout
    return tifffile.imread(io.BytesIO(out)).astype(np.float64) / 65535


DEVELOPERS = [pytest.param(develop_libraw, id="libraw"), pytest.param(develop_dcraw, id="dcraw", marks=needs_dcraw)]


def channel_means(rgb: np.ndarray) -> np.ndarray:
    return rgb.reshape(-1, 3).mean(axis=0)


def band_means(rgb: np.ndarray) -> np.ndarray:
    """Mean colour of the middle of each PATCHES band (edges left out: demosaicing blends them)."""
    w, n = rgb.shape[1], len(PATCHES)
    return np.array([rgb[4:-4, i * w // n + 3:(i + 1) * w // n - 3].reshape(-1, 3).mean(0) for i in range(n)])


# ---- a rich camera DNG ----------------------------------------------------------------------------------
@pytest.mark.parametrize("develop", DEVELOPERS)
@pytest.mark.parametrize("layout", [{"byteorder": "<", "subifd": True}, {"byteorder": ">", "subifd": False}],
                         ids=["subifd-le", "ifd0-be"])
def test_denoised_dng_develops_like_the_source(tmp_path, develop, layout):
    src = camera_dng(tmp_path / "src.dng", **layout)
    frame = read_raw(src)
    denoised = smooth(frame)
    raw_in, raw_out = np.asarray(frame.data, float) - BLACK, denoised.astype(float) - BLACK
    assert abs(raw_out.mean() / raw_in.mean() - 1) < 0.003  # the stand-in barely moves raw means
    out = dng.write_dng(tmp_path / "out.dng", denoised, like=frame)
    before, after = develop(src), develop(out)
    assert after.shape == before.shape == (*ACTIVE, 3)
    # the source itself develops to the scene (so the test camera is self-consistent) ...
    np.testing.assert_allclose(channel_means(before), 0.9 * patch_scene(*ACTIVE).reshape(-1, 3).mean(0),
                               rtol=0.01)
    # ... and the written DNG to the source's colours: per channel and patch by patch
    np.testing.assert_allclose(channel_means(after), channel_means(before), rtol=0.01)
    np.testing.assert_allclose(band_means(after), band_means(before), rtol=0.02, atol=0.002)


def _tags(path) -> dict[int, object]:
    """Tag code -> value of the raw image's IFD, with IFD0's for what the raw IFD lacks."""
    with tifffile.TiffFile(path) as tf:
        ifd0 = tf.pages[0]
        raw = next((p for p in ([ifd0] + list(ifd0.pages if ifd0.subifds else []))
                    if int(p.photometric) == dng.PHOTOMETRIC_CFA), ifd0)
        out = {t.code: t.value for t in ifd0.tags}
        out.update({t.code: t.value for t in raw.tags})
        out["shape"] = raw.shape
    return out


def _ratio(v) -> np.ndarray:
    """A rational tag's values (tifffile gives numerator, denominator pairs)."""
    a = np.asarray(v, dtype=float).ravel()
    return a[0::2] / a[1::2]


RATIONAL_TAGS = {  # name: code, for the tags whose values the source holds as rationals
    "ColorMatrix1": 50721, "ColorMatrix2": 50722, "CameraCalibration1": 50723, "CameraCalibration2": 50724,
    "ForwardMatrix1": 50964, "ForwardMatrix2": 50965, "AnalogBalance": 50727, "AsShotNeutral": 50728,
    "BaselineExposure": 50730, "BaselineNoise": 50731, "BaselineSharpness": 50732,
    "LinearResponseLimit": 50734, "DefaultScale": 50718, "BestQualityScale": 50780,
}
SAME_TAGS = {  # name: code, for tags compared value for value
    "CalibrationIlluminant1": 50778, "CalibrationIlluminant2": 50779, "ProfileName": 50936,
    "ProfileCalibrationSignature": 50932, "CameraCalibrationSignature": 50931, "UniqueCameraModel": 50708,
    "ProfileHueSatMapDims": 50937, "ProfileHueSatMapData1": 50938, "ProfileHueSatMapData2": 50939,
    "ProfileToneCurve": 50940, "OpcodeList2": 51009, "CFAPattern": 33422, "Make": 271, "Model": 272,
}


@pytest.mark.parametrize("layout", [{"byteorder": "<", "subifd": True}, {"byteorder": ">", "subifd": False}],
                         ids=["subifd-le", "ifd0-be"])
def test_every_profile_and_rendering_tag_is_carried(tmp_path, layout):
    src = camera_dng(tmp_path / "src.dng", **layout)
    frame = read_raw(src)
    out = dng.write_dng(tmp_path / "out.dng", smooth(frame), like=frame)
    a, b = _tags(src), _tags(out)
    missing = [n for n, c in {**RATIONAL_TAGS, **SAME_TAGS}.items() if c not in b]
    assert not missing, f"not carried: {missing}"
    for name, code in RATIONAL_TAGS.items():
        np.testing.assert_allclose(_ratio(b[code]), _ratio(a[code]), rtol=0, atol=1e-9, err_msg=name)
    for name, code in SAME_TAGS.items():
        va, vb = a[code], b[code]
        if isinstance(va, tuple) and va and isinstance(va[0], float):
            np.testing.assert_allclose(vb, va, rtol=1e-7, err_msg=name)
        else:
            assert vb == va, name
    assert _ratio(b[50730])[0] == pytest.approx(2.65)  # BaselineExposure +2.65 EV
    # the output is the active area; the default crop is given relative to it, as in the source
    assert b["shape"] == ACTIVE and 50829 not in b
    assert tuple(b[50719]) == CROP_ORIGIN and tuple(b[50720]) == CROP_SIZE
    assert frame.meta["dng"]["DefaultCropSize"] == list(CROP_SIZE)


def test_default_crop_seen_by_libraw(tmp_path):
    """LibRaw reports the crop (raw_inset_crops) at the same place of the visible area in both files."""
    src = camera_dng(tmp_path / "src.dng")
    frame = read_raw(src)
    out = dng.write_dng(tmp_path / "out.dng", smooth(frame), like=frame)

    def crop(path):
        with rawpy.imread(str(path)) as r:
            s = r.sizes
            return (s.crop_left_margin - s.left_margin, s.crop_top_margin - s.top_margin, s.crop_width,
                    s.crop_height, s.width, s.height)

    assert crop(out) == crop(src) == (*CROP_ORIGIN, *CROP_SIZE, ACTIVE[1], ACTIVE[0])


def test_npy_sidecar_carries_the_profile(tmp_path):
    """DNG -> .npy + JSON -> DNG keeps every tag, binary blocks (opcode lists) included."""
    frame = read_raw(camera_dng(tmp_path / "src.dng"))
    npy = dng.write_npy(tmp_path / "mid.npy", smooth(frame), like=frame)
    again = read_raw(npy)
    assert again.meta["dng"] == frame.meta["dng"]
    assert again.meta["dng"]["OpcodeList2"] == OPCODE_LIST2
    for key in ("color_matrix", "calibration_illuminant", "as_shot_neutral", "unique_camera_model"):
        assert again.meta[key] == frame.meta[key]
    direct = dng.write_dng(tmp_path / "direct.dng", np.asarray(again.data), like=frame)
    via_npy = dng.write_dng(tmp_path / "via_npy.dng", np.asarray(again.data), like=again)
    assert via_npy.read_bytes() == direct.read_bytes()


# ---- a camera file LibRaw treats as non-DNG ------------------------------------------------------------
# LibRaw (and dcraw) identify headerless dumps of some cameras by their size alone; a 1920 x 1080
# 16-bit little-endian dump is a Photron BC2-HD, a camera with an entry in LibRaw's colour table.
PHOTRON_CM = np.array([[14603, -4122, -528], [-1810, 9794, 2017], [-297, 2763, 5936]]) / 10000


def photron_file(path: Path) -> Path:
    h, w = 1080, 1920
    scene = np.repeat(np.repeat(patch_scene(8, 8 * 8), h // 8, axis=0), w // 64, axis=1)
    cam = scene @ SRGB_TO_XYZ.T @ PHOTRON_CM.T
    cam *= 0.8 / (PHOTRON_CM @ SRGB_TO_XYZ @ np.ones(3)).max()
    raw = np.clip(np.round(mosaic(cam, "GBRG") * 65535), 0, 65535).astype("<u2")
    path.write_bytes(raw.tobytes())
    return path


@pytest.mark.parametrize("developer", ["libraw", pytest.param("dcraw", marks=needs_dcraw)])
def test_non_dng_camera_file_keeps_its_colours(tmp_path, developer):
    src = photron_file(tmp_path / "clip_0001.bc2")  # any suffix but .raw/.bin goes to LibRaw
    frame = read_raw(src)
    out = dng.write_dng(tmp_path / "out.dng", smooth(frame), like=frame)
    if developer == "libraw":
        # the file records no white balance: LibRaw's camera-WB mode then falls back to auto-WB,
        # so the original is developed with its daylight multipliers, which the DNG names as shot
        before, after = develop_libraw(src, camera_wb=False), develop_libraw(out)
    else:
        before, after = develop_dcraw(src), develop_dcraw(out)  # dcraw -w falls back to daylight
    assert after.shape == before.shape
    np.testing.assert_allclose(channel_means(after), channel_means(before), rtol=0.01)
    np.testing.assert_allclose(channel_means(before), 0.8 * PATCHES.mean(0), rtol=0.01)
    assert frame.cfa == "GBRG" and "dng" not in frame.meta  # LibRaw's reading, not a DNG's
    np.testing.assert_allclose(frame.meta["color_matrix"], PHOTRON_CM, atol=1e-9)  # not XYZ->sRGB
    assert frame.meta["calibration_illuminant"] == dng.CALIBRATION_D65


# ---- the demo's synthetic camera -----------------------------------------------------------------------
def _demo_frame_dng(path, clean_norm, cam, profile):
    from tools.demo import camera_meta
    from tools.synth import to_dn

    dn = to_dn(clean_norm, profile)
    return dng.write_dng(path, dn, cfa="RGGB", black_level=list(profile.black_level),
                         white_level=profile.white_level, meta=camera_meta(cam))


@pytest.mark.parametrize("develop", DEVELOPERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_demo_camera_grey_stays_grey(tmp_path, develop, seed):
    from rawdenoise.profile import default_profile
    from tools.synth import srgb_to_linear, unprocess

    grey = np.full((32, 48, 3), 0.5)
    clean, cam = unprocess(grey, np.random.default_rng(seed), "RGGB", exposure=0.6, return_params=True)
    rgb = develop(_demo_frame_dng(tmp_path / "grey.dng", clean, cam, default_profile()))
    mean = channel_means(rgb[4:-4, 4:-4])
    # the level is the scene's linear grey times the exposure (tone curve aside)
    expect = 0.6 * float(srgb_to_linear(np.array([0.5]))[0])
    np.testing.assert_allclose(mean, [mean[1]] * 3, rtol=0.01)
    assert mean[1] == pytest.approx(expect, rel=0.03)


@pytest.mark.parametrize("develop", DEVELOPERS)
def test_demo_noisy_dng_has_the_clean_scene_colours(tmp_path, develop):
    """`rawdenoise demo`'s noisy.dng develops, in both developers, to the colours of its clean scene
    developed the same way."""
    if not (importlib.util.find_spec("onnxruntime") or importlib.util.find_spec("torch")):
        pytest.skip("the demo's default model needs onnxruntime or torch")
    import argparse

    from tools import demo
    from rawdenoise.profile import default_profile
    from tools.synth import dead_leaves, unprocess

    h, w, seed = 128, 192, 3
    args = argparse.Namespace(output=str(tmp_path / "demo"), iso=3200.0, size=(h, w), seed=seed, runtime=None,
                              overwrite=False)
    assert demo.run(args) == 0
    # the clean frame and camera, drawn as the demo draws them (same seed, same order)
    rng = np.random.default_rng(seed)
    clean, cam = unprocess(dead_leaves(h, w, rng), rng, "RGGB", exposure=0.6, return_params=True)
    reference = develop(_demo_frame_dng(tmp_path / "clean.dng", clean, cam, default_profile()))
    with rawpy.imread(str(tmp_path / "demo" / "noisy.dng")) as r:  # the demo wrote this very camera
        assert r.camera_whitebalance[0] == pytest.approx(cam["wb"][0], rel=1e-5)
    # developers clip below black, which lifts the mean of noisy dark pixels: compare where the
    # clean scene is at least 2 % of full scale in every channel
    lit = reference.min(axis=2) > 0.02
    assert lit.mean() > 0.3
    for name in ("noisy.dng", "denoised.dng"):
        rgb = develop(tmp_path / "demo" / name)
        np.testing.assert_allclose(rgb[lit].mean(0), reference[lit].mean(0), rtol=0.03, err_msg=name)
