"""What a TensorRT engine is, without TensorRT: versions, profiles, cache keys, the JSON sidecar
manifest and compatibility checks. The runner (runtimes.trt_runner) reads engines with it and the
builder (converters.onnx2trt) writes them with it.

Everything here is pure Python so it can be tested on machines without TensorRT or a GPU. The
TensorRT module is passed in where a version is needed (tests pass a stand-in with `__version__`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from packaging.version import InvalidVersion, Version

from rawdenoise.errors import InputError, MissingDependencyError, ModelFileError
from rawdenoise.fileio import atomic_output
from rawdenoise.spec import ModelSpec

MIN_VERSION = Version("10.0")
# TensorRT 11 removed the implicit-precision builder flags and the INT8 calibrators and builds
# every network strongly typed: precision comes from the ONNX file (casts, Q/DQ nodes) only.
STRONGLY_TYPED_FROM = Version("11.0")
PRECISIONS = ("fp32", "fp16", "int8")

NO_TENSORRT = (
    "TensorRT is not installed; install it with: pip install 'rawdenoise[trt]' (needs an NVIDIA GPU "
    "and driver). Without TensorRT, INT8 runs on the CPU through ONNX Runtime: "
    "python -m converters.quantize MODEL.onnx -o MODEL.int8.onnx --calib RAW_FILES"
)


def import_tensorrt():
    """The `tensorrt` module, or a MissingDependencyError naming the pip extra and the ORT INT8 path."""
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError:
        raise MissingDependencyError(NO_TENSORRT) from None
    check_version(tensorrt_version(tensorrt))
    return tensorrt


def tensorrt_version(trt_module) -> Version:
    """The version of a TensorRT module (anything with `__version__`)."""
    raw = getattr(trt_module, "__version__", None)
    if raw is None:
        raise MissingDependencyError(f"the tensorrt module has no __version__; reinstall it ({NO_TENSORRT})")
    try:
        return Version(str(raw))
    except InvalidVersion:
        raise MissingDependencyError(f"cannot read the TensorRT version {raw!r}; reinstall tensorrt") from None


def check_version(v: Version) -> Version:
    if v < MIN_VERSION:
        raise MissingDependencyError(
            f"TensorRT {v} is too old: rawdenoise needs TensorRT >= {MIN_VERSION} (the 8.x/9.x APIs are gone); "
            f"upgrade with: pip install -U 'rawdenoise[trt]'"
        )
    return v


def strongly_typed_only(v: Version) -> bool:
    """True when the builder has no implicit FP16/INT8 flags and no calibrators (TensorRT >= 11)."""
    return v >= STRONGLY_TYPED_FROM


def has_legacy_calibrator(v: Version) -> bool:
    return not strongly_typed_only(v)


def version_family(v: Version) -> str:
    """Engines are only portable within one exact TensorRT version; this is what the cache keys on."""
    return str(v.public)


# ---- optimisation profiles --------------------------------------------------------------------
Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile for the NCHW input."""

    min: Shape
    opt: Shape
    max: Shape

    @property
    def static_hw(self) -> tuple[int, int] | None:
        """(H, W) when the profile admits one spatial size only (every tile hits the optimum)."""
        if self.min[2:] == self.max[2:]:
            return self.min[2], self.min[3]
        return None

    @property
    def static_batch(self) -> int | None:
        return self.min[0] if self.min[0] == self.max[0] else None

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d) -> "Profile":
        try:
            return cls(*(tuple(int(v) for v in d[k]) for k in ("min", "opt", "max")))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"bad optimisation profile {d!r}: {e}") from None


