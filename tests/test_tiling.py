import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rawdenoise.errors import InputError
from rawdenoise.tiling import overlap_needed, plan_tiles, run_tiled


def double(x):
    return 2 * x


@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (31, 33), (64, 64), (97, 131), (250, 17)])
@pytest.mark.parametrize("tile,overlap", [(0, 0), (32, 0), (64, 8), (64, 16), (48, 8), (128, 40)])
@pytest.mark.parametrize("batch", [1, 3])
def test_identity_like_predictor_is_reproduced(h, w, tile, overlap, batch, rng):
    x = rng.random((3, h, w), dtype=np.float32)
    before = x.copy()
    plan = plan_tiles(h, w, tile=tile, overlap=overlap, multiple=16)
    y = run_tiled(double, x, plan, batch=batch)
    np.testing.assert_array_equal(y, 2 * x)
    np.testing.assert_array_equal(x, before)


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), m=st.sampled_from([1, 4, 16, 32]),
       k=st.integers(0, 6), overlap=st.integers(0, 40), margin_blocks=st.integers(0, 2))
def test_every_pixel_is_kept_exactly_once_with_its_context(h, w, m, k, overlap, margin_blocks):
    tile, margin = k * m, margin_blocks * m
    needs_tiles = tile and tile < max(-(-h // m) * m, -(-w // m) * m) + 2 * margin
    if needs_tiles and tile < overlap_needed(overlap, m) + m:
        with pytest.raises(InputError):
            plan_tiles(h, w, tile=tile, overlap=overlap, multiple=m, margin=margin)
        return
    plan = plan_tiles(h, w, tile=tile, overlap=overlap, multiple=m, margin=margin)
    count = np.zeros((h, w), int)
    th, tw = plan.tile_shape
    assert th % m == 0 and tw % m == 0
    rows, cols = plan.rows, plan.cols
    for y0, x0, (a, b), (c, d) in plan.tiles():
        assert y0 % m == 0 and x0 % m == 0  # pooling grids line up with the untiled pass
        assert -margin == rows.start <= y0 and y0 + th <= rows.start + rows.padded
        assert -margin == cols.start <= x0 and x0 + tw <= cols.start + cols.padded
        count[a:b, c:d] += 1
        # kept cores start and end on the model's grid (or at the frame's edges): the receptive
        # radius is measured for grid-aligned blocks of outputs
        assert a % m == 0 and c % m == 0 and (b % m == 0 or b == h) and (d % m == 0 or d == w)
        # kept pixels are >= overlap away from every cut edge (the covered axis' ends are not cuts)
        if y0 > rows.start:
            assert a - y0 >= overlap
        if y0 + th < rows.start + rows.padded:
            assert y0 + th - b >= overlap
        if x0 > cols.start:
            assert c - x0 >= overlap
        if x0 + tw < cols.start + cols.padded:
            assert x0 + tw - d >= overlap
    assert np.all(count == 1)


def test_predictor_sees_same_shape_tiles_and_reflect_padding(rng):
    x = rng.random((2, 37, 53), dtype=np.float32)
    seen = []

    def spy(b):
        seen.append(b.shape)
        return b.copy()

    plan = plan_tiles(37, 53, tile=32, overlap=4, multiple=8)
    run_tiled(spy, x, plan, batch=2)
    assert {s[1:] for s in seen} == {(2, 32, 32)}
    # untiled: one padded pass equal to numpy's reflect padding
    got = []
    run_tiled(lambda b: (got.append(b.copy()), b)[1], x, plan_tiles(37, 53, tile=0, overlap=0, multiple=16))
    np.testing.assert_array_equal(got[0][0], np.pad(x, ((0, 0), (0, 11), (0, 11)), mode="reflect"))


def test_pad_to_tile_keeps_one_shape_for_small_frames(rng):
    plan = plan_tiles(20, 90, tile=64, overlap=8, multiple=16, pad_to_tile=True)
    assert plan.tile_shape == (64, 64)
    x = rng.random((1, 20, 90), dtype=np.float32)
    np.testing.assert_array_equal(run_tiled(double, x, plan), 2 * x)


def test_feather_blend_is_a_weighted_average(rng):
    x = rng.random((2, 70, 90), dtype=np.float32)
    plan = plan_tiles(70, 90, tile=32, overlap=8, multiple=8)
    np.testing.assert_allclose(run_tiled(double, x, plan, blend="feather"), 2 * x, rtol=1e-6)


def test_output_channels_may_differ(rng):
    x = rng.random((5, 40, 40), dtype=np.float32)
    y = run_tiled(lambda b: b[:, :4] * 3, x, plan_tiles(40, 40, tile=32, overlap=4, multiple=8), out_channels=4)
    np.testing.assert_allclose(y, 3 * x[:4], rtol=1e-6)


def test_conv_stack_tiled_equals_untiled_with_overlap_at_receptive_radius(rng):
    """A pure-numpy 5x5 box filter applied 3 times (radius 6) is shift-invariant: tiles are exact."""
    from scipy.ndimage import uniform_filter

    def predict(b):
        out = b.copy()
        for _ in range(3):
            out = uniform_filter(out, size=(1, 1, 5, 5), mode="constant")
        return out

    x = rng.random((1, 150, 170), dtype=np.float32)
    for m in (1, 8):   # (the frame is reflect-padded to the multiple, so each has its own untiled pass)
        full = run_tiled(predict, x, plan_tiles(150, 170, tile=0, overlap=0, multiple=m))
        tiled = run_tiled(predict, x, plan_tiles(150, 170, tile=48, overlap=6, multiple=m))
        np.testing.assert_allclose(tiled, full, rtol=1e-5, atol=1e-6)
    short = run_tiled(predict, x, plan_tiles(150, 170, tile=48, overlap=3, multiple=1))
    assert np.abs(short - full).max() > 1e-4  # the check can fail: too little overlap shows seams


@pytest.mark.parametrize("kw,msg", [
    (dict(tile=33, overlap=0, multiple=16), "multiple of 16; use 32 or 48"),
    # the suggestions are tiles that work: 48 and 56 are too small for overlap 46 on a grid of 8
    (dict(tile=50, overlap=46, multiple=8), "multiple of 8; use 104 or more"),
    (dict(tile=150, overlap=46, multiple=8), "use 144 or 152"),
    (dict(tile=32, overlap=10, multiple=16), "too small for overlap"),
    (dict(tile=32, overlap=-1, multiple=16), "overlap"),
])
def test_bad_plans(kw, msg):
    with pytest.raises(InputError, match=msg):
        plan_tiles(100, 100, **kw)


def test_bad_predictor_output_shape(rng):
    x = rng.random((1, 40, 40), dtype=np.float32)
    with pytest.raises(InputError, match="predictor returned shape"):
        run_tiled(lambda b: b[:, :, :-1], x, plan_tiles(40, 40, tile=32, overlap=0, multiple=16))


def test_compute_ratio():
    plan = plan_tiles(512, 512, tile=256, overlap=0, multiple=16)
    assert plan.n_tiles == 4 and plan.compute_ratio == 1.0


@pytest.mark.parametrize("radius,m", [(0, 16), (8, 4), (46, 8), (94, 16), (22, 4)])
def test_suggested_tile_bounds_the_overlap_cost(radius, m):
    from rawdenoise.tiling import suggest_tile

    t = suggest_tile(radius, m)
    assert t % m == 0 and t >= 256
    big = 40 * t
    plan = plan_tiles(big, big, tile=t, overlap=radius, multiple=m)
    assert plan.compute_ratio <= 1.25 * 1.02  # the shifted-back last tile adds a little
    if t > 256:  # and it is the smallest such tile
        stride = (t - m - overlap_needed(radius, m)) // m * m
        assert stride < m or ((t - m) / stride) ** 2 > 1.25


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), m=st.sampled_from([1, 4, 16]), k=st.integers(0, 5),
       overlap=st.integers(0, 12), fixed=st.booleans(), margin_blocks=st.integers(0, 2))
