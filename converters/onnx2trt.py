"""Build a TensorRT engine (+ JSON manifest sidecar) from a rawdenoise ONNX model.

python -m converters.onnx2trt MODEL.onnx -o MODEL.engine [--fp16] [--int8 [--calib SRC ...]]
    [--tile H W | --min-shape NxCxHxW --opt-shape ... --max-shape ...] [--batch N]
    [--workspace MiB] [--timing-cache FILE] [--cache-dir DIR | --no-cache]

TensorRT 10.x: FP16/INT8 through builder flags; `--int8 --calib` uses the legacy entropy
calibrator fed by RAW files, with a calibration cache file that is written and reused.
TensorRT 11.x (always strongly typed): `--int8 --calib` quantizes the ONNX model to Q/DQ first
(converters.quantize) and `--fp16` converts the ONNX model to FP16 first. Engines are cached by
(ONNX sha256, TensorRT version, GPU, profile, precision): building twice reuses the first engine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rawdenoise.errors import ConversionError, InputError, missing
from rawdenoise.fileio import atomic_output, sha256_file
from rawdenoise.spec import ModelSpec

from runtimes import trt_engine as tb

from .onnx_model import read_onnx, zero_points_are_zero
from rawdenoise.errors import run_cli

DEFAULT_WORKSPACE_MIB = 2048


@dataclass
class BuildOptions:
    precision: str = "fp32"                 # fp32 | fp16 | int8
    calib: Sequence[Any] = ()               # RAW sources for INT8 calibration
    calib_method: str = "entropy"
    samples: int = 64
    calib_cache: str | None = None          # TensorRT 10 legacy calibrator cache (default: <engine>.calib)
    tile: Any = None                        # int or (H, W); default: the manifest's tile
    min_shape: Any = None
    opt_shape: Any = None
    max_shape: Any = None
    batch: int = 1
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    overwrite: bool = True
    levels: dict = field(default_factory=dict)  # cfa / black_level / white_level / iso for calibration
    progress: bool = True


# ---- ONNX side (no TensorRT needed) ------------------------------------------------------------
def convert_fp16(src, dst) -> None:
    """FP16 weights and activations in the ONNX graph (TensorRT 11 takes precision from the file)."""
    import onnx  # noqa: PLC0415

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415
    except ImportError:
        raise missing("onnxruntime", "onnx", "FP16 conversion for TensorRT 11") from None
    model = onnx.load(str(src))
    # keep_io_types: the engine still takes and returns float32 tiles
    half = convert_float_to_float16(model, keep_io_types=True)
    with atomic_output(dst) as tmp:
        onnx.save(half, str(tmp))


def _sources_digest(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(hashes.values())).encode()).hexdigest()


# ---- TensorRT side ---------------------------------------------------------------------------------
def _network(trt, builder, logger, onnx_file: Path, flags: int = 0):
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT cannot parse {onnx_file.name}: {errors[:500]}")
    return network, parser


def _config(trt, builder, profile: tb.Profile, input_name: str, workspace_mib: int, timing_cache: Path | None,
            extra_profiles: dict | None = None):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    prof = builder.create_optimization_profile()
    prof.set_shape(input_name, profile.min, profile.opt, profile.max)
    for name, (lo, opt, hi) in (extra_profiles or {}).items():  # extra inputs follow the image's shape
        prof.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(prof)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config, prof


def _save_timing_cache(config, path: Path | None) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is not None:
        with atomic_output(path) as tmp:
            tmp.write_bytes(bytes(memoryview(cache.serialize())))


def _serialize(builder, network, config) -> bytes:
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ConversionError("TensorRT could not build the engine (see the TensorRT log above for the reason)")
    return bytes(memoryview(blob))


def _build_trt10(trt, onnx_file: Path, input_name: str, profile: tb.Profile, precision: str, qdq: bool,
                 opts: BuildOptions, calibrator, extra_profiles: dict | None = None) -> bytes:
    """TensorRT 10.x: precision through builder flags; INT8 from Q/DQ nodes or the legacy calibrator."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _network(trt, builder, logger, onnx_file)
    tc = Path(opts.timing_cache) if opts.timing_cache else None
    config, prof = _config(trt, builder, profile, input_name, opts.workspace_mib, tc, extra_profiles)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 cannot take fall back to FP16, not FP32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if calibrator is not None and not qdq:
            config.int8_calibrator = calibrator
            config.set_calibration_profile(prof)
    blob = _serialize(builder, network, config)
    _save_timing_cache(config, tc)
    return blob


