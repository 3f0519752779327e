"""Multiply-add count of an ONNX model's convolutions at a given input size (FLOPs = 2 x MACs)."""

from __future__ import annotations

import numpy as np


def conv_flops(onnx_path, n: int, c: int, h: int, w: int) -> float:
    """FLOPs of every Conv/ConvTranspose for an (n, c, h, w) input, from ONNX shape inference."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (n, c, h, w)):
        d.ClearField("dim_param")
        d.dim_value = v
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0.0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        wshape = inits.get(node.input[1])
        if node.op_type == "Conv":
            out = shapes[node.output[0]]  # N, Cout, H, W
            cout, cin_g, kh, kw = wshape
            total += 2.0 * out[0] * cout * out[2] * out[3] * cin_g * kh * kw
        else:
            inp = shapes[node.input[0]]  # N, Cin, H, W
            cin, cout_g, kh, kw = wshape
            total += 2.0 * inp[0] * cin * inp[2] * inp[3] * cout_g * kh * kw
    return total


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best single-precision GEMM rate of numpy's BLAS and of torch (oneDNN/MKL) on this machine."""
    import time

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    rates = {}
    best = float("inf")
    a @ b
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    rates["numpy"] = 2 * n**3 / best / 1e9
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        torch.mm(ta, tb)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(ta, tb)
            best = min(best, time.perf_counter() - t0)
        rates["torch"] = 2 * n**3 / best / 1e9
    except ImportError:
        pass
    return rates
