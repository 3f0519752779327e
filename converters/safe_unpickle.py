"""A restricted unpickler for weight files: numpy arrays and plain containers, nothing else.

Pickle runs whatever callables its stream names. This unpickler resolves only a short allow-list
of globals (numpy's array reconstruction, dtypes, OrderedDict, the bytes codec of protocol 2),
each wrapped so it accepts only the arguments numpy itself writes. Any other global refuses the
whole file before it is called. Callers may add placeholders for specific classes (e.g. the
dnnlib Network state), which are inert classes of this SDK, never the named class.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rawdenoise.errors import ModelFileError, UnsafeFileError


def _reconstruct(cls, shape, dtype_code):
    # numpy writes (ndarray, (0,), b'b'): an empty array whose BUILD sets the real state
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"array reconstruction of {cls!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _dtype(name, align=False, copy=False):
    if not isinstance(name, str):
        raise pickle.UnpicklingError(f"dtype from {type(name).__name__} is not allowed")
    dt = np.dtype(name)
    if dt.kind not in "biufc":
        raise pickle.UnpicklingError(f"dtype {dt} is not a numeric dtype")
    return np.dtype(name, align=bool(align), copy=bool(copy))


def _scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, (bytes, type(None))):
        raise pickle.UnpicklingError("numpy scalar of a non-numeric dtype is not allowed")
    buf = data if data is not None else b"\0" * dtype.itemsize
    return np.frombuffer(buf, dtype=dtype, count=1)[0]


def _encode(text, encoding="utf-8"):
    # protocol 2 stores Python 3 bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return codecs.encode(text, "latin1")


def _ordered_dict(*args):
    if args and not all(isinstance(a, (list, tuple)) for a in args):
        raise pickle.UnpicklingError("OrderedDict from non-sequence arguments is not allowed")
    return collections.OrderedDict(*args)


def _tuple(items=()):
    # Paddle training checkpoints pickle some optimizer entries as tuple(list)
    if not isinstance(items, (list, tuple)):
        raise pickle.UnpicklingError("tuple from a non-sequence is not allowed")
    return tuple(items)


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("collections", "OrderedDict"): _ordered_dict,
    ("_codecs", "encode"): _encode,
    ("builtins", "tuple"): _tuple,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only ALLOWED globals plus the caller's inert `extra` classes."""

    def __init__(self, file, extra: Mapping[tuple[str, str], Any] | None = None):
        super().__init__(file)
        self._allowed = dict(ALLOWED)
        self._allowed.update(extra or {})

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"refused: the pickle names the global {module}.{name}, which a weight file must not "
                f"import or call (only numpy arrays and plain containers are allowed); nothing was executed"
            ) from None

    def persistent_load(self, pid):
        raise UnsafeFileError("refused: the pickle uses persistent ids (a torch/zip file? use --from torch)")


def load_restricted(path, extra: Mapping[tuple[str, str], Any] | None = None, what: str = "weight file"):
    """Unpickle `path` with RestrictedUnpickler; translate failures into SDK errors."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} {path} does not exist")
    data = path.read_bytes()
    if not data.startswith(b"\x80"):
        raise ModelFileError(f"{path} is not a pickle (protocol 2 or newer) {what}")
    if data[1] > pickle.HIGHEST_PROTOCOL:
        raise ModelFileError(f"{path} uses pickle protocol {data[1]}, newer than this Python reads")
    try:
        return RestrictedUnpickler(io.BytesIO(data), extra).load()
    except UnsafeFileError as e:
        raise UnsafeFileError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path} is not a readable {what} (truncated or corrupt?): {str(e)[:200]}") from None
