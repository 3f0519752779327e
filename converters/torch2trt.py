"""Build a TensorRT engine from a rawdenoise .pt artifact (torch -> ONNX -> TensorRT in one step).

python -m converters.torch2trt MODEL.pt -o MODEL.engine [onnx2trt options] [--opset N] [--keep-onnx FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from runtimes import trt_engine as tb
from rawdenoise.errors import run_cli
from .onnx2trt import BuildOptions, BuildResult, add_build_arguments, build_engine, options_from_args, report


def torch_to_engine(src_pt, output, opts: BuildOptions | None = None, *, opset: int | None = None,
                    keep_onnx=None, trt=None) -> BuildResult:
    """Export `src_pt` to ONNX (parity-checked against torch), then build the engine from it."""
    from .torch2onnx import export_artifact  # noqa: PLC0415

    trt = trt or tb.import_tensorrt()  # fail before the export when TensorRT is missing
    with tempfile.TemporaryDirectory(prefix="rawdenoise-t2t-") as tmpd:
        onnx_path = Path(keep_onnx) if keep_onnx else Path(tmpd) / (Path(src_pt).stem + ".onnx")
        export_artifact(src_pt, onnx_path, opset=opset)
        return build_engine(onnx_path, output, opts, trt=trt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.torch2trt", description=__doc__.split("\n")[0])
    p.add_argument("model", help="rawdenoise .pt artifact")
    add_build_arguments(p)
    p.add_argument("--opset", type=int, help="ONNX opset of the intermediate model")
    p.add_argument("--keep-onnx", metavar="FILE", help="also keep the intermediate ONNX model here")
    args = p.parse_args(argv)

    def body() -> int:
        tb.import_tensorrt()
        result = torch_to_engine(args.model, args.output, options_from_args(args), opset=args.opset,
                                 keep_onnx=args.keep_onnx)
        print(report(result))
        return 0

    return run_cli(body, "torch2trt")


if __name__ == "__main__":
    sys.exit(main())
