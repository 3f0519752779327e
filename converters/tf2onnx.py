"""Make a TensorFlow/Keras network a rawdenoise model: a SavedModel or a `.keras` file -> ONNX with the manifest.

    python -m converters.tf2onnx saved_model_dir/ --spec spec.json -o mynet.onnx [--opset 17] [--overwrite]
    python -m converters.tf2onnx model.keras      --spec spec.json -o mynet.onnx

A SavedModel (`model.export(dir)`, `tf.saved_model.save`) is converted through its serving
signature. A Keras 3 `.keras` file is loaded with `safe_mode=True` (nothing in it is executed: a
Lambda layer's bytecode is refused, and custom classes are never imported) and exported to a
temporary SavedModel first. Every 4-D input and output is an NHWC map in TensorFlow and becomes
NCHW in the ONNX file (tf2onnx folds the transposes into the graph); (N, C) vector inputs stay as
they are, and N/H/W stay dynamic. ONNX inputs are named like the signature's arguments, which for
Keras are the `keras.Input(name=...)` names, so the spec's extra `inputs` use those names; the
first output (in name order: Keras's `output_0`) is the denoised image. The manifest's missing
`multiple`/`receptive_radius`/`tile` are measured from the graph, and the file is written only if
ONNX Runtime agrees with TensorFlow on a random non-square input. A SavedModel is a TensorFlow
program, and that check runs it: convert only SavedModels you would run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rawdenoise.errors import ConversionError, InputError, ModelFileError, missing

from . import onnx_model

DEFAULT_OPSET = 17
MIN_OPSET = 11
# Keras releases before 3.14 have known ways around safe_mode (CVE-2025-1550, CVE-2025-8747, CVE-2026-1462)
MIN_SAFE_KERAS = "3.14"
SIGNATURE = "serving_default"


# ---- what the source is ------------------------------------------------------------------------
def source_format(src) -> str:
    """'saved_model' for a folder with saved_model.pb, 'keras' for a Keras 3 .keras archive."""
    path = Path(src)
    if not path.exists():
        raise InputError(f"model {path} does not exist; pass a SavedModel folder or a .keras file")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise InputError(f"folder {path} has no saved_model.pb, so it is not a SavedModel; in Keras write one "
                         f"with model.export('{path.name}'), in TensorFlow with tf.saved_model.save")
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        return "keras"
    hint = " (a legacy HDF5 model: load it in Keras and model.save('model.keras'), or model.export(dir))" \
        if path.suffix in (".h5", ".hdf5") else ""
    raise InputError(f"{path} is neither a SavedModel folder (with saved_model.pb) nor a Keras 3 .keras file{hint}; "
                     f"save the network with model.export('dir') or model.save('model.keras')")


def source_sha256(path) -> str:
    """sha256 of a file, or of a folder's files (relative path and contents, in path order)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        if f != path:
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---- frameworks (imported here only) -------------------------------------------------------------
def _imports():
    # TensorFlow's C++ start-up messages would drown the one line a command prints; this only
    # takes effect if TensorFlow is not imported yet, and a value the user set wins
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise missing("tensorflow", "tf", "converting a TensorFlow model") from None
    try:
        # absolute import: the installed tf2onnx package, not this module
        import tf2onnx
        from tf2onnx import convert as tf2onnx_convert, tf_loader
    except ImportError:
        raise missing("tf2onnx", "tf", "converting a TensorFlow model") from None
    return tf, tf2onnx, tf2onnx_convert, tf_loader


