"""Make any ONNX file a rawdenoise model: attach the manifest, measuring what the spec leaves out.

    python -m converters.attach_spec MODEL.onnx --spec spec.json -o OUT.onnx [--overwrite]

The network is taken as it is, from any exporter. `multiple`, `receptive_radius` and `tile` are
measured from the graph when the spec omits them (a given value wins). The result is run in ONNX
Runtime on a random non-square input and must return the shape the spec describes; its outputs
must equal the source file's (the graph is not changed, only its metadata).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rawdenoise.errors import run_cli

from . import onnx_model


def attach(src, spec, dst, *, overwrite: bool = True):
    """Write `src` with the completed manifest to `dst`; returns (spec, parity differences)."""
    from rawdenoise.fileio import sha256_file

    onnx_model.check_destination(dst, overwrite)
    model = onnx_model.load_onnx(src)
    given = onnx_model.read_spec_file(spec) if isinstance(spec, (str, Path)) else spec
    source = onnx_model.load_onnx(src).SerializeToString()  # the untouched graph: the reference for parity

    def reference(feed):
        import onnxruntime as ort

        sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        return sess.run([sess.get_outputs()[0].name], feed)[0]

    origin = {"framework": "onnx", "format": "onnx", "source_file": Path(src).name, "sha256": sha256_file(src),
              "producer": f"{model.producer_name} {model.producer_version}".strip()}
    return onnx_model.finish(model, given, dst, origin=origin, reference=reference, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.attach_spec", description=__doc__.split("\n")[0])
    p.add_argument("model", help="any ONNX file")
    p.add_argument("--spec", required=True, help="JSON file of ModelSpec fields (layout, scaling, ...)")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)

    def body() -> int:
        spec, diffs = attach(args.model, args.spec, args.output, overwrite=args.overwrite)
        print(onnx_model.describe(spec, diffs, args.output))
        return 0

    return run_cli(body, "attach_spec")


if __name__ == "__main__":
    raise SystemExit(main())