def _build_trt11(trt, onnx_file: Path, input_name: str, profile: tb.Profile, opts: BuildOptions,
                 extra_profiles: dict | None = None) -> bytes:
    """TensorRT 11.x: always strongly typed, the ONNX file's types (casts, Q/DQ) set the precision."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _network(trt, builder, logger, onnx_file)
    tc = Path(opts.timing_cache) if opts.timing_cache else None
    config, _ = _config(trt, builder, profile, input_name, opts.workspace_mib, tc, extra_profiles)
    blob = _serialize(builder, network, config)
    _save_timing_cache(config, tc)
    return blob


def make_calibrator_trt10(trt, tiles, batch: int, cache_file: Path):
    """A TensorRT 10 IInt8EntropyCalibrator2 fed by CalibrationTiles, with a reusable cache file."""
    from runtimes.trt_runner import DeviceBuffer  # noqa: PLC0415

    class RawTileCalibratorTrt10(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self._batches = None
            self._buffer = None

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            if self._batches is None:
                self._batches = tiles.batches(batch)
            b = next(self._batches, None)
            if b is None:
                return None
            if self._buffer is None:
                self._buffer = DeviceBuffer.allocate(b.shape, "float32")
            self._buffer.copy_from_host(b)
            return [self._buffer.ptr]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            with atomic_output(cache_file) as tmp:
                tmp.write_bytes(bytes(memoryview(cache)))

    return RawTileCalibratorTrt10()


@dataclass
class BuildResult:
    engine: Path
    spec: ModelSpec
    cached: bool
    key: str


def build_engine(onnx_path, output, opts: BuildOptions | None = None, *, trt=None, gpu: tb.GpuInfo | None = None) -> BuildResult:
    """Build (or reuse from the cache) an engine for `onnx_path` and write it with its sidecar."""
    opts = opts or BuildOptions()
    if opts.precision not in tb.PRECISIONS:
        raise InputError(f"precision {opts.precision!r} is not one of {', '.join(tb.PRECISIONS)}")
    trt = trt or tb.import_tensorrt()
    version = tb.check_version(tb.tensorrt_version(trt))
    onnx_path, output = Path(onnx_path), Path(output)
    if output.exists() and not opts.overwrite:
        raise InputError(f"{output} already exists; pass --overwrite to replace it")
    model, spec, input_name, qdq = read_onnx(onnx_path)
    if qdq and not zero_points_are_zero(model):
        raise InputError(
            f"{onnx_path} has Q/DQ nodes with non-zero zero points (made with --target cpu); TensorRT takes "
            f"symmetric INT8 only: quantize again with python -m converters.quantize --target tensorrt"
        )
    profile = tb.derive_profile(spec, tile=opts.tile, batch=opts.batch, min_shape=opts.min_shape,
                                opt_shape=opts.opt_shape, max_shape=opts.max_shape)
    extra_profiles = tb.input_profiles(spec, profile)
    if opts.precision == "int8" and not qdq and extra_profiles:
        raise InputError(f"INT8 calibration of a model with extra inputs ({', '.join(extra_profiles)}) is not "
                         f"supported; build FP32 or FP16")
    if opts.precision == "int8" and not qdq and not opts.calib:
        raise InputError(
            "--int8 needs calibration data: pass --calib RAW_FILES (files, folders or globs), or build from a "
            "Q/DQ model made with python -m converters.quantize"
        )
    onnx_sha = sha256_file(onnx_path)
    extra: dict[str, Any] = {}
    tiles = None
    if opts.precision == "int8" and not qdq:
        from rawdenoise.calibration import CalibrationTiles  # noqa: PLC0415

        hw = profile.opt[2:]
        tiles = CalibrationTiles(opts.calib, spec, tile=hw, samples=opts.samples, holdout=8,
                                 input_name=input_name, progress=opts.progress, **opts.levels)
        hashes = tiles.source_hashes()
        extra = {"calibration": _sources_digest(hashes), "method": opts.calib_method, "samples": opts.samples}
    gpu = gpu or tb.detect_gpu()
    key = tb.cache_key(onnx_sha, version, gpu, profile, opts.precision, extra)
    hit = tb.cached_engine(key, opts.cache_dir) if opts.use_cache else None
    if hit is not None:
        cached_spec = tb.read_sidecar(hit)
        _publish(hit.read_bytes(), cached_spec, output, opts)
        return BuildResult(output, cached_spec, True, key)

    with tempfile.TemporaryDirectory(prefix="rawdenoise-trt-") as tmpd:
        src = onnx_path
        notes: dict[str, Any] = {}
        calibrator = None
        if tb.strongly_typed_only(version):
            if opts.precision == "int8" and not qdq:
                from .quantize import quantize  # noqa: PLC0415

                src = Path(tmpd) / "model.int8.onnx"
                report = quantize(onnx_path, src, tiles=tiles, method=opts.calib_method, quantize_bias=False,
                                  target="tensorrt")
                notes = {"calibration": report.notes}
            elif opts.precision == "fp16":
                src = Path(tmpd) / "model.fp16.onnx"
                convert_fp16(onnx_path, src)
            blob = _build_trt11(trt, src, input_name, profile, opts, extra_profiles)
        else:
            if tiles is not None:
                cache_file = Path(opts.calib_cache) if opts.calib_cache else output.with_name(output.name + ".calib")
                calibrator = make_calibrator_trt10(trt, tiles, profile.opt[0], cache_file)
                notes = {"calibration": {"sources": tiles.source_hashes(), "cache": str(cache_file),
                                         "method": "entropy2 (TensorRT)"}}
            blob = _build_trt10(trt, src, input_name, profile, opts.precision, qdq, opts, calibrator, extra_profiles)

    info = tb.BuildInfo(tb.version_family(version), gpu.name, gpu.compute_capability, profile, opts.precision,
                        onnx_sha, key, notes)
    espec = tb.engine_spec(spec, info)
    if opts.use_cache:
        eng, _ = tb.cache_paths(key, opts.cache_dir)
        with atomic_output(eng) as tmp:
            tmp.write_bytes(blob)
        tb.write_sidecar(eng, espec)
    _publish(blob, espec, output, opts)
    return BuildResult(output, espec, False, key)


def _publish(blob: bytes, spec: ModelSpec, output: Path, opts: BuildOptions) -> None:
    with atomic_output(output, overwrite=opts.overwrite) as tmp:
        tmp.write_bytes(blob)
    tb.write_sidecar(output, spec, overwrite=True)


# ---- CLI ------------------------------------------------------------------------------------------
def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="output .engine path (its manifest goes to OUTPUT.json)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="FP16 engine")
    prec.add_argument("--int8", action="store_true", help="INT8 engine (Q/DQ model or --calib RAW files)")
    p.add_argument("--calib", nargs="+", metavar="SRC", default=[],
                   help="RAW files, folders or glob patterns for INT8 calibration")
    p.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="entropy",
                   help="Q/DQ calibration method on TensorRT 11 (TensorRT 10 uses its entropy calibrator)")
    p.add_argument("--samples", type=int, default=64, help="calibration tiles (default 64)")
    p.add_argument("--calib-cache", help="TensorRT 10 calibration cache file (default OUTPUT.calib)")
    shapes = p.add_argument_group("shapes (default: the manifest's tile, every tile at the optimal shape)")
    shapes.add_argument("--tile", nargs=2, type=int, metavar=("H", "W"), help="fixed tile size in network pixels")
    shapes.add_argument("--min-shape", help="NxCxHxW")
    shapes.add_argument("--opt-shape", help="NxCxHxW")
    shapes.add_argument("--max-shape", help="NxCxHxW")
    p.add_argument("--batch", type=int, default=1, help="largest batch of tiles (fixed-tile profile)")
    p.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MIB, metavar="MiB")
    p.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache, read and updated")
    p.add_argument("--cache-dir", help="engine cache folder (default ~/.cache/rawdenoise/engines)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse/store engines in the engine cache")
    p.add_argument("--cfa", help="calibration frames' CFA when the files do not say it")
    p.add_argument("--black-level", type=float)
    p.add_argument("--white-level", type=float)
    p.add_argument("--iso", type=float)
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def options_from_args(args) -> BuildOptions:
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    if args.calib and precision != "int8":
        raise InputError("--calib only applies with --int8")
    levels = {k: v for k, v in (("cfa", args.cfa), ("black_level", args.black_level),
                                ("white_level", args.white_level), ("iso", args.iso)) if v is not None}
    return BuildOptions(precision=precision, calib=list(args.calib), calib_method=args.calib_method,
                        samples=args.samples, calib_cache=args.calib_cache,
                        tile=tuple(args.tile) if args.tile else None, min_shape=args.min_shape,
                        opt_shape=args.opt_shape, max_shape=args.max_shape, batch=args.batch,
                        workspace_mib=args.workspace, timing_cache=args.timing_cache, cache_dir=args.cache_dir,
                        use_cache=args.cache, overwrite=args.overwrite, levels=levels, progress=args.progress)


def report(result: BuildResult) -> str:
    info = tb.build_info(result.spec)
    how = "reused cached engine" if result.cached else "built"
    shapes = info.profile.to_dict() if info else {}
    return (f"{how} {result.engine} ({info.precision if info else '?'}, TensorRT {info.tensorrt if info else '?'}, "
            f"profile min {shapes.get('min')} opt {shapes.get('opt')} max {shapes.get('max')}); "
            f"manifest {tb.sidecar_path(result.engine)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.onnx2trt", description=__doc__.split("\n")[0])
    p.add_argument("model", help="rawdenoise ONNX model")
    add_build_arguments(p)
    args = p.parse_args(argv)

    def body() -> int:
        tb.import_tensorrt()  # first: without TensorRT nothing else matters
        result = build_engine(args.model, args.output, options_from_args(args))
        print(report(result))
        return 0

    return run_cli(body, "onnx2trt")


if __name__ == "__main__":
    sys.exit(main())
