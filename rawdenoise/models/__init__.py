"""The default model shipped inside the package (`Denoiser.load("default")`).

`default.pt` (torch) and `default.onnx` (ONNX Runtime) hold the same network and manifest; the
manifest's notes record the noise profile it was trained on and how it was trained.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import InputError, ModelFileError

MODELS_DIR = Path(__file__).resolve().parent
_FILES = {"torch": "default.pt", "onnxruntime": "default.onnx"}
# INT8 ships for ONNX Runtime only (a Q/DQ model; TensorRT builds engines from it)
INT8_FILE = "default.int8.onnx"
_ALIASES = {"torch": "torch", "pytorch": "torch", "pt": "torch", "onnxruntime": "onnxruntime", "ort": "onnxruntime",
            "onnx": "onnxruntime"}


def default_model_path(runtime: str | None = None, precision: str | None = None) -> Path:
    """Path of the default model for `runtime` ('torch' or 'onnxruntime') and `precision`.

    With no runtime: the ONNX file when onnxruntime is installed, else the torch file.
    `precision="int8"`: the INT8 model, when one ships (ONNX Runtime).
    """
    if precision == "int8":
        if runtime is not None and _ALIASES.get(str(runtime).lower()) != "onnxruntime":
            raise InputError(f"the INT8 default model runs on onnxruntime, not {runtime!r}")
        path = MODELS_DIR / INT8_FILE
        if not path.is_file():
            raise ModelFileError("no INT8 default model ships with this version of rawdenoise; make one with "
                                 "python -m converters.quantize (see the README's INT8 section)")
        return path
    if runtime is None:
        name = "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "torch"
    else:
        name = _ALIASES.get(str(runtime).lower())
        if name is None:
            raise InputError(
                f"the default model ships for torch and onnxruntime, not {runtime!r}; for TensorRT build an "
                f"engine from {MODELS_DIR / _FILES['onnxruntime']} with python -m converters.onnx2trt"
            )
    path = MODELS_DIR / _FILES[name]
    if not path.is_file():
        raise ModelFileError(
            f"the default model file {path} is missing from this installation; reinstall rawdenoise, or "
            f"pass a model file of your own (--model / Denoiser.load(path))"
        )
    return path
