"""Read TensorFlow-origin weights into name -> numpy arrays, executing nothing from the files.

- TF checkpoints (prefix with `.index` / `.data-*`): tensorflow's checkpoint reader (needs the
  `tf` extra; imported only here, only then).
- Keras `.h5` / `.weights.h5` / `.keras`: read with h5py alone, no tensorflow.
- dnnlib network pickles (NVIDIA's releases, e.g. Noise2Noise): a restricted unpickler maps
  `dnnlib.tflib.network.Network` to an inert placeholder that only keeps the pickled state; the
  state's `build_module_src` is Python source and is never executed, compiled or imported.
"""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from rawdenoise.errors import ModelFileError, missing

from .safe_unpickle import load_restricted

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# ---- TensorFlow checkpoints -------------------------------------------------------------------
def checkpoint_prefix(path) -> Path | None:
    """The checkpoint prefix for `path` (the prefix itself, its .index, or a .data-* shard), else None."""
    p = Path(path)
    s = str(p)
    if s.endswith(".index"):
        prefix = Path(s[: -len(".index")])
    elif ".data-" in p.name:
        prefix = p.with_name(p.name.split(".data-")[0])
    else:
        prefix = p
    return prefix if Path(str(prefix) + ".index").is_file() else None


def read_tf_checkpoint(path) -> "OrderedDict[str, np.ndarray]":
    prefix = checkpoint_prefix(path)
    if prefix is None:
        raise ModelFileError(f"{path} is not a TensorFlow checkpoint (no {path}.index next to it)")
    try:
        import tensorflow as tf
    except ImportError:
        raise missing("tensorflow", "tf", "reading a TensorFlow checkpoint") from None
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        names = sorted(reader.get_variable_to_shape_map())
        return OrderedDict((n, np.asarray(reader.get_tensor(n))) for n in names
                           if n != "_CHECKPOINTABLE_OBJECT_GRAPH")
    except (tf.errors.OpError, ValueError) as e:
        raise ModelFileError(f"{prefix}: unreadable TensorFlow checkpoint: {str(e).splitlines()[0][:200]}") from None


# ---- Keras HDF5 -------------------------------------------------------------------------------
def read_keras_h5(path) -> "OrderedDict[str, np.ndarray]":
    """Every weight dataset of a Keras HDF5 file (optimizer state skipped), keyed by its HDF5 path."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Keras weights file {path} does not exist")
    try:
        import h5py
    except ImportError:
        raise missing("h5py", "tf", "reading Keras .h5 weights") from None
    if zipfile.is_zipfile(path):  # a Keras 3 `.keras` archive holds model.weights.h5
        with zipfile.ZipFile(path) as z:
            if "model.weights.h5" not in z.namelist():
                raise ModelFileError(f"{path} is a zip without model.weights.h5; not a .keras model file")
            source = io.BytesIO(z.read("model.weights.h5"))
    else:
        with open(path, "rb") as f:
            if f.read(8) != HDF5_MAGIC:
                raise ModelFileError(f"{path} is not an HDF5 file (Keras .h5 / .weights.h5)")
        source = str(path)
    out: OrderedDict[str, np.ndarray] = OrderedDict()

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith(("optimizer_weights/", "optimizer/")):
            if obj.dtype.kind in "fiu":
                out[name] = np.asarray(obj[()])

    try:
        with h5py.File(source, "r") as f:
            f.visititems(visit)
    except OSError as e:
        raise ModelFileError(f"{path}: unreadable HDF5 file: {str(e)[:200]}") from None
    if not out:
        raise ModelFileError(f"{path} holds no weight arrays")
    return out


# ---- dnnlib network pickles -------------------------------------------------------------------
class DnnlibNetworkState:
    """Stand-in for dnnlib.tflib.network.Network: records the pickled state, runs nothing."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise ModelFileError(f"dnnlib Network state is a {type(state).__name__}, expected a dict")
        self.state = state


def _reconstructor(cls, base, state):
    # protocols 0/1 build objects through copyreg._reconstructor(cls, object, None)
    if cls is not DnnlibNetworkState or base is not object or state is not None:
        raise ModelFileError("refused: copyreg._reconstructor is allowed only for the dnnlib Network state")
    return object.__new__(DnnlibNetworkState)


_DNNLIB_EXTRA = {
    ("dnnlib.tflib.network", "Network"): DnnlibNetworkState,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
}


def read_dnnlib_pickle(path) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """(variables, info) of a dnnlib network pickle; info has name, build_func_name, static_kwargs."""
    path = Path(path)
    obj = load_restricted(path, extra=_DNNLIB_EXTRA, what="dnnlib network pickle")
    nets = obj if isinstance(obj, (tuple, list)) else (obj,)
    nets = [n for n in nets if isinstance(n, DnnlibNetworkState)]
    if not nets:
        raise ModelFileError(f"{path} holds no dnnlib.tflib.network.Network (got {type(obj).__name__})")
    # training snapshots pickle several networks; the last one is the averaged network for inference
    state = getattr(nets[-1], "state", None)
    if state is None or state.get("version") != 2 or not isinstance(state.get("variables"), (list, tuple)):
        raise ModelFileError(f"{path}: dnnlib Network state must be version 2 with a 'variables' list")
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for item in state["variables"]:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ModelFileError(f"{path}: a dnnlib variable is not a (name, array) pair")
        name, value = item
        value = np.asarray(value) if isinstance(value, np.generic) else value
        if not isinstance(value, np.ndarray):
            raise ModelFileError(f"{path}: dnnlib variable {name!r} is a {type(value).__name__}, not an array")
        out[name] = value
    info = {k: state.get(k) for k in ("name", "build_func_name", "static_kwargs")}
    return out, info


# ---- detection --------------------------------------------------------------------------------
def file_head(path) -> tuple[Path, bytes]:
    """The weight file and its first 8 bytes; a missing file (that is no checkpoint prefix either) is an error."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"weight file {path} does not exist (nor {path}.index for a TF checkpoint prefix)")
    with open(p, "rb") as f:
        return p, f.read(8)


def tf_format(path) -> str:
    """'checkpoint', 'h5' or 'dnnlib' for a TF-origin weight file, else ModelFileError."""
    if checkpoint_prefix(path) is not None:
        return "checkpoint"
    p, head = file_head(path)
    if head == HDF5_MAGIC or (zipfile.is_zipfile(p) and p.suffix == ".keras"):
        return "h5"
    if head[:1] == b"\x80":
        return "dnnlib"
    raise ModelFileError(f"{path} is not a TF checkpoint prefix, a Keras .h5/.keras file or a dnnlib pickle")


def read_tf_weights(path) -> tuple["OrderedDict[str, np.ndarray]", str]:
    """(tensors, format) for any supported TF-origin weight file."""
    kind = tf_format(path)
    if kind == "checkpoint":
        return read_tf_checkpoint(path), kind
    if kind == "h5":
        return read_keras_h5(path), kind
    return read_dnnlib_pickle(path)[0], kind
