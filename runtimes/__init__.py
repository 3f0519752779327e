"""Runners: one contract (runtimes.base.Runner), several back ends, imported lazily.

`import runtimes` imports no framework; a runner's module is imported the first time it is used.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from rawdenoise.errors import InputError, MissingDependencyError, missing

from .base import Runner

# name -> (import string, framework module, pip extra)
_RUNNERS = {
    "torch": ("runtimes.torch_runner:TorchRunner", "torch", "torch"),
    "onnxruntime": ("runtimes.ort_runner:OrtRunner", "onnxruntime", "onnx"),
    "tensorrt": ("runtimes.trt_runner:TrtRunner", "tensorrt", "trt"),
}
_SUFFIXES = {
    ".pt": "torch",
    ".pth": "torch",
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".trt": "tensorrt",
}
_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def names() -> list[str]:
    """Names of all runners this version knows (installed or not)."""
    return list(_RUNNERS)


def canonical(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _RUNNERS:
        raise InputError(f"unknown runtime {name!r}; use one of {', '.join(_RUNNERS)}")
    return key


def for_path(path) -> str:
    """The runner name for a model file, chosen from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise InputError(
            f"cannot tell the runtime of {Path(path).name!r} from its suffix {suffix!r}; "
            f"known suffixes: {', '.join(_SUFFIXES)} (or pass runtime=...)"
        )
    return _SUFFIXES[suffix]


def available() -> dict[str, str | None]:
    """Each runner name -> None when usable here, else the reason it is not."""
    out = {}
    for name, (_, module, extra) in _RUNNERS.items():
        if importlib.util.find_spec(module) is None:
            out[name] = f"'{module}' is not installed (pip install 'rawdenoise[{extra}]')"
        else:
            out[name] = None
    return out


def get(name: str) -> type[Runner]:
    """The runner class for `name`, importing its framework now."""
    name = canonical(name)
    target, module, extra = _RUNNERS[name]
    if importlib.util.find_spec(module) is None:
        raise missing(module, extra, f"the {name} runtime")
    mod_name, cls_name = target.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise MissingDependencyError(f"the {name} runner is not part of this rawdenoise version") from None
        raise
    return getattr(mod, cls_name)


def load(path, runtime: str | None = None, **options) -> Runner:
    """Open a model file with the named runner (or the one its suffix implies), activated."""
    name = canonical(runtime) if runtime else for_path(path)
    return get(name)(path, **options).activate()


__all__ = ["Runner", "names", "for_path", "available", "get", "load", "canonical"]
