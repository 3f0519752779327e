"""The runner contract shared by every back end.

A runner is built once per model file and reused for every call: `activate()` loads the model
(session, engine, module), `infer(batch)` maps float32 NCHW to float32 NCHW, `deactivate()`
releases it; it is a context manager. The base class validates what goes in and out and records
timing; back ends implement the `*_impl` hooks.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rawdenoise.errors import InputError
from rawdenoise.spec import ModelSpec


class Runner:
    name = "base"

    def __init__(self, source: Any, *, spec: ModelSpec | None = None, device: str | None = None,
                 precision: str | None = None, threads: int | None = None):
        self.source = source
        self.spec: ModelSpec | None = spec
        self.device = device or "cpu"
        self.precision = precision
        self.threads = threads
        self.is_active = False
        self.last_inference_time: float | None = None
        self.total_inference_time = 0.0
        self.calls = 0

    # ---- lifecycle ------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
            if self.spec is None:
                raise AssertionError(f"{type(self).__name__}.activate_impl did not set a spec")
            if self.precision is None:
                self.precision = self.spec.precision
            elif self.precision not in self.precisions():
                wanted, self.precision = self.precision, None
                self.deactivate_impl()
                raise InputError(
                    f"the {self.name} runtime cannot run {self.source!r} at precision {wanted}: the model is "
                    f"{self.spec.precision} and this runner gives {', '.join(self.precisions())}; load a model "
                    f"file of that precision (python -m converters.quantize makes an INT8 one)")
        return self

    def precisions(self) -> tuple[str, ...]:
        """The precisions this runner can run the loaded model at (the file's own, unless it converts)."""
        return (self.spec.precision,)

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # ---- inference ------------------------------------------------------------------------
    def infer(self, batch: np.ndarray, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """float32 (N, C, H, W) -> float32 (N, C_out, H, W). Thread-safe for concurrent calls.

        `inputs`: the model's extra inputs by name (every one its manifest declares), each of the
        shape `ExtraInput.shape(N, H, W)`.
        """
        if not self.is_active:
            raise InputError(f"{self.name} runner is not active; call activate() or use it as a context manager")
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            raise InputError(f"infer expects a 4-D numpy array (N, C, H, W), got {getattr(batch, 'shape', type(batch))}")
        if batch.shape[1] != self.spec.data_channels:
            raise InputError(f"model takes {self.spec.data_channels} image channels, batch has {batch.shape[1]}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        inputs = self._check_inputs(batch.shape, inputs or {})
        concat = [inputs.pop(i.name) for i in self.spec.inputs if i.concat]
        if concat:  # a model exported with one input takes these after the image's channels
            batch = np.concatenate([batch] + concat, axis=1)
        t0 = time.perf_counter()
        out = self.infer_impl(batch, inputs) if inputs else self.infer_impl(batch)
        dt = time.perf_counter() - t0
        self.last_inference_time = dt
        self.total_inference_time += dt
        self.calls += 1
        return out

    def _check_inputs(self, shape, inputs: dict) -> dict[str, np.ndarray]:
        declared = self.spec.inputs
        if set(inputs) != {i.name for i in declared}:
            raise InputError(f"this model's extra inputs are {[i.name for i in declared]}, got {sorted(inputs)}")
        n, _, h, w = shape
        out = {}
        for inp in declared:
            a = np.ascontiguousarray(inputs[inp.name], dtype=np.float32)
            if a.shape != inp.shape(n, h, w):
                raise InputError(f"input {inp.name!r} must have shape {inp.shape(n, h, w)} for a batch of "
                                 f"{tuple(shape)}, got {a.shape}")
            out[inp.name] = a
        return out

    @property
    def dynamic_shapes(self) -> bool:
        """True when the runner accepts any N/H/W (within its profile)."""
        return self.static_hw() is None

    def static_hw(self) -> tuple[int, int] | None:
        """The fixed (H, W) the model was built for, or None when H and W are dynamic."""
        return None

    def preferred_batch(self) -> int:
        return 1 if self.device == "cpu" else 4

    def io(self) -> dict[str, list[dict[str, Any]]]:
        """Names, shapes (None for dynamic) and dtypes of the model's inputs and outputs."""
        return {"inputs": [], "outputs": []}

    # ---- hooks ----------------------------------------------------------------------------
    def activate_impl(self) -> None:
        raise NotImplementedError

    def infer_impl(self, batch: np.ndarray, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """`inputs` holds the checked extra inputs; it is passed only to models that declare some."""
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.source!r} device={self.device} precision={self.precision}>"