def test_every_tile_is_a_window_of_the_reflect_padded_frame(h, w, m, k, overlap, fixed, margin_blocks):
    """Tiles (cut by slicing inside the frame, by index beyond it) equal windows of np.pad(reflect),
    the frame mirrored by the margin in front as well."""
    from rawdenoise.tiling import iter_tiles

    from hypothesis import assume

    margin = margin_blocks * m
    assume(k == 0 or k * m >= overlap_needed(overlap, m) + m)
    x = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w)
    plan = plan_tiles(h, w, tile=k * m, overlap=overlap, multiple=m, pad_to_tile=fixed, margin=margin)
    th, tw = plan.tile_shape
    bottom = max(y0 for y0, _, _, _ in plan.tiles()) + th - h
    right = max(x0 for _, x0, _, _ in plan.tiles()) + tw - w
    padded = np.pad(x, ((0, 0), (margin, max(bottom, 0)), (margin, max(right, 0))), mode="reflect")
    for y0, x0, tile in iter_tiles(x, plan):
        np.testing.assert_array_equal(tile, padded[:, y0 + margin:y0 + margin + th, x0 + margin:x0 + margin + tw])


def test_phase_dependent_reach_is_exact_at_the_block_radius(rng):
    """The receptive radius is measured for blocks on the model's grid (`multiple`): on a stride-2
    grid the odd rows of this predictor read 8 rows back, the even ones 7, so a block of two reads
    7 rows beyond its first row. Kept cores must therefore start and end on the grid, or an odd
    first row would lack one row of context."""
    def predict(b):
        out = np.zeros_like(b)
        h = b.shape[2]
        for i in range(h):
            lo = max(0, i - (8 if i % 2 else 7))      # zero padding above the tile, as a conv has
            out[:, :, i] = b[:, :, lo:i + 1].sum(axis=2)
        return out

    x = rng.random((1, 97, 5), dtype=np.float32)
    full = run_tiled(predict, x, plan_tiles(97, 5, tile=0, overlap=0, multiple=2))
    for tile in (22, 24, 26, 30, 34):
        plan = plan_tiles(97, 5, tile=tile, overlap=7, multiple=2)
        assert len(plan.rows.origins) > 2
        np.testing.assert_allclose(run_tiled(predict, x, plan), full, rtol=1e-6)