def input_profiles(spec: ModelSpec, profile: Profile) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every extra input the manifest declares, derived from the image
    profile: a map of stride s is (N, C, H/s, W/s), a per-image vector (N, C)."""
    return {i.name: tuple(i.shape(shape[0], shape[2], shape[3]) for shape in (profile.min, profile.opt, profile.max))
            for i in spec.separate_inputs}


def parse_shape(text: str) -> Shape:
    """'1x4x256x256' or '1,4,256,256' -> (1, 4, 256, 256)."""
    parts = [p for p in re.split(r"[x,X\s]+", str(text).strip()) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or any(d < 1 for d in dims):
        raise InputError(f"shape {text!r} is not N x C x H x W with positive sizes; write it like 1x4x256x256")
    return dims  # type: ignore[return-value]


def derive_profile(spec: ModelSpec, *, tile=None, batch: int = 1, min_shape=None, opt_shape=None,
                   max_shape=None) -> Profile:
    """The profile a Denoiser of this manifest needs.

    Default: the fixed tile (manifest `tile`, or `tile=` as an int or (H, W)) with batch 1..`batch`,
    so every tile the Denoiser cuts (it pads small frames up to the tile) runs at the optimal shape.
    Explicit `min/opt/max_shape` (NCHW, strings or tuples) are validated against the manifest.
    """
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    explicit = [s for s in (min_shape, opt_shape, max_shape) if s is not None]
    if explicit:
        if len(explicit) != 3:
            raise InputError("give all three of --min-shape, --opt-shape and --max-shape, or none (fixed tile)")
        if tile is not None:
            raise InputError("--tile and --min/--opt/--max-shape exclude each other; pick one")
        shapes = [parse_shape(s) if isinstance(s, str) else tuple(int(v) for v in s) for s in explicit]
        for name, s in zip(("min", "opt", "max"), shapes):
            if len(s) != 4:
                raise InputError(f"{name} shape {s} is not N x C x H x W")
            if s[1] != spec.in_channels:
                raise InputError(f"{name} shape {s} has {s[1]} channels; this model takes {spec.in_channels}")
            for d in s[2:]:
                if d % spec.multiple:
                    lo, hi = d // spec.multiple * spec.multiple, -(-d // spec.multiple) * spec.multiple
                    raise InputError(
                        f"{name} shape {s}: {d} is not a multiple of the model's size multiple "
                        f"{spec.multiple}; use {lo or spec.multiple} or {hi}"
                    )
        lo, opt, hi = shapes
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise InputError(f"shapes must satisfy min <= opt <= max in every dimension, got {lo}, {opt}, {hi}")
        return Profile(lo, opt, hi)  # type: ignore[arg-type]
    if tile is None:
        tile = spec.tile
    th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if th <= 0 or tw <= 0:
        raise InputError(
            f"an engine needs a concrete tile size, the manifest says tile={spec.tile}; pass --tile H W "
            f"(multiples of {spec.multiple})"
        )
    for d in (th, tw):
        if d % spec.multiple:
            lo, hi = d // spec.multiple * spec.multiple, -(-d // spec.multiple) * spec.multiple
            raise InputError(f"tile {d} is not a multiple of the model's size multiple {spec.multiple}; "
                             f"use {lo or spec.multiple} or {hi}")
    c = spec.in_channels
    return Profile((1, c, th, tw), (batch, c, th, tw), (batch, c, th, tw))


# ---- engine cache ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def detect_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of a CUDA device via torch, else cuda-python."""
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return GpuInfo(torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))
    except ImportError:
        pass
    try:
        try:
            from cuda.bindings import runtime as cudart  # noqa: PLC0415  (cuda-python >= 12.6)
        except ImportError:
            from cuda import cudart  # noqa: PLC0415
    except ImportError:
        raise MissingDependencyError(
            "finding the GPU needs torch with CUDA or cuda-python; install it with: pip install 'rawdenoise[trt]'"
        ) from None
    err, props = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise InputError(f"CUDA device {device} is not usable (cudaGetDeviceProperties error {int(err)})")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.rstrip("\x00"), (int(props.major), int(props.minor)))


def cache_key(onnx_sha256: str, trt_version, gpu: GpuInfo, profile: Profile, precision: str,
              extra: dict[str, Any] | None = None) -> str:
    """sha256 over everything that makes an engine valid: model bytes, TensorRT, GPU, shapes, precision."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    payload = {
        "onnx_sha256": onnx_sha256,
        "tensorrt": version_family(Version(str(trt_version))),
        "gpu": gpu.name,
        "compute_capability": list(gpu.compute_capability),
        "profile": profile.to_dict(),
        "precision": precision,
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """$RAWDENOISE_CACHE/engines, else $XDG_CACHE_HOME/rawdenoise/engines, else ~/.cache/rawdenoise/engines."""
    root = os.environ.get("RAWDENOISE_CACHE")
    if root:
        return Path(root) / "engines"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "rawdenoise" / "engines"


def cache_paths(key: str, cache_dir=None) -> tuple[Path, Path]:
    """(engine, sidecar) paths of a cache entry; the folder is created."""
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the engine cache folder {d} ({e}); pass --cache-dir or --no-cache") from None
    engine = d / f"{key}.engine"
    return engine, sidecar_path(engine)


def cached_engine(key: str, cache_dir=None) -> Path | None:
    engine, side = cache_paths(key, cache_dir)
    return engine if engine.is_file() and side.is_file() else None


# ---- sidecar manifest --------------------------------------------------------------------------
def sidecar_path(engine) -> Path:
    """`unet.engine` -> `unet.engine.json` (engines have no metadata slot of their own)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


