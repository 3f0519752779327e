"""PyTorch runner: CPU or CUDA, fp16 on CUDA, optional channels_last, inference_mode."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rawdenoise.errors import InputError
from rawdenoise.spec import ModelSpec

from .base import Runner


class TorchRunner(Runner):
    """Runs a `.pt` artifact, or a torch.nn.Module given with its ModelSpec."""

    name = "torch"

    def __init__(self, source: Any, *, spec: ModelSpec | None = None, device: str | None = None,
                 precision: str | None = None, threads: int | None = None, channels_last: bool = False):
        device = device or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but torch sees no CUDA GPU; use device='cpu'")
        if precision not in (None, "fp32", "fp16"):
            raise InputError(f"torch runner precision {precision!r} is not one of fp32, fp16")
        if precision == "fp16" and not device.startswith("cuda"):
            raise InputError("fp16 needs a CUDA device (CPU half-precision convolutions are slow and inexact); use fp32")
        if isinstance(source, torch.nn.Module) and spec is None:
            raise InputError("a torch module needs its ModelSpec: TorchRunner(module, spec=...)")
        super().__init__(source, spec=spec, device=device, precision=precision, threads=threads)
        self.channels_last = channels_last
        self.module: torch.nn.Module | None = None

    def activate_impl(self) -> None:
        if isinstance(self.source, torch.nn.Module):
            module = self.source
        else:
            from rawdenoise.zoo import load

            module, spec = load(self.source)
            self.spec = self.spec or spec
        if self.threads:
            torch.set_num_threads(int(self.threads))
        precision = self.precision or "fp32"
        self.precision = precision
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        module = module.eval().to(self.device, self._dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module

    def infer_impl(self, batch: np.ndarray, inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, self._dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # extra inputs follow the image as positional arguments, in the manifest's order
        extra = [torch.from_numpy(inputs[i.name]).to(self.device, self._dtype) for i in self.spec.separate_inputs] \
            if inputs else []
        with torch.inference_mode():
            y = self.module(x, *extra)
        return y.float().cpu().contiguous().numpy()

    def deactivate_impl(self) -> None:
        self.module = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def precisions(self) -> tuple[str, ...]:
        return ("fp32", "fp16") if self.device.startswith("cuda") else ("fp32",)

    def preferred_batch(self) -> int:
        return 1 if self.device == "cpu" else 4

    def io(self) -> dict[str, list[dict[str, Any]]]:
        s = self.spec
        extra = [{"name": i.name, "shape": [None, i.channels] + ([None, None] if i.stride else []), "dtype": "float32"}
                 for i in s.separate_inputs]
        return {"inputs": [{"name": "input", "shape": [None, s.in_channels, None, None], "dtype": "float32"}] + extra,
                "outputs": [{"name": "output", "shape": [None, s.out_channels, None, None], "dtype": "float32"}]}
