"""TensorRT build planning without TensorRT: versions, profiles, cache keys, sidecars, CLI errors."""

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from packaging.version import Version

from runtimes import trt_engine as tb
from rawdenoise.errors import InputError, MissingDependencyError, ModelFileError
from rawdenoise.spec import ModelSpec
from rawdenoise.tiling import plan_tiles

from conftest import has

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(name="unet", multiple=16, tile=256, in_channels=4, out_channels=4, receptive_radius=20)
GPU = tb.GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))


def fake_trt(version):
    # only the version logic reads this object
    return types.SimpleNamespace(__version__=version)


# ---- versions -------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, strongly_typed", [("10.0.1", False), ("10.16.1.11", False), ("10.9.0.34", False),
                                                  ("11.0.0.114", True), ("11.4.0.106", True)])
def test_version_detection(raw, strongly_typed):
    v = tb.tensorrt_version(fake_trt(raw))
    assert v == Version(raw)
    assert tb.strongly_typed_only(v) is strongly_typed
    assert tb.has_legacy_calibrator(v) is not strongly_typed


def test_versions_compare_numerically_not_as_strings():
    # "10.9" < "10.16" numerically; as strings it would be the other way round
    assert tb.tensorrt_version(fake_trt("10.9.0")) < tb.tensorrt_version(fake_trt("10.16.0"))
    assert not tb.strongly_typed_only(tb.tensorrt_version(fake_trt("10.16.1.11")))


@pytest.mark.parametrize("raw", ["8.6.1", "9.3.0"])
def test_old_tensorrt_is_refused_with_upgrade_hint(raw):
    with pytest.raises(MissingDependencyError, match="upgrade"):
        tb.check_version(tb.tensorrt_version(fake_trt(raw)))


def test_unreadable_version():
    with pytest.raises(MissingDependencyError):
        tb.tensorrt_version(fake_trt("not-a-version"))
    with pytest.raises(MissingDependencyError):
        tb.tensorrt_version(types.SimpleNamespace())


@pytest.mark.skipif(has("tensorrt"), reason="TensorRT is installed here")
def test_import_tensorrt_missing_names_extra_and_ort_path():
    with pytest.raises(MissingDependencyError) as e:
        tb.import_tensorrt()
    msg = str(e.value)
    assert "rawdenoise[trt]" in msg and "converters.quantize" in msg and "\n" not in msg


# ---- profiles -----------------------------------------------------------------------------------------
def test_default_profile_is_fixed_tile_and_matches_denoiser_plan():
    prof = tb.derive_profile(SPEC, batch=4)
    assert prof.min == (1, 4, 256, 256) and prof.opt == (4, 4, 256, 256) and prof.max == (4, 4, 256, 256)
    assert prof.static_hw == (256, 256) and prof.static_batch is None
    # every tile a Denoiser cuts from frames of any size (padded up to the tile) hits the optimal H/W
    for h, w in [(37, 53), (255, 257), (1000, 1500), (256, 256)]:
        plan = plan_tiles(h, w, tile=prof.static_hw, overlap=SPEC.receptive_radius, multiple=SPEC.multiple,
                          pad_to_tile=True)
        assert plan.tile_shape == prof.opt[2:]
        assert prof.contains((1, 4, *plan.tile_shape))


def test_profile_tile_override_rectangular():
    prof = tb.derive_profile(SPEC, tile=(128, 384))
    assert prof.static_hw == (128, 384) and prof.min == prof.opt == prof.max == (1, 4, 128, 384)


@pytest.mark.parametrize("tile", [100, (256, 250), 0, -16])
def test_profile_rejects_bad_tiles(tile):
    with pytest.raises(InputError):
        tb.derive_profile(SPEC, tile=tile)


def test_profile_needs_tile_when_manifest_has_none():
    with pytest.raises(InputError, match="--tile"):
        tb.derive_profile(SPEC.replace(tile=0))


def test_explicit_shapes_parsed_and_validated():
    prof = tb.derive_profile(SPEC, min_shape="1x4x64x64", opt_shape="2,4,256,256", max_shape=(4, 4, 512, 512))
    assert prof.min == (1, 4, 64, 64) and prof.opt == (2, 4, 256, 256) and prof.max == (4, 4, 512, 512)
    assert prof.static_hw is None
    assert prof.contains((3, 4, 128, 320)) and not prof.contains((1, 4, 32, 64)) and not prof.contains((5, 4, 64, 64))


