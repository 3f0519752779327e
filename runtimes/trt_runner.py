"""TensorRT runner (TensorRT 10.x and 11.x): one engine deserialised once, I/O by tensor name.

Device memory comes from torch CUDA tensors when torch with CUDA is installed, otherwise from
cuda-python; buffers are allocated once per input shape and reused. Inference is
`set_input_shape` + `set_tensor_address` + `execute_async_v3` on the runner's own stream.
The manifest lives in the JSON sidecar next to the engine (`unet.engine.json`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from rawdenoise.errors import InputError, MissingDependencyError, ModelFileError, missing
from rawdenoise.spec import ModelSpec

from .base import Runner

try:
    import tensorrt as trt
except ImportError:
    raise missing("tensorrt", "trt", "the TensorRT runtime") from None

from . import trt_engine as tb  # noqa: E402  (pure Python, after the TensorRT check on purpose)

_KEEP_SHAPES = 4  # buffer sets kept for distinct input shapes (full tiles + a few edge batches)


# ---- device memory -----------------------------------------------------------------------------------
class _TorchCuda:
    """Device memory and stream from torch (when torch was built with CUDA)."""

    def __init__(self, torch, device: int):
        self.torch = torch
        self.device = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(device=self.device)

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def alloc(self, shape, dtype) -> "DeviceBuffer":
        t = self.torch.empty(tuple(shape), dtype=getattr(self.torch, np.dtype(dtype).name), device=self.device)
        return DeviceBuffer(self, t.data_ptr(), tuple(shape), np.dtype(dtype), t)

    def h2d(self, buf: "DeviceBuffer", arr: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.handle.copy_(self.torch.from_numpy(arr), non_blocking=False)

    def d2h(self, buf: "DeviceBuffer") -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            return buf.handle.cpu().numpy()

    def sync(self) -> None:
        self.stream.synchronize()

    def free(self, buf: "DeviceBuffer") -> None:
        buf.handle = None


class _CudaPython:
    """Device memory and stream from cuda-python (cuda.bindings.runtime, or the older cuda.cudart)."""

    def __init__(self, device: int):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart
            except ImportError:
                raise MissingDependencyError(
                    "the TensorRT runtime needs GPU memory from torch (CUDA build) or cuda-python; install "
                    "it with: pip install 'rawdenoise[trt]'"
                ) from None
        self.rt = cudart
        self._check(cudart.cudaSetDevice(device)[0], "cudaSetDevice")
        err, self.stream = cudart.cudaStreamCreate()
        self._check(err, "cudaStreamCreate")

    def _check(self, err, what: str) -> None:
        if int(err) != 0:
            raise InputError(f"CUDA call {what} failed with error {int(err)}; is the GPU visible and the driver loaded?")

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def alloc(self, shape, dtype) -> "DeviceBuffer":
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        err, ptr = self.rt.cudaMalloc(nbytes)
        self._check(err, "cudaMalloc")
        return DeviceBuffer(self, int(ptr), tuple(shape), np.dtype(dtype), None)

    def h2d(self, buf: "DeviceBuffer", arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        (err,) = self.rt.cudaMemcpyAsync(buf.ptr, arr.ctypes.data, arr.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)
        self._check(err, "cudaMemcpyAsync")
        self.sync()  # the host array may be a temporary

    def d2h(self, buf: "DeviceBuffer") -> np.ndarray:
        out = np.empty(buf.shape, buf.dtype)
        (err,) = self.rt.cudaMemcpyAsync(out.ctypes.data, buf.ptr, out.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)
        self._check(err, "cudaMemcpyAsync")
        self.sync()
        return out

    def sync(self) -> None:
        (err,) = self.rt.cudaStreamSynchronize(self.stream)
        self._check(err, "cudaStreamSynchronize")

    def free(self, buf: "DeviceBuffer") -> None:
        if buf.ptr:
            self.rt.cudaFree(buf.ptr)
            buf.ptr = 0


def cuda_backend(device: int = 0):
    """torch CUDA when available (shares torch's allocator), else cuda-python."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return _TorchCuda(torch, device)
    return _CudaPython(device)


class DeviceBuffer:
    """One device allocation of a fixed shape and dtype."""

    _default_backend = None

    def __init__(self, backend, ptr: int, shape: tuple[int, ...], dtype: np.dtype, handle: Any):
        self.backend, self.ptr, self.shape, self.dtype, self.handle = backend, ptr, shape, dtype, handle

    @classmethod
    def allocate(cls, shape, dtype, backend=None) -> "DeviceBuffer":
        if backend is None:
            if cls._default_backend is None:
                cls._default_backend = cuda_backend()
            backend = cls._default_backend
        return backend.alloc(shape, dtype)

    def copy_from_host(self, arr: np.ndarray) -> None:
        self.backend.h2d(self, np.ascontiguousarray(arr, dtype=self.dtype))

    def copy_to_host(self) -> np.ndarray:
        return self.backend.d2h(self)

    def free(self) -> None:
        self.backend.free(self)


# ---- runner ------------------------------------------------------------------------------------------------
def _np_dtype(trt_dtype) -> np.dtype:
    if trt_dtype == trt.DataType.FLOAT:
        return np.dtype(np.float32)
    if trt_dtype == trt.DataType.HALF:
        return np.dtype(np.float16)
    raise ModelFileError(f"engine tensor type {trt_dtype} is not supported; rawdenoise engines take float32 or float16 I/O")


class TrtRunner(Runner):
    name = "tensorrt"

    def __init__(self, source, *, spec: ModelSpec | None = None, device: str | None = None,
                 precision: str | None = None, threads: int | None = None):
        device = device or "cuda"
        kind, _, index = device.partition(":")
        if kind != "cuda":
            raise InputError(f"the TensorRT runtime runs on a CUDA GPU only; device {device!r} is not 'cuda' or 'cuda:N'")
        super().__init__(source, spec=spec, device=device, precision=precision, threads=threads)
        self.device_index = int(index or 0)
        self.engine = None
        self.context = None
        self._lock = threading.Lock()
        self._buffers: OrderedDict[tuple, dict[str, DeviceBuffer]] = OrderedDict()

    # ---- lifecycle ----------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        path = Path(self.source)
        if not path.is_file():
            raise ModelFileError(f"engine file {path} does not exist")
        if self.spec is None:
            self.spec = tb.read_sidecar(path)
        info = tb.build_info(self.spec)
        try:
            gpu = tb.detect_gpu(self.device_index)
        except (MissingDependencyError, InputError):
            gpu = None
        problem = tb.compatibility_problem(info, trt.__version__, gpu)
        if problem:
            raise ModelFileError(f"{path.name} cannot run here: {problem}; TensorRT engines are tied to one "
                                 f"TensorRT version and GPU; {tb.rebuild_hint(path, info)}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelFileError(
                f"TensorRT {trt.__version__} could not load {path.name}: it is corrupt or was built for another "
                f"TensorRT version or GPU; {tb.rebuild_hint(path, info)}"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        declared = [i.name for i in self.spec.separate_inputs]
        image = [n for n in inputs if n not in declared]
        if len(image) != 1 or sorted(inputs) != sorted(image + declared) or not outputs:
            raise ModelFileError(f"{path.name} has inputs {inputs} and outputs {outputs}; its manifest declares "
                                 f"extra inputs {declared}, and every input but the image must be declared")
        self._in, self._out = image[0], outputs[0]
        self._extra = declared
        self._dtypes = {n: _np_dtype(self.engine.get_tensor_dtype(n)) for n in [self._in, *declared, self._out]}
        lo, opt, hi = (tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(self._in, 0))
        self.profile = tb.Profile(lo, opt, hi)
        self.context = self.engine.create_execution_context()
        self._cuda = cuda_backend(self.device_index)

    def deactivate_impl(self) -> None:
        for bufs in self._buffers.values():
            for b in bufs.values():
                b.free()
        self._buffers.clear()
        self.context = None
        self.engine = None

    # ---- inference ----------------------------------------------------------------------------------
    def _buffers_for(self, shapes: dict[str, tuple]) -> dict[str, DeviceBuffer]:
        """Device buffers for the inputs of these shapes and the output they give, reused per shape set."""
        key = tuple(sorted(shapes.items()))
        if key in self._buffers:
            self._buffers.move_to_end(key)
            return self._buffers[key]
        for name, shape in shapes.items():
            if not self.context.set_input_shape(name, shape):
                raise InputError(f"TensorRT rejected input {name!r} of shape {shape} (profile {self.profile.to_dict()})")
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self._out))
        bufs = {n: self._cuda.alloc(shape, self._dtypes[n]) for n, shape in shapes.items()}
        bufs[self._out] = self._cuda.alloc(out_shape, self._dtypes[self._out])
        self._buffers[key] = bufs
        while len(self._buffers) > _KEEP_SHAPES:
            _, old = self._buffers.popitem(last=False)
            for b in old.values():
                b.free()
        return bufs

    def _run_chunk(self, x: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        shape = tuple(int(d) for d in x.shape)
        if not self.profile.contains(shape):
            raise InputError(
                f"batch shape {shape} is outside this engine's profile min {self.profile.min} max {self.profile.max}; "
                f"use tiles of {self.profile.opt[2]} x {self.profile.opt[3]} or rebuild with python -m converters.onnx2trt "
                f"--min-shape/--opt-shape/--max-shape"
            )
        host = {self._in: x, **inputs}
        bufs = self._buffers_for({n: tuple(int(d) for d in a.shape) for n, a in host.items()})
        for name, arr in host.items():
            self.context.set_input_shape(name, arr.shape)
            self.context.set_tensor_address(name, bufs[name].ptr)
            bufs[name].copy_from_host(arr.astype(self._dtypes[name], copy=False))  # FP16 engines take half I/O
        self.context.set_tensor_address(self._out, bufs[self._out].ptr)
        if not self.context.execute_async_v3(self._cuda.stream_handle):
            raise InputError(f"TensorRT failed to run a batch of shape {shape}")
        return bufs[self._out].copy_to_host().astype(np.float32, copy=False)

    def infer_impl(self, batch: np.ndarray, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        max_n = self.profile.max[0]
        inputs = inputs or {}
        with self._lock:
            if batch.shape[0] <= max_n:
                return self._run_chunk(batch, inputs)
            return np.concatenate([self._run_chunk(batch[i:i + max_n], {n: a[i:i + max_n] for n, a in inputs.items()})
                                   for i in range(0, batch.shape[0], max_n)])

    # ---- shape information ----------------------------------------------------------------------------
    def static_hw(self) -> tuple[int, int] | None:
        if self.engine is not None:
            return self.profile.static_hw
        info = tb.build_info(self.spec) if self.spec is not None else None
        return info.profile.static_hw if info else None

    def static_batch(self) -> int | None:
        return None  # the profile admits batch 1..max; Denoiser's last group may be short

    def preferred_batch(self) -> int:
        return self.profile.opt[0] if self.engine is not None else 1

    def io(self) -> dict[str, list[dict[str, Any]]]:
        def desc(name):
            shape = [None if int(d) < 0 else int(d) for d in self.engine.get_tensor_shape(name)]
            return {"name": name, "shape": shape, "dtype": str(_np_dtype(self.engine.get_tensor_dtype(name)))}
        return {"inputs": [desc(n) for n in [self._in, *self._extra]], "outputs": [desc(self._out)]}
