"""ONNX Runtime runner: CPU by default, CUDA / TensorRT execution providers when present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rawdenoise.errors import InputError, ModelFileError
from rawdenoise.spec import METADATA_KEY, ModelSpec

from .base import Runner

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _dim(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def image_and_extra_inputs(graph_inputs, spec: ModelSpec, path) -> tuple[Any, dict[str, Any]]:
    """The image input (the one input the manifest does not declare as extra) and the extra ones."""
    declared = {i.name for i in spec.separate_inputs}
    by_name = {t.name: t for t in graph_inputs}
    missing_inputs = sorted(declared - set(by_name))
    if missing_inputs:
        raise ModelFileError(f"{Path(path).name}: the manifest declares inputs {missing_inputs} that the model "
                             f"does not have (its inputs: {sorted(by_name)})")
    image = [t for t in graph_inputs if t.name not in declared]
    if len(image) != 1:
        raise ModelFileError(
            f"{Path(path).name} has inputs {sorted(by_name)}; all but the image must be declared in the manifest's "
            f"'inputs' (with how to fill them), and {len(image)} are not")
    channels = _dim(image[0].shape[1]) if len(image[0].shape) == 4 else None
    if len(image[0].shape) != 4 or (channels is not None and channels != spec.in_channels):
        raise ModelFileError(
            f"{Path(path).name}: image input {image[0].name!r} has shape {image[0].shape}, but its {spec.layout} "
            f"manifest says N x {spec.in_channels} x H x W; fix the manifest's layout/in_channels")
    return image[0], {n: by_name[n] for n in declared}


def tensorrt_qdq(spec: ModelSpec) -> bool:
    """Whether the model is a Q/DQ model quantized for TensorRT (`converters.quantize --target tensorrt`
    or `tools.train --qat tensorrt`)."""
    notes = spec.notes or {}
    target = (notes.get("quantization") or notes.get("qat") or {}).get("target")
    return spec.precision == "int8" and target == "tensorrt"


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, source, *, spec: ModelSpec | None = None, device: str | None = None,
                 precision: str | None = None, threads: int | None = None):
        device = (device or "cpu").split(":")[0]
        if device not in _PROVIDERS:
            raise InputError(f"onnxruntime device {device!r} is not one of {', '.join(_PROVIDERS)}")
        super().__init__(source, spec=spec, device=device, precision=precision, threads=threads)
        self.session: ort.InferenceSession | None = None

    def activate_impl(self) -> None:
        path = Path(self.source)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        wanted = _PROVIDERS[self.device]
        have = ort.get_available_providers()
        if wanted[0] not in have:
            raise InputError(
                f"onnxruntime here has no {wanted[0]} (available: {', '.join(have)}); "
                f"install onnxruntime-gpu for CUDA, or use device='cpu'"
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=[p for p in wanted if p in have])
        except Exception as e:  # ORT raises its own exception types for bad files
            raise ModelFileError(f"{path} is not a loadable ONNX model: {str(e).splitlines()[0][:300]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if self.spec is None:
            if METADATA_KEY not in meta:
                raise ModelFileError(
                    f"{path} carries no rawdenoise manifest (metadata '{METADATA_KEY}'); export it with "
                    f"python -m converters.torch2onnx, or pass spec=ModelSpec(...)"
                )
            self.spec = ModelSpec.from_json(meta[METADATA_KEY])
        if self.device == "cpu" and tensorrt_qdq(self.spec):
            # ORT's CPU kernels for signed (symmetric) activations saturate on x86 without VNNI; with
            # graph fusion off every QuantizeLinear/DequantizeLinear runs as written, which is the
            # arithmetic TensorRT implements: slower, and the picture the engine will give
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._input, extra = image_and_extra_inputs(self.session.get_inputs(), self.spec, path)
        self._output = self.session.get_outputs()[0]
        # float16 models (converted for TensorRT/CUDA) take half inputs
        self._half = {t.name for t in (self._input, *extra.values()) if t.type == "tensor(float16)"}

    def infer_impl(self, batch: np.ndarray, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        feed = {self._input.name: batch, **(inputs or {})}
        feed = {k: v.astype(np.float16) if k in self._half else v for k, v in feed.items()}
        (y,) = self.session.run([self._output.name], feed)
        return y if y.dtype == np.float32 else y.astype(np.float32)

    def deactivate_impl(self) -> None:
        self.session = None

    def static_hw(self) -> tuple[int, int] | None:
        if self.session is None:
            return None
        shape = self._input.shape
        h, w = _dim(shape[2]), _dim(shape[3])
        return (h, w) if h and w else None

    def static_batch(self) -> int | None:
        return _dim(self._input.shape[0]) if self.session is not None else None

    def io(self) -> dict[str, list[dict[str, Any]]]:
        def desc(t):
            return {"name": t.name, "shape": [_dim(d) for d in t.shape], "dtype": t.type}
        return {"inputs": [desc(t) for t in self.session.get_inputs()],
                "outputs": [desc(t) for t in self.session.get_outputs()]}