@dataclass(frozen=True)
class BuildInfo:
    """What an engine was built with; stored in the manifest's notes['tensorrt']."""

    tensorrt: str
    gpu: str
    compute_capability: tuple[int, int]
    profile: Profile
    precision: str
    onnx_sha256: str
    cache_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"tensorrt": self.tensorrt, "gpu": self.gpu, "compute_capability": list(self.compute_capability),
                "profile": self.profile.to_dict(), "precision": self.precision, "onnx_sha256": self.onnx_sha256,
                "cache_key": self.cache_key, **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_dict(cls, d) -> "BuildInfo":
        try:
            return cls(str(d["tensorrt"]), str(d["gpu"]), tuple(int(v) for v in d["compute_capability"]),
                       Profile.from_dict(d["profile"]), str(d["precision"]), str(d["onnx_sha256"]),
                       str(d.get("cache_key", "")), dict(d.get("extra", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"engine manifest has incomplete TensorRT build notes ({e}); rebuild the engine") from None


def engine_spec(spec: ModelSpec, info: BuildInfo) -> ModelSpec:
    """The manifest of an engine: the source manifest with its precision, fixed tile and build notes."""
    notes = dict(spec.notes)
    notes["tensorrt"] = info.to_dict()
    hw = info.profile.static_hw
    tile = spec.tile
    if hw is not None and hw[0] == hw[1]:
        tile = hw[0]
    origin = dict(spec.origin)
    origin.setdefault("onnx_sha256", info.onnx_sha256)
    return spec.replace(precision=info.precision, tile=tile, notes=notes, origin=origin)


def write_sidecar(engine, spec: ModelSpec, *, overwrite: bool = True) -> Path:
    path = sidecar_path(engine)
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(spec.to_json() + "\n")
    return path


def read_sidecar(engine) -> ModelSpec:
    path = sidecar_path(engine)
    if not path.is_file():
        raise ModelFileError(
            f"{Path(engine).name} has no manifest {path.name} next to it; TensorRT engines keep their "
            f"manifest in that JSON sidecar: rebuild with python -m converters.onnx2trt (it writes both)"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"cannot read the engine manifest {path} ({e})") from None
    return ModelSpec.from_json(text)


def build_info(spec: ModelSpec) -> BuildInfo | None:
    d = spec.notes.get("tensorrt") if isinstance(spec.notes, dict) else None
    return None if d is None else BuildInfo.from_dict(d)


def rebuild_hint(engine, info: BuildInfo | None) -> str:
    src = "MODEL.onnx"
    prec = ""
    if info is not None:
        prec = {"fp16": " --fp16", "int8": " --int8 --calib RAW_FILES"}.get(info.precision, "")
    return f"rebuild it on this machine: python -m converters.onnx2trt {src} -o {engine}{prec}"


def compatibility_problem(info: BuildInfo | None, trt_version, gpu: GpuInfo | None) -> str | None:
    """Why an engine built as `info` cannot run here (None when it can, or when unknown)."""
    if info is None:
        return None
    here = version_family(Version(str(trt_version)))
    if info.tensorrt != here:
        return f"it was built with TensorRT {info.tensorrt} and this machine has TensorRT {here}"
    if gpu is not None and tuple(info.compute_capability) != tuple(gpu.compute_capability):
        cc = ".".join(map(str, info.compute_capability))
        return (f"it was built for {info.gpu} (compute capability {cc}) and this GPU is {gpu.name} "
                f"(compute capability {gpu.sm})")
    return None