@contextlib.contextmanager
def _quiet():
    """Hold back tf2onnx's and TensorFlow's Python log lines (their failures are reported here)."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__


# ---- .keras -> temporary SavedModel ---------------------------------------------------------------
def load_keras(path):
    """A Keras 3 model from a .keras file, loaded safely (no code from the file runs)."""
    import keras
    from packaging.version import Version

    if Version(keras.__version__) < Version(MIN_SAFE_KERAS):
        raise ModelFileError(f"keras {keras.__version__} cannot load {Path(path).name} safely (its safe_mode has known "
                             f"bypasses); upgrade with pip install 'keras>={MIN_SAFE_KERAS}', or convert a SavedModel")
    try:
        return keras.models.load_model(str(path), safe_mode=True, compile=False)
    except Exception as e:  # Keras raises ValueError/TypeError with long multi-part messages
        text = " ".join(str(e).split())
        if "Could not locate class" in text:
            name = text.split("Could not locate class", 1)[1].split("'")[1]
            raise ModelFileError(
                f"{Path(path).name} uses the custom class {name!r}, whose code is not in the file; this converter "
                f"never imports code for a model file. From your own code, export a SavedModel "
                f"(model.export('saved_model_dir')) and convert that folder") from None
        if "Lambda" in text and "safe_mode" in text:
            raise ModelFileError(
                f"{Path(path).name} has a Lambda layer holding Python bytecode, which safe loading refuses (it could "
                f"run anything); from your own code, export a SavedModel (model.export('saved_model_dir')) and "
                f"convert that folder") from None
        raise ModelFileError(f"{Path(path).name} cannot be loaded by Keras ({text[:300]})") from None


def export_keras(model, folder) -> None:
    """Write `model` as a SavedModel whose serving signature leaves N, H and W free."""
    import keras
    import tensorflow as tf

    def spec(t):
        shape = tuple(t.shape)
        # NHWC maps get free N/H/W (a model built for one size still runs on any, if it is convolutional)
        free = (None, None, None, shape[-1]) if len(shape) == 4 else (None,) + shape[1:]
        return tf.TensorSpec(free, t.dtype, name=t.name)

    try:
        signature = [keras.tree.map_structure(spec, model.input)]
        with _quiet():
            model.export(str(folder), verbose=False, input_signature=signature)
    except Exception as e:
        raise ConversionError(f"Keras cannot export the model with free batch, height and width "
                              f"({_first_line(e)}); build it on keras.Input((None, None, C))") from None


# ---- the serving signature -----------------------------------------------------------------------
def _io_specs(func) -> tuple[dict[str, Any], dict[str, Any]]:
    """name -> TensorSpec of a signature's inputs and outputs."""
    args, kwargs = func.structured_input_signature
    inputs = dict(kwargs)
    for i, a in enumerate(args):
        inputs[getattr(a, "name", None) or f"args_{i}"] = a
    outputs = func.structured_outputs
    if not isinstance(outputs, Mapping):
        outputs = {"output_0": outputs}
    return inputs, dict(outputs)


def _dims(spec) -> list | None:
    return None if spec.shape.rank is None else spec.shape.as_list()


def check_signature(inputs: Mapping[str, Any], outputs: Mapping[str, Any],
                    given: Mapping[str, Any]) -> tuple[str, dict[str, int | None]]:
    """Check the signature against the spec before converting; returns the image input's name and
    every extra input's stride."""
    draft = onnx_model.draft_spec(given)
    image, declared = onnx_model.split_inputs(draft, sorted(inputs))
    for name, spec in inputs.items():
        dims = _dims(spec)
        stride = 1 if name == image else declared[name].stride
        if dims is None or len(dims) not in (2, 4) or (len(dims) == 4) != (stride is not None):
            want = "(N, H, W, C) NHWC map" if stride is not None else "(N, C) vector (stride null in the spec)"
            raise InputError(f"input {name!r} has shape {None if dims is None else tuple(dims)}, but the spec takes "
                             f"it as a {want}; fix the spec's 'inputs' entry or the network")
        fixed = [("N", "H", "W")[k] for k, d in enumerate(dims[:3 if len(dims) == 4 else 1]) if d is not None]
        if fixed:
            raise InputError(
                f"the serving signature fixes {', '.join(fixed)} of input {name!r} (shape {tuple(dims)}); they must be "
                f"free so that any frame and tile size runs: re-export with model.export(dir, input_signature="
                f"[tf.TensorSpec((None, None, None, C), name=...)]) or build the model on keras.Input((None, None, C))")
    channels = _dims(inputs[image])[-1]
    if channels is None:
        raise InputError(f"the network's image input {image!r} has no fixed channel count (shape "
                         f"{tuple(_dims(inputs[image]))}); export it with the channel dimension set")
    if channels != draft.in_channels:
        raise InputError(f"the network's image input {image!r} has {channels} channels, but the spec's layout "
                         f"{draft.layout!r} takes {draft.in_channels}; {channels} channels fit "
                         f"{onnx_model.layouts_for(channels)}")
    for name, spec in outputs.items():
        dims = _dims(spec)
        if dims is None or len(dims) != 4:
            raise InputError(f"output {name!r} has shape {None if dims is None else tuple(dims)}; the first output "
                             f"must be the denoised NHWC image at the input's size")
        break  # the SDK reads the first output only
    return image, {n: i.stride for n, i in declared.items()}


# ---- conversion ------------------------------------------------------------------------------------
def _unconverted_ops(model) -> list[str]:
    """Op types tf2onnx left as TensorFlow ops (it keeps going past ops it cannot map)."""
    import onnx

    return sorted({n.op_type for n in model.graph.node
                   if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})


def _name_dims(model, image: str, strides: Mapping[str, int | None]) -> None:
    """Readable symbolic dims: N on every input and output, H and W on the image, the stride-1 maps
    and the first output (the denoised image)."""
    full_size = {image, model.graph.output[0].name} | {n for n, s in strides.items() if s == 1}
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            continue
        dims[0].dim_param = "N"
        if len(dims) == 4 and vi.name in full_size:
            for d, label in ((dims[2], "H"), (dims[3], "W")):
                if not d.HasField("dim_value"):
                    d.dim_param = label


