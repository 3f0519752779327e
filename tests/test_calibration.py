"""Calibration tiles: the same input the Denoiser feeds its runner, bounded and reproducible."""

import json

import numpy as np
import pytest

from rawdenoise.calibration import CalibrationTiles, expand_sources, psnr
from rawdenoise.denoiser import Denoiser
from rawdenoise.errors import InputError
from rawdenoise.spec import KSigma, ModelSpec
from rawdenoise.tiling import plan_tiles
from runtimes.base import Runner

SPEC = ModelSpec(name="t", multiple=8, tile=32, receptive_radius=4)


def write_frame(folder, name, raw, **meta):
    np.save(folder / f"{name}.npy", raw)
    (folder / f"{name}.json").write_text(json.dumps({"cfa": "GRBG", "black_level": 64, "white_level": 4095, **meta}))
    return folder / f"{name}.npy"


@pytest.fixture
def frames(tmp_path, rng):
    return [write_frame(tmp_path, f"f{i}", rng.integers(0, 4096, (90 + 10 * i, 130), dtype=np.uint16)) for i in range(3)]


class Recorder(Runner):
    """Fixed-shape runner that records every batch Denoiser.run gives it."""

    name = "recorder"

    def __init__(self, spec, hw):
        super().__init__("memory", spec=spec)
        self.hw, self.seen = hw, []

    def activate_impl(self):
        pass

    def static_hw(self):
        return self.hw

    def infer_impl(self, batch):
        self.seen.extend(np.array(t) for t in batch)
        return np.zeros((batch.shape[0], self.spec.out_channels, *batch.shape[2:]), np.float32)


@pytest.mark.parametrize("spec", [SPEC, SPEC.replace(channel_order="BGGR", scale=2.0, offset=0.1),
                                  SPEC.replace(ksigma=KSigma((1e-3, 0.0), (1e-6, 0.0, 1e-4), 800.0, 4095.0))])
def test_tiles_are_exactly_what_denoiser_run_feeds_the_runner(frames, spec):
    rec = Recorder(spec, (32, 32))
    with Denoiser(rec, batch=3) as dn:
        for f in frames:
            dn.run(f, iso=400 if spec.ksigma else None)
    tiles = CalibrationTiles(frames, spec, tile=32, samples=10, holdout=0, iso=400 if spec.ksigma else None)
    got = list(tiles)
    assert len(got) == 10
    for t in got:
        assert t.shape == (4, 32, 32) and t.dtype == np.float32
        assert any(np.array_equal(t, s) for s in rec.seen)


def test_prepare_matches_float64_packing(tmp_path, rng):
    raw = rng.integers(0, 4096, (40, 56), dtype=np.uint16)
    path = write_frame(tmp_path, "a", raw, black_level=[60, 64, 68, 72])
    frame = CalibrationTiles([path], SPEC, tile=32).prepare(path)
    # GRBG frame, RGGB model: one mirrored column in front, so frame column c lands in packed (c + 1) // 2
    black = np.array([60, 64, 68, 72], np.float64).reshape(2, 2)  # G R / B G sites of the frame
    norm = (raw - np.tile(black, (20, 28))) / (4095 - np.tile(black, (20, 28)))
    assert frame.x.shape == (4, 20, 29)
    np.testing.assert_allclose(frame.x[0, :, 1:], norm[0::2, 1::2], atol=1e-6)   # R
    np.testing.assert_allclose(frame.x[1, :, :28], norm[0::2, 0::2], atol=1e-6)  # G on R rows
    np.testing.assert_allclose(frame.x[3, :, :28], norm[1::2, 0::2], atol=1e-6)  # B
    assert frame.scale.dn_per_unit == pytest.approx(4095 - 66) and frame.scale.peak_dn == pytest.approx(4095 - 66)


def test_ksigma_gain_applied_like_the_manifest_says(tmp_path, rng):
    ks = KSigma((1e-3, 0.0), (1e-6, 0.0, 1e-4), 800.0, 4095.0)
    spec = SPEC.replace(ksigma=ks, scale=3.0)
    path = write_frame(tmp_path, "a", rng.integers(0, 4096, (32, 48), dtype=np.uint16), iso=200)
    plain = CalibrationTiles([path], SPEC, tile=32).prepare(path).x
    k = CalibrationTiles([path], spec, tile=32).prepare(path)
    gain, offset = ks.gain_offset(iso=200)
    np.testing.assert_allclose(k.x, (plain * gain + offset) * 3.0, rtol=1e-5, atol=1e-6)
    assert k.scale.dn_per_unit == pytest.approx((4095 - 64) / (gain * 3.0))