def test_a_margin_gives_frame_edges_context(rng):
    """A zero-padded 5x5 box filter (as a conv pads) darkens a flat frame's edges; with the frame
    mirrored by a margin >= its radius the edges stay flat, tiled and untiled alike."""
    from scipy.ndimage import uniform_filter

    def predict(b):
        return uniform_filter(b, size=(1, 1, 5, 5), mode="constant")

    flat = np.full((1, 40, 52), 0.5, np.float32)
    bare = run_tiled(predict, flat, plan_tiles(40, 52, tile=0, overlap=0, multiple=4))
    assert bare[0, 0, 0] < 0.5 * 0.4                     # the corner sees zeros
    for tile in (0, 24):
        out = run_tiled(predict, flat, plan_tiles(40, 52, tile=tile, overlap=2, multiple=4, margin=4))
        np.testing.assert_allclose(out, 0.5, rtol=1e-6)
    x = rng.random((1, 61, 47), dtype=np.float32)
    full = run_tiled(predict, x, plan_tiles(61, 47, tile=0, overlap=0, multiple=4, margin=8))
    tiled = run_tiled(predict, x, plan_tiles(61, 47, tile=24, overlap=2, multiple=4, margin=8))
    np.testing.assert_allclose(tiled, full, rtol=1e-6)
    mirrored = np.pad(x[0], 8, mode="reflect")
    np.testing.assert_allclose(full[0], uniform_filter(mirrored, 5, mode="constant")[8:-8, 8:-8], rtol=1e-5)
