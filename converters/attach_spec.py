"""Make any ONNX file a rawdenoise model: attach the manifest, measuring what the spec leaves out.

    python -m converters.attach_spec MODEL.onnx --spec spec.json -o OUT.onnx [--overwrite]

The network is taken as it is, from any exporter. `multiple`, `receptive_radius` and `tile` are
measured from the graph when the spec omits them (a given value wins). The result is run in ONNX
Runtime on a random non-square input and must return the shape the spec describes; its outputs
must equal the source file's (the graph is not changed, only its metadata).
"""

from __future__ import annotations

from pathlib import Path


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
    return onnx_model.route_main(argv, prog="attach_spec", description=__doc__.split("\n")[0],
                                 source_help="any ONNX file", convert=attach)


if __name__ == "__main__":
    raise SystemExit(main())