@pytest.mark.parametrize("shapes, match", [
    (("1x4x64x60", "1x4x64x64", "1x4x64x64"), "multiple"),
    (("1x3x64x64", "1x3x64x64", "1x3x64x64"), "channels"),
    (("1x4x128x128", "1x4x64x64", "1x4x256x256"), "min <= opt <= max"),
    (("1x4x64", "1x4x64x64", "1x4x64x64"), "N x C x H x W"),
])
def test_explicit_shapes_errors(shapes, match):
    with pytest.raises(InputError, match=match):
        tb.derive_profile(SPEC, min_shape=shapes[0], opt_shape=shapes[1], max_shape=shapes[2])


def test_explicit_shapes_need_all_three_and_no_tile():
    with pytest.raises(InputError, match="all three"):
        tb.derive_profile(SPEC, min_shape="1x4x64x64")
    with pytest.raises(InputError, match="exclude"):
        tb.derive_profile(SPEC, tile=64, min_shape="1x4x64x64", opt_shape="1x4x64x64", max_shape="1x4x64x64")


def test_profile_dict_round_trip():
    prof = tb.derive_profile(SPEC, batch=2)
    assert tb.Profile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof


# ---- cache keys ------------------------------------------------------------------------------------------
def test_cache_key_changes_with_each_ingredient():
    prof = tb.derive_profile(SPEC)
    base = tb.cache_key("a" * 64, "10.16.1.11", GPU, prof, "fp16")
    assert base == tb.cache_key("a" * 64, Version("10.16.1.11"), GPU, prof, "fp16")
    variants = [
        tb.cache_key("b" * 64, "10.16.1.11", GPU, prof, "fp16"),
        tb.cache_key("a" * 64, "10.16.0.72", GPU, prof, "fp16"),
        tb.cache_key("a" * 64, "10.16.1.11", tb.GpuInfo("NVIDIA H100 80GB HBM3", (8, 9)), prof, "fp16"),
        tb.cache_key("a" * 64, "10.16.1.11", tb.GpuInfo("NVIDIA L4", (9, 0)), prof, "fp16"),
        tb.cache_key("a" * 64, "10.16.1.11", GPU, tb.derive_profile(SPEC, batch=2), "fp16"),
        tb.cache_key("a" * 64, "10.16.1.11", GPU, prof, "fp32"),
        tb.cache_key("a" * 64, "10.16.1.11", GPU, prof, "fp16", {"calibration": "x"}),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in variants)
    with pytest.raises(InputError):
        tb.cache_key("a" * 64, "10.16.1.11", GPU, prof, "int4")


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RAWDENOISE_CACHE", str(tmp_path / "c"))
    assert tb.default_cache_dir() == tmp_path / "c" / "engines"
    monkeypatch.delenv("RAWDENOISE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert tb.default_cache_dir() == tmp_path / "x" / "rawdenoise" / "engines"
    key = "0" * 64
    assert tb.cached_engine(key, tmp_path / "d") is None
    eng, side = tb.cache_paths(key, tmp_path / "d")
    assert eng.parent.is_dir() and side.name == eng.name + ".json"
    eng.write_bytes(b"engine")
    assert tb.cached_engine(key, tmp_path / "d") is None  # no sidecar: not a complete entry
    tb.write_sidecar(eng, SPEC)
    assert tb.cached_engine(key, tmp_path / "d") == eng


# ---- sidecar -------------------------------------------------------------------------------------------------
def _info(**kw):
    d = dict(tensorrt="10.16.1.11", gpu=GPU.name, compute_capability=(9, 0), profile=tb.derive_profile(SPEC, batch=4),
             precision="fp16", onnx_sha256="c" * 64, cache_key="k" * 64)
    d.update(kw)
    return tb.BuildInfo(**d)


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "unet.engine"
    engine.write_bytes(b"\0")
    spec = tb.engine_spec(SPEC.replace(tile=512), _info(profile=tb.derive_profile(SPEC, tile=128)))
    path = tb.write_sidecar(engine, spec)
    assert path == tmp_path / "unet.engine.json"
    back = tb.read_sidecar(engine)
    assert back == spec
    assert back.precision == "fp16" and back.tile == 128
    info = tb.build_info(back)
    assert info.profile.static_hw == (128, 128) and info.compute_capability == (9, 0)
    assert json.loads(path.read_text())["notes"]["tensorrt"]["gpu"] == GPU.name


def test_missing_or_bad_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(ModelFileError, match="converters.onnx2trt"):
        tb.read_sidecar(engine)
    tb.sidecar_path(engine).write_text("{not json")
    with pytest.raises(ModelFileError):
        tb.read_sidecar(engine)
    tb.sidecar_path(engine).write_text(json.dumps({**SPEC.to_dict(), "notes": {"tensorrt": {"gpu": "x"}}}))
    with pytest.raises(ModelFileError, match="rebuild"):
        tb.build_info(tb.read_sidecar(engine))


def test_compatibility_messages():
    info = _info()
    assert tb.compatibility_problem(info, "10.16.1.11", GPU) is None
    assert tb.compatibility_problem(None, "11.0", GPU) is None
    msg = tb.compatibility_problem(info, "11.4.0.106", GPU)
    assert "10.16.1.11" in msg and "11.4.0.106" in msg
    msg = tb.compatibility_problem(info, "10.16.1.11", tb.GpuInfo("NVIDIA GeForce RTX 4090", (8, 9)))
    assert "RTX 4090" in msg and "8.9" in msg
    assert "converters.onnx2trt" in tb.rebuild_hint("m.engine", info) and "--fp16" in tb.rebuild_hint("m.engine", info)


# ---- command lines without TensorRT ------------------------------------------------------------------------
@pytest.mark.skipif(has("tensorrt"), reason="TensorRT is installed here")
@pytest.mark.parametrize("module, model", [("converters.onnx2trt", "m.onnx"), ("converters.torch2trt", "m.pt")])
def test_cli_without_tensorrt_one_line(tmp_path, module, model):
    proc = subprocess.run([sys.executable, "-m", module, str(tmp_path / model), "-o", str(tmp_path / "m.engine")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "rawdenoise[trt]" in lines[0] and "converters.quantize" in lines[0]
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.skipif(has("tensorrt"), reason="TensorRT is installed here")
def test_main_in_process_returns_1(tmp_path, capsys):
    from converters import onnx2trt

    assert onnx2trt.main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.engine"), "--fp16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rawdenoise[trt]" in err


def test_read_onnx_finds_manifest_input_and_qdq(tiny_unet_onnx, tmp_path):
    from converters.onnx_model import read_onnx

    _, spec, name, qdq = read_onnx(tiny_unet_onnx)
    assert spec.name == "unet" and isinstance(name, str) and qdq is False
    with pytest.raises(ModelFileError):
        read_onnx(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelFileError):
        read_onnx(bad)


def test_fp16_conversion_for_trt11_keeps_float_io(tiny_unet_onnx, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort
    from converters.onnx2trt import convert_fp16

    dst = tmp_path / "half.onnx"
    convert_fp16(tiny_unet_onnx, dst)
    m = onnx.load(str(dst))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    x = np.random.default_rng(0).random((1, 4, 64, 64), dtype=np.float32)
    ref = ort.InferenceSession(str(tiny_unet_onnx), providers=["CPUExecutionProvider"])
    half = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    a = ref.run(None, {ref.get_inputs()[0].name: x})[0]
    b = half.run(None, {half.get_inputs()[0].name: x})[0]
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 5e-2  # fp16 rounding of a small random network


def test_cli_options_parsed_into_build_options():
    import argparse

    from converters.onnx2trt import add_build_arguments, options_from_args

    p = argparse.ArgumentParser()
    p.add_argument("model")
    add_build_arguments(p)
    o = options_from_args(p.parse_args(["m.onnx", "-o", "m.engine", "--int8", "--calib", "a.dng", "d/", "--tile", "128",
                                        "256", "--batch", "4", "--workspace", "512", "--no-cache", "--iso", "800"]))
    assert o.precision == "int8" and o.calib == ["a.dng", "d/"] and o.tile == (128, 256) and o.batch == 4
    assert o.workspace_mib == 512 and o.use_cache is False and o.levels == {"iso": 800.0}
    with pytest.raises(InputError, match="--int8"):
        options_from_args(p.parse_args(["m.onnx", "-o", "m.engine", "--calib", "a.dng"]))
    with pytest.raises(SystemExit):
        p.parse_args(["m.onnx", "-o", "m.engine", "--int8", "--fp16"])
