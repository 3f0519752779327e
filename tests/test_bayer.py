"""Packing against an independent construction: every pixel encodes its CFA site and position."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rawdenoise import bayer
from rawdenoise.errors import InputError

PHASES = ["RGGB", "BGGR", "GRBG", "GBRG"]
SITE_CODE = {"R": 1, "Gr": 2, "Gb": 3, "B": 4}


def site_names(pattern):
    """Written out by hand per phase (independent of bayer._sites)."""
    return {
        "RGGB": ["R", "Gr", "Gb", "B"],
        "BGGR": ["B", "Gb", "Gr", "R"],
        "GRBG": ["Gr", "R", "B", "Gb"],
        "GBRG": ["Gb", "B", "R", "Gr"],
    }[pattern]


def code_frame(h, w, cfa):
    """value = site * 2**20 + row * 2**10 + col: exact in float32 after division by 2**23."""
    names = site_names(cfa)
    rr, cc = np.mgrid[0:h, 0:w]
    site = np.array([SITE_CODE[n] for n in names])[2 * (rr % 2) + cc % 2]
    return (site * 2**20 + rr * 2**10 + cc).astype(np.uint32)


def decode(values):
    v = np.rint(np.asarray(values, dtype=np.float64) * 2**23).astype(np.int64)
    return v >> 20, (v >> 10) & 1023, v & 1023


@pytest.mark.parametrize("frame_cfa", PHASES)
@pytest.mark.parametrize("model_order", PHASES)
@pytest.mark.parametrize("shape", [(8, 10), (9, 10), (8, 11), (7, 13), (2, 2), (3, 3)])
def test_pack_puts_every_site_in_its_model_channel(frame_cfa, model_order, shape):
    h, w = shape
    raw = code_frame(h, w, frame_cfa)
    g = bayer.geometry(raw.shape, frame_cfa, model_order)
    packed = bayer.pack(raw, g, np.zeros(4), 2.0**23)
    site, row, col = decode(packed)
    want = site_names(model_order)
    for ch in range(4):
        # the colour (and which green) of every packed value is the model's channel, mirrored or not
        assert np.all(site[ch] == SITE_CODE[want[ch]]), (ch, want[ch])
    # mirrored pixels come from inside the frame, two pixels away at most
    assert row.max() < h and col.max() < w
    # unpack is the exact inverse
    np.testing.assert_array_equal(bayer.unpack(packed, g, np.zeros(4), 2.0**23, dtype=np.uint32), raw)


@pytest.mark.parametrize("frame_cfa", PHASES)
def test_interior_positions_follow_the_phase_shift(frame_cfa):
    h, w = 12, 14
    raw = code_frame(h, w, frame_cfa)
    g = bayer.geometry(raw.shape, frame_cfa, "RGGB")
    packed = bayer.pack(raw, g, np.zeros(4), 2.0**23)
    _, row, col = decode(packed)
    # R sits at (r0, c0) of the frame's pattern; when R is not top-left the frame is extended by
    # one mirrored row/column in front, so packed block (1, 1) starts at frame (2 - r0, 2 - c0)
    r0, c0 = divmod(site_names(frame_cfa).index("R"), 2)
    assert (row[0][1, 1], col[0][1, 1]) == (2 - r0, 2 - c0)
    # Gr sits right of R, Gb below R, B diagonal (as in RGGB training data)
    assert (row[1][1, 1], col[1][1, 1]) == (2 - r0, 3 - c0)
    assert (row[2][1, 1], col[2][1, 1]) == (3 - r0, 2 - c0)
    assert (row[3][1, 1], col[3][1, 1]) == (3 - r0, 3 - c0)


@pytest.mark.parametrize("frame_cfa", PHASES)
def test_per_channel_black_levels_follow_the_cfa_order(frame_cfa):
    black = np.array([100.0, 200.0, 300.0, 400.0])  # in the 2x2 order of frame_cfa
    white = 1000.0
    raw = np.zeros((6, 8), dtype=np.uint16)
    for k in range(4):
        r, c = divmod(k, 2)
        raw[r::2, c::2] = black[k] + 10 * (k + 1)
    g = bayer.geometry(raw.shape, frame_cfa, "RGGB")
    packed = bayer.pack(raw, g, black, white)
    names = site_names(frame_cfa)
    for ch, name in enumerate(site_names("RGGB")):
        k = names.index(name)
        np.testing.assert_allclose(packed[ch], 10 * (k + 1) / (white - black[k]), rtol=1e-6)


def test_normalisation_matches_float64_reference(rng):
    raw = rng.integers(0, 4096, size=(33, 47)).astype(np.uint16)
    black = np.array([60.0, 64.0, 62.0, 66.0])
    g = bayer.geometry(raw.shape, "RGGB", "RGGB")
    packed = bayer.pack(raw, g, black, 4095.0)
    ref = np.pad(raw.astype(np.float64), ((0, 1), (0, 1)), mode="reflect")
    for ch in range(4):
        r, c = divmod(ch, 2)
        exp = (ref[r::2, c::2] - black[ch]) / (4095.0 - black[ch])
        np.testing.assert_allclose(packed[ch], exp, rtol=1e-6, atol=1e-7)
    assert packed.min() < 0  # not clipped before the network


@settings(max_examples=60, deadline=None)
@given(h=st.integers(2, 40), w=st.integers(2, 40), frame=st.sampled_from(PHASES), order=st.sampled_from(PHASES),
       dtype=st.sampled_from([np.uint8, np.uint16, np.uint32, np.int32, np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_unpack_inverts_pack(h, w, frame, order, dtype, seed):
    r = np.random.default_rng(seed)
    white = 255.0 if dtype == np.uint8 else 4000.0
    black = r.integers(0, 50, 4).astype(np.float64)
    raw = (r.random((h, w)) * white).astype(dtype)
    before = raw.copy()
    g = bayer.geometry(raw.shape, frame, order)
    back = bayer.unpack(bayer.pack(raw, g, black, white), g, black, white, dtype=dtype)
    np.testing.assert_array_equal(raw, before)
    assert back.dtype == raw.dtype and back.shape == raw.shape
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(back, raw, rtol=1e-5, atol=1e-3)
    else:
        np.testing.assert_array_equal(back, raw)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(2, 41), w=st.integers(2, 41), frame=st.sampled_from(PHASES), order=st.sampled_from(PHASES),
       cuts=st.tuples(st.integers(1, 20), st.integers(1, 20)), seed=st.integers(0, 2**16))
def test_unpacking_blocks_one_by_one_writes_the_whole_frame(h, w, frame, order, cuts, seed):
    """Tiles unpacked as they arrive (packed origin given) = the frame unpacked at once."""
    r = np.random.default_rng(seed)
    black = r.integers(0, 50, 4).astype(np.float64)
    raw = (r.random((h, w)) * 4000).astype(np.uint16)
    g = bayer.geometry(raw.shape, frame, order)
    packed = bayer.pack(raw, g, black, 4000.0, gain=3.0, offset=0.5)
    whole = bayer.unpack(packed, g, black, 4000.0, dtype=np.uint16, gain=3.0, offset=0.5)
    out = np.zeros_like(raw)
    ph, pw = packed.shape[1:]
    for y0 in range(0, ph, cuts[0]):
        for x0 in range(0, pw, cuts[1]):
            blk = packed[:, y0:y0 + cuts[0], x0:x0 + cuts[1]]
            bayer.unpack(blk, g, black, 4000.0, dtype=np.uint16, gain=3.0, offset=0.5, out=out, origin=(y0, x0))
    np.testing.assert_array_equal(out, whole)
    np.testing.assert_array_equal(out, raw)


@pytest.mark.parametrize("frame_cfa", PHASES)
@pytest.mark.parametrize("model_order", ["RGGB", "GBRG"])
@pytest.mark.parametrize("shape", [(40, 30), (41, 31)])
def test_pack_rows_is_a_selection_of_the_packed_frame(frame_cfa, model_order, shape):
    raw = code_frame(*shape, frame_cfa)
    g = bayer.geometry(shape, frame_cfa, model_order)
    black = np.array([3.0, 5.0, 7.0, 11.0])
    full = bayer.pack(raw, g, black, 2.0**23)
    h2 = g.packed_shape[0]
    starts = [1, 6, h2 - 5]
    got = bayer.pack_rows(raw, g, black, 2.0**23, starts, 4)
    np.testing.assert_array_equal(got, np.concatenate([full[:, i:i + 4] for i in starts], axis=1))
    with pytest.raises(InputError, match="row bands"):
        bayer.pack_rows(raw, g, black, 2.0**23, [0], 4)


def test_parse_cfa_accepts_strings_and_rawpy_patterns():
    assert bayer.parse_cfa("rggb") == "RGGB"
    assert bayer.parse_cfa(np.array([[0, 1], [3, 2]])) == "RGGB"
    assert bayer.parse_cfa(np.array([[2, 3], [1, 0]]), b"RGBG") == "BGGR"
    assert bayer.parse_cfa([[1, 0], [2, 3]]) == "GRBG"
    with pytest.raises(InputError, match="RGGB, BGGR, GRBG, GBRG"):
        bayer.parse_cfa("RGBX")
    with pytest.raises(InputError):
        bayer.parse_cfa(np.zeros((6, 6), int))


@pytest.mark.parametrize("black,white,msg", [
    (-1, 100, ">= 0"), (100, 100, "below"), ([1, 2, 3], 100, "4 values"), (0, "x", "number"),
    (np.nan, 10, "finite"),
])
def test_bad_levels(black, white, msg):
    with pytest.raises(InputError, match=msg):
        bayer.check_levels(black, white)


@pytest.mark.parametrize("arr,msg", [
    (np.zeros((4, 4, 3), np.uint16), "2-D"), (np.zeros((1, 8), np.uint16), "smaller"),
    (np.array([[1.0, np.nan], [0, 0]]), "NaN"), (np.zeros((4, 4), np.complex64), "dtype"),
    (np.zeros((4, 4), bool), "dtype"),
])
def test_bad_frames(arr, msg):
    with pytest.raises(InputError, match=msg):
        bayer.check_bayer_array(arr)


# ---- the one-channel mosaic layout --------------------------------------------------------------
@pytest.mark.parametrize("frame_cfa", PHASES)
@pytest.mark.parametrize("model_order", PHASES)
@pytest.mark.parametrize("shape", [(8, 10), (9, 10), (8, 11), (7, 13), (2, 2)])
def test_mosaic_is_in_the_model_phase_and_inverts_exactly(frame_cfa, model_order, shape):
    h, w = shape
    raw = code_frame(h, w, frame_cfa)
    g = bayer.geometry(raw.shape, frame_cfa, model_order)
    m = bayer.to_mosaic(raw, g, np.zeros(4), 2.0**23)
    assert m.shape[0] == 1 and m.shape[1] % 2 == 0 and m.shape[2] % 2 == 0
    site, row, col = decode(m[0])
    want = site_names(model_order)
    rr, cc = np.mgrid[0:m.shape[1], 0:m.shape[2]]
    # every pixel carries the model's site for its position in the 2x2 grid
    expected = np.array([SITE_CODE[n] for n in want])[2 * (rr % 2) + cc % 2]
    np.testing.assert_array_equal(site, expected)
    # pixels inside the frame are the frame's own, shifted by the extension in front
    np.testing.assert_array_equal(row[g.dy:g.dy + h, g.dx:g.dx + w], rr[:h, :w])
    np.testing.assert_array_equal(col[g.dy:g.dy + h, g.dx:g.dx + w], cc[:h, :w])
    np.testing.assert_array_equal(bayer.from_mosaic(m, g, np.zeros(4), 2.0**23, dtype=np.uint32), raw)


@pytest.mark.parametrize("frame_cfa", PHASES)
def test_mosaic_equals_the_packed_planes_interleaved(frame_cfa, rng):
    """Same normalisation as packing, site by site (per-site black, gain and offset)."""
    raw = rng.integers(0, 4096, (11, 14)).astype(np.uint16)
    black = np.array([60.0, 62.0, 64.0, 66.0])
    g = bayer.geometry(raw.shape, frame_cfa, "GRBG")
    packed = bayer.pack(raw, g, black, 4095.0, gain=1.7, offset=0.01)
    m = bayer.to_mosaic(raw, g, black, 4095.0, gain=1.7, offset=0.01)
    for ch in range(4):
        r, c = divmod(ch, 2)
        np.testing.assert_array_equal(m[0, r::2, c::2], packed[ch])


@given(st.integers(2, 13), st.integers(2, 13), st.sampled_from(PHASES), st.sampled_from(PHASES),
       st.integers(1, 5), st.integers(1, 5), st.sampled_from([np.uint16, np.float32, np.float64]))
@settings(max_examples=60, deadline=None)
def test_mosaic_blocks_of_any_parity_rebuild_the_frame(h, w, cfa, order, bh, bw, dtype):
    """Tile cores can start at odd positions: writing blocks one by one equals the whole frame."""
    rng = np.random.default_rng(h * 100 + w)
    raw = (rng.integers(0, 1000, (h, w)) if dtype == np.uint16 else rng.random((h, w))).astype(dtype)
    integer = dtype == np.uint16
    black = np.array([1.0, 2.0, 3.0, 4.0]) * (1 if integer else 0.01)
    white = 1000.0 if integer else 1.5
    g = bayer.geometry(raw.shape, cfa, order)
    m = bayer.to_mosaic(raw, g, black, white, gain=2.0, offset=0.5)
    whole = bayer.from_mosaic(m, g, black, white, dtype=dtype, gain=2.0, offset=0.5)
    out = np.zeros_like(whole)
    for y0 in range(0, m.shape[1], bh):
        for x0 in range(0, m.shape[2], bw):
            bayer.from_mosaic(m[:, y0:y0 + bh, x0:x0 + bw], g, black, white, dtype=dtype, out=out,
                              gain=2.0, offset=0.5, origin=(y0, x0))
    np.testing.assert_array_equal(out, whole)
    if integer:
        np.testing.assert_array_equal(whole, raw)
    else:
        np.testing.assert_allclose(whole, raw, atol=1e-6)
