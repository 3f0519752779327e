"""TensorRT runner: import behaviour, API names against the published bindings, GPU runs when present.

`tests/data/tensorrt_names_<version>.txt` list the identifiers defined by the published TensorRT
Python bindings wheels (tensorrt-cu12-bindings 10.16.1.11, tensorrt-cu13-bindings 11.4.0.106), read
from the wheels' string tables without importing them (see the header of each file).
"""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import has

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SOURCES = [ROOT / "runtimes" / "trt_runner.py", ROOT / "converters" / "onnx2trt.py"]
NAMES_10 = DATA / "tensorrt_names_10.16.1.11.txt"
NAMES_11 = DATA / "tensorrt_names_11.4.0.106.txt"

# variables that hold TensorRT objects in the sources: their attributes are TensorRT API too
TRT_OBJECTS = {"builder", "network", "parser", "config", "prof", "cache", "engine", "context", "_runtime", "blob"}
LEGACY_SCOPE = "trt10"  # functions/classes named *trt10* only run on TensorRT 10.x


def _names(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def _chain(node) -> list[str] | None:
    """['trt', 'BuilderFlag', 'FP16'] for trt.BuilderFlag.FP16; None when not rooted at a Name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _uses(path: Path) -> list[tuple[str, bool]]:
    """(TensorRT attribute name, used only in TensorRT-10 code) for every TensorRT attribute in a file."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, bool]] = []

    def visit(node, legacy: bool):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            legacy = legacy or LEGACY_SCOPE in node.name.lower()
            if isinstance(node, ast.ClassDef) and any((_chain(b) or [""])[0] == "trt" for b in node.bases):
                # methods overriding a TensorRT interface must exist in it
                out.extend((f.name, legacy) for f in node.body if isinstance(f, ast.FunctionDef)
                           and not f.name.startswith("_"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain = _chain(node.func) or [""]
            if chain[0] == "trt" or chain[0] in TRT_OBJECTS or (chain[0] == "self" and chain[1:2] and chain[1] in TRT_OBJECTS):
                out.extend((k.arg, legacy) for k in node.keywords if k.arg)  # keyword names are API too
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            chain = _chain(node)
            if chain:
                root = chain[0]
                if root == "trt":
                    out.extend((a, legacy) for a in chain[1:])
                elif root == "self" and len(chain) > 2 and chain[1] in TRT_OBJECTS:
                    out.append((chain[2], legacy))
                elif root in TRT_OBJECTS and len(chain) > 1:
                    out.append((chain[1], legacy))
        for child in ast.iter_child_nodes(node):
            child._parent = node
            visit(child, legacy)

    visit(tree, False)
    return out


def test_name_lists_are_sane():
    n10, n11 = _names(NAMES_10), _names(NAMES_11)
    for name in ("Builder", "OnnxParser", "Runtime", "execute_async_v3", "set_tensor_address", "num_io_tensors",
                 "set_memory_pool_limit", "WORKSPACE", "build_serialized_network", "deserialize_cuda_engine"):
        assert name in n10 and name in n11, name
    # TensorRT 11 removed the implicit-INT8 calibrators
    assert "IInt8EntropyCalibrator2" in n10 and "IInt8EntropyCalibrator2" not in n11
    assert "int8_calibrator" in n10 and "int8_calibrator" not in n11
    # the lists do not accept everything: names no binding defines are absent
    assert "execute_async_v2" not in n11 and "build_engine" not in n10 and "max_workspace_size" not in n10


def test_every_tensorrt_attribute_exists_in_published_bindings():
    n10, n11 = _names(NAMES_10), _names(NAMES_11)
    uses = [(src.name, name, legacy) for src in SOURCES for name, legacy in _uses(src)]
    assert len(uses) > 30, "the AST walk found too few TensorRT uses; is it still matching the sources?"
    missing10 = sorted({f"{s}: {n}" for s, n, _ in uses if n not in n10})
    missing11 = sorted({f"{s}: {n}" for s, n, legacy in uses if not legacy and n not in n11})
    assert not missing10, f"not in TensorRT 10.16 bindings: {missing10}"
    assert not missing11, f"not in TensorRT 11.4 bindings (outside TensorRT-10-only code): {missing11}"
    # the TensorRT-10-only code really is the part TensorRT 11 cannot run
    legacy_only = {n for _, n, legacy in uses if legacy} - n11
    assert {"IInt8EntropyCalibrator2", "int8_calibrator"} <= legacy_only


@pytest.mark.skipif(has("tensorrt"), reason="TensorRT is installed here")
def test_import_without_tensorrt_raises_missing_dependency_naming_extra():
    code = ("import sys\n"
            "from rawdenoise.errors import MissingDependencyError\n"
            "try:\n    import runtimes.trt_runner\n"
            "except MissingDependencyError as e:\n    print('MDE', e); sys.exit(0)\n"
            "sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rawdenoise[trt]" in proc.stdout and "tensorrt" in proc.stdout


@pytest.mark.skipif(has("tensorrt"), reason="TensorRT is installed here")
def test_registry_and_denoiser_without_tensorrt(tmp_path):
    import runtimes
    from rawdenoise.denoiser import Denoiser
    from rawdenoise.errors import MissingDependencyError

    assert runtimes.for_path(tmp_path / "m.engine") == "tensorrt"
    assert runtimes.available()["tensorrt"] is not None
    with pytest.raises(MissingDependencyError, match=r"rawdenoise\[trt\]"):
        Denoiser.load(tmp_path / "m.engine")


def test_import_runtimes_does_not_import_tensorrt():
    code = "import runtimes, rawdenoise, sys; print('tensorrt' in sys.modules, 'pycuda' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_runner_never_imports_pycuda():
    for src in SOURCES:
        tree = ast.parse(src.read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.startswith("pycuda") for m in mods), src


# ---- on a GPU with TensorRT ------------------------------------------------------------------------------------
def _gpu_ready() -> str | None:
    if not has("tensorrt"):
        return "TensorRT is not installed"
    try:
        from runtimes.trt_engine import detect_gpu
        detect_gpu()
    except Exception as e:  # no driver / no device
        return f"no usable CUDA GPU ({e})"
    return None


@pytest.fixture
def engine(tiny_unet_onnx, tmp_path):
    from converters.onnx2trt import BuildOptions, build_engine

    out = tmp_path / "unet.engine"
    res = build_engine(tiny_unet_onnx, out, BuildOptions(tile=(64, 64), batch=2, cache_dir=str(tmp_path / "cache"),
                                                        progress=False))
    return res


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(_gpu_ready() is not None, reason=str(_gpu_ready()))
def test_engine_matches_onnxruntime(engine, tiny_unet_onnx):
    from rawdenoise.denoiser import Denoiser

    raw = np.random.default_rng(0).integers(0, 4096, (150, 190), dtype=np.uint16)
    kw = dict(cfa="GRBG", black_level=64, white_level=4095)
    with Denoiser.load(engine.engine) as dn:
        assert dn.tile == (64, 64) and dn.runtime.static_hw() == (64, 64)
        got = dn.run(raw, **kw)
        io = dn.runtime.io()
    with Denoiser.load(tiny_unet_onnx, tile=64) as ref_dn:
        ref = ref_dn.run(raw, **kw)
    assert io["inputs"][0]["dtype"] == "float32"
    assert np.abs(got.astype(np.int32) - ref).max() <= 2


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(_gpu_ready() is not None, reason=str(_gpu_ready()))
def test_second_build_reuses_cached_engine(engine, tiny_unet_onnx, tmp_path):
    from converters.onnx2trt import BuildOptions, build_engine

    again = build_engine(tiny_unet_onnx, tmp_path / "again.engine",
                         BuildOptions(tile=(64, 64), batch=2, cache_dir=str(tmp_path / "cache"), progress=False))
    assert again.cached and again.key == engine.key
    assert (tmp_path / "again.engine").read_bytes() == engine.engine.read_bytes()


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(_gpu_ready() is not None, reason=str(_gpu_ready()))
def test_engine_from_other_tensorrt_version_gives_rebuild_hint(engine):
    import json

    from runtimes import trt_engine as tb
    from rawdenoise.errors import ModelFileError
    from runtimes.trt_runner import TrtRunner

    side = tb.sidecar_path(engine.engine)
    d = json.loads(side.read_text())
    d["notes"]["tensorrt"]["tensorrt"] = "10.0.1"
    side.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="converters.onnx2trt"):
        TrtRunner(engine.engine).activate()