def test_holdout_is_disjoint_bounded_and_reproducible(frames):
    a = CalibrationTiles(frames, SPEC, tile=32, samples=7, holdout=5, seed=3)
    cal = list(a)
    held, scales = a.held_back()
    assert len(cal) == 7 and held.shape == (5, 4, 32, 32) and len(scales) == 5
    for h in held:
        assert not any(np.array_equal(h, c) for c in cal)
    b = CalibrationTiles(frames, SPEC, tile=32, samples=7, holdout=5, seed=3)
    held_b, _ = b.held_back()  # computed without a calibration pass first
    np.testing.assert_array_equal(held, held_b)
    assert all(np.array_equal(x, y) for x, y in zip(cal, b))


def test_ort_reader_protocol_and_batches(frames):
    t = CalibrationTiles(frames, SPEC, tile=(32, 40), samples=5, holdout=0, input_name="x")
    items = []
    while (item := t.get_next()) is not None:
        items.append(item)
    assert len(items) == 5 and all(list(i) == ["x"] and i["x"].shape == (1, 4, 32, 40) for i in items)
    assert t.get_next() is None
    t.rewind()
    np.testing.assert_array_equal(t.get_next()["x"], items[0]["x"])
    batches = list(t.batches(2))
    assert [b.shape for b in batches] == [(2, 4, 32, 40)] * 2
    assert [b.shape[0] for b in t.batches(2, drop_last=False)] == [2, 2, 1]
    with pytest.raises(InputError):
        list(t.batches(0))


def test_small_frames_padded_to_the_engine_tile(tmp_path, rng):
    path = write_frame(tmp_path, "s", rng.integers(0, 4096, (20, 30), dtype=np.uint16))
    (tile,) = list(CalibrationTiles([path], SPEC, tile=32, samples=4))
    assert tile.shape == (4, 32, 32)  # one tile, padded like Denoiser pads for a fixed-shape engine


def test_sources_paths_folders_globs(tmp_path, frames):
    (tmp_path / "notes.txt").write_text("x")
    assert expand_sources([tmp_path]) == sorted(frames)
    assert expand_sources([str(tmp_path / "f*.npy"), frames[0]]) == sorted(frames)
    with pytest.raises(InputError, match="not a file"):
        expand_sources([tmp_path / "absent.dng"])
    with pytest.raises(InputError, match="matches no file"):
        expand_sources([str(tmp_path / "*.cr2")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no RAW files"):
        expand_sources([empty])
    with pytest.raises(InputError):
        expand_sources([])


def test_source_hashes_cover_sidecars(frames):
    import hashlib

    h = CalibrationTiles(frames[:1], SPEC, tile=32).source_hashes()
    assert h[str(frames[0])] == hashlib.sha256(frames[0].read_bytes()).hexdigest()
    assert str(frames[0].with_suffix(".json")) in h


def test_in_memory_frames_left_untouched(rng):
    raw = rng.integers(0, 4096, (128, 128), dtype=np.uint16)
    before = raw.copy()
    tiles = list(CalibrationTiles([raw], SPEC, tile=32, samples=3, cfa="RGGB", black_level=0, white_level=4095))
    assert len(tiles) == 3
    np.testing.assert_array_equal(raw, before)


def test_bad_arguments(frames):
    with pytest.raises(InputError):
        CalibrationTiles(frames, SPEC, samples=0)
    with pytest.raises(InputError):
        CalibrationTiles(frames, SPEC, tile=30)


def test_psnr_reference():
    a = np.zeros(100)
    b = np.full(100, 0.1)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == float("inf")


def test_iter_tiles_yields_what_run_tiled_feeds_the_predictor(rng):
    from rawdenoise.tiling import iter_tiles, run_tiled

    x = rng.random((4, 37, 61), dtype=np.float32)
    plan = plan_tiles(37, 61, tile=16, overlap=3, multiple=4, pad_to_tile=True)
    fed = []

    def record(batch):
        fed.extend(np.array(t) for t in batch)
        return batch

    run_tiled(record, x, plan, batch=2)
    got = list(iter_tiles(x, plan))
    assert [(y0, x0) for y0, x0, _ in got] == [(t[0], t[1]) for t in plan.tiles()]
    assert len(got) == len(fed) and all(np.array_equal(t, f) for (_, _, t), f in zip(got, fed))
    with pytest.raises(InputError):
        next(iter_tiles(x[:, :20], plan))