def saved_model_to_onnx(folder, given: Mapping[str, Any], *, opset: int = DEFAULT_OPSET):
    """ONNX ModelProto (NCHW I/O) of a SavedModel's serving signature, and the reference callable that
    runs the same signature in TensorFlow on NCHW inputs."""
    tf, _, tf2onnx_convert, tf_loader = _imports()
    try:
        with _quiet(), tf.device("/cpu:0"):
            graph_def, in_names, out_names, func, imported, _, renames = tf_loader.from_saved_model(
                str(folder), None, None, tag=["serve"], signatures=[SIGNATURE], return_concrete_func=True,
                return_initialized_tables=True, return_tensors_to_rename=True)
    except Exception as e:
        raise ModelFileError(f"TensorFlow cannot load the '{SIGNATURE}' signature of SavedModel {Path(folder).name} "
                             f"({_first_line(e)}); export it with model.export(dir) or tf.saved_model.save(obj, dir, "
                             f"signatures=...)") from None
    inputs, outputs = _io_specs(func)
    image, strides = check_signature(inputs, outputs, given)
    # tf2onnx names the ONNX inputs/outputs after the signature's structured names
    onnx_name = {t: renames.get(t, t) for t in in_names + out_names}
    nchw_in = [t for t in in_names if onnx_name[t] in inputs and len(_dims(inputs[onnx_name[t]])) == 4]
    nchw_out = [t for t in out_names if onnx_name[t] in outputs and len(_dims(outputs[onnx_name[t]]) or ()) == 4]
    try:
        with _quiet(), tf.device("/cpu:0"):
            model, _ = tf2onnx_convert.from_graph_def(graph_def, name=Path(folder).name, input_names=in_names,
                                                      output_names=out_names, opset=opset, inputs_as_nchw=nchw_in,
                                                      outputs_as_nchw=nchw_out, tensors_to_rename=renames)
    except Exception as e:
        raise ConversionError(f"tf2onnx cannot convert the SavedModel ({_first_line(e)})") from None
    left = _unconverted_ops(model)
    if left:
        raise ConversionError(f"tf2onnx has no ONNX opset-{opset} equivalent for the TensorFlow ops {left}; "
                              f"try another --opset, or build the network from other ops")
    _name_dims(model, image, strides)
    first_out = model.graph.output[0].name

    # `imported` owns the variables the signature reads: the default argument keeps it alive
    def reference(feed: Mapping[str, np.ndarray], _owner=imported) -> np.ndarray:
        nhwc = {k: tf.constant(v.transpose(0, 2, 3, 1) if v.ndim == 4 else v) for k, v in feed.items()}
        result = func(**nhwc)
        y = (result[first_out] if first_out in result else result[sorted(result)[0]]).numpy()
        return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y

    return model, reference


def _versions(fmt: str) -> dict[str, str]:
    tf, tf2onnx, _, _ = _imports()
    out = {"tf2onnx": tf2onnx.__version__, "tensorflow": tf.__version__}
    if fmt == "keras":
        import keras

        out["keras"] = keras.__version__
    return out


def check_opset(opset) -> int:
    """`opset` if this tf2onnx can write it."""
    from tf2onnx.constants import OPSET_TO_IR_VERSION  # the opsets this tf2onnx can write

    top = max(OPSET_TO_IR_VERSION)
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= top:
        raise InputError(f"opset {opset!r} is not supported here; use {MIN_OPSET}..{top} (default {DEFAULT_OPSET})")
    return opset


def convert(src, spec, dst, *, opset: int = DEFAULT_OPSET, overwrite: bool = True):
    """Convert a SavedModel folder or a .keras file to `dst` (.onnx) with the manifest; returns
    (ModelSpec, parity differences). `spec`: a spec.json path or a mapping of ModelSpec fields."""
    onnx_model.check_destination(dst, overwrite)
    given = onnx_model.read_spec_file(spec) if isinstance(spec, (str, os.PathLike)) else onnx_model.check_given(spec)
    fmt = source_format(src)
    _imports()
    opset = check_opset(opset)
    origin = {"framework": "tf", "format": fmt, "source_file": Path(src).name, "sha256": source_sha256(src),
              **_versions(fmt)}
    with tempfile.TemporaryDirectory(prefix="rawdenoise-tf2onnx-") as tmp:
        folder = src
        if fmt == "keras":
            folder = Path(tmp) / "saved_model"
            export_keras(load_keras(src), folder)
        model, reference = saved_model_to_onnx(folder, given, opset=opset)
        return onnx_model.finish(model, given, dst, origin=origin, reference=reference, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    return onnx_model.route_main(argv, prog="tf2onnx", description=__doc__.split("\n")[0],
                                 source_help="a SavedModel folder (model.export(dir), tf.saved_model.save) or a .keras file", convert=convert, opset=DEFAULT_OPSET)


if __name__ == "__main__":
    raise SystemExit(main())
