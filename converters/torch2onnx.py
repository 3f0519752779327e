"""Export a rawdenoise `.pt` artifact to ONNX with dynamic N/H/W and the manifest embedded.

    python -m converters.torch2onnx MODEL.pt -o MODEL.onnx [--opset N] [--no-simplify] [--static H W]

The exported file is checked against torch on a random input through ONNX Runtime; a max abs
difference beyond the tolerance fails the command (exit 1) and writes nothing.
"""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

import numpy as np

from rawdenoise.errors import ConversionError, InputError, missing
from rawdenoise.fileio import atomic_output, sha256_file
from rawdenoise.spec import METADATA_KEY, ModelSpec

from rawdenoise.errors import run_cli

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4


def _imports():
    try:
        import onnx
        import onnxruntime  # noqa: F401
        import torch
    except ImportError as e:
        raise missing(e.name or "onnx", "onnx" if "onnx" in (e.name or "onnx") else "torch", "torch2onnx") from None
    return torch, onnx


def _export_bytes(torch, module, spec: ModelSpec, opset: int, static_hw) -> bytes:
    m = spec.multiple
    h, w = static_hw or (4 * m, 6 * m)
    example = torch.rand(1 if static_hw else 2, spec.in_channels, h, w)
    dynamic = None if static_hw else {"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter gives plain Conv/ConvTranspose graphs every ONNX back end takes
        torch.onnx.export(module, (example,), buf, input_names=["input"], output_names=["output"],
                          opset_version=opset, dynamic_axes=dynamic, dynamo=False, do_constant_folding=True)
    return buf.getvalue()


def _simplify(onnx, model):
    try:
        import onnxsim
    except ImportError:
        raise missing("onnxsim", "onnx", "ONNX simplification (or pass --no-simplify)") from None
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ConversionError("onnxsim could not validate the simplified model; retry with --no-simplify")
    return simplified


def parity(module, onnx_bytes: bytes, spec: ModelSpec, static_hw=None, seed: int = 0) -> float:
    """Max abs difference torch vs ONNX Runtime (CPU) on a random input of a non-square size."""
    import onnxruntime as ort
    import torch

    m = spec.multiple
    h, w = static_hw or (3 * m, 5 * m)
    x = np.random.default_rng(seed).random((1 if static_hw else 2, spec.in_channels, h, w), dtype=np.float32)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return float(np.abs(got - ref).max())


def export(src_pt, dst_onnx, *, opset: int | None = None, simplify: bool = True, static_hw=None,
           check: bool = True, atol: float = PARITY_ATOL, overwrite: bool = True) -> float:
    """Export; returns the torch-vs-ORT max abs difference (nan when `check` is False)."""
    torch, onnx = _imports()
    from rawdenoise import zoo

    src_pt = Path(src_pt)
    module, spec = zoo.load(src_pt)
    if static_hw is not None:
        static_hw = tuple(int(v) for v in static_hw)
        if any(v <= 0 or v % spec.multiple for v in static_hw):
            raise InputError(f"--static {static_hw} must be positive multiples of the model's multiple {spec.multiple}")
        spec = spec.replace(tile=static_hw[0] if static_hw[0] == static_hw[1] else spec.tile)
    model = onnx.load_from_string(_export_bytes(torch, module, spec, opset or DEFAULT_OPSET, static_hw))
    if simplify:
        model = _simplify(onnx, model)
    origin = dict(spec.origin)
    origin.setdefault("pt_sha256", sha256_file(src_pt))
    spec = spec.replace(origin=origin)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    diff = float("nan")
    if check:
        diff = parity(module, data, spec, static_hw)
        if not diff <= atol:
            raise ConversionError(f"ONNX output differs from torch by {diff:.3g} (> {atol:g}); nothing was written")
    with atomic_output(dst_onnx, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.torch2onnx", description=__doc__.split("\n")[1])
    p.add_argument("model", help="rawdenoise .pt artifact")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.add_argument("--static", nargs=2, type=int, metavar=("H", "W"), help="fixed input size (batch 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)

    def body() -> int:
        diff = export(args.model, args.output, opset=args.opset, simplify=not args.no_simplify,
                      static_hw=args.static, overwrite=args.overwrite)
        print(f"wrote {args.output}  parity torch vs onnxruntime: max abs diff {diff:.3g} (limit {PARITY_ATOL:g})")
        return 0

    return run_cli(body, "torch2onnx")


if __name__ == "__main__":
    raise SystemExit(main())
