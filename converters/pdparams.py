"""Read PaddlePaddle `.pdparams` state dicts without paddle and without running pickle code.

A training checkpoint that nests the state dict (`{"state_dict": ..., "optimizer": ...}`) is read
for its state dict only.

`paddle.save(layer.state_dict(), path)` writes a pickle (protocol 2-4) of name -> numpy array plus
bookkeeping keys: `StructuredToParameterName@@` (structured name -> internal name, not a weight)
and, for protocols 2/3 with arrays over 1 GiB, the split form `name@@.0`, `name@@.1`, ... with
`UnpackBigParamInfor@@` = {name: {"OriginShape": shape, "slices": [part names]}}.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from rawdenoise.errors import ModelFileError

from .safe_unpickle import load_restricted

STRUCTURED_KEY = "StructuredToParameterName@@"
BIG_PARAM_KEY = "UnpackBigParamInfor@@"
# training checkpoints (`paddle.save({"iter": ..., "state_dict": ..., "optimizer": ...})`) nest the
# model's parameters under one of these; the rest (optimizer moments, counters) is not the model
CHECKPOINT_KEYS = ("state_dict", "model", "net", "params")


def _join_big_params(obj: dict, path: Path) -> dict:
    info = obj.pop(BIG_PARAM_KEY, None)
    if info is None:
        return obj
    if not isinstance(info, dict):
        raise ModelFileError(f"{path}: '{BIG_PARAM_KEY}' is a {type(info).__name__}, expected a dict")
    for name, entry in info.items():
        try:
            parts, shape = list(entry["slices"]), tuple(int(d) for d in entry["OriginShape"])
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path}: split parameter {name!r} has no valid 'slices'/'OriginShape'") from None
        missing = [p for p in parts if p not in obj]
        if missing:
            raise ModelFileError(f"{path}: split parameter {name!r} lacks its parts {missing[:4]} (truncated file?)")
        flat = np.concatenate([np.asarray(obj.pop(p)).reshape(-1) for p in parts])
        if flat.size != int(np.prod(shape)):
            raise ModelFileError(f"{path}: split parameter {name!r} has {flat.size} values, shape {shape} needs "
                                 f"{int(np.prod(shape))}")
        obj[name] = flat.reshape(shape)
    return obj


def read_pdparams(path) -> "OrderedDict[str, np.ndarray]":
    """name -> numpy array of a `.pdparams` file, in file order; bookkeeping keys removed."""
    path = Path(path)
    obj = load_restricted(path, what=".pdparams file")
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path} holds a {type(obj).__name__}, not a Paddle state dict (name -> array)")
    obj = dict(obj)
    nested = next((k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), dict)), None)
    if nested is not None and not isinstance(obj.get(STRUCTURED_KEY), dict):
        obj = dict(obj[nested])
    obj.pop(STRUCTURED_KEY, None)
    obj = _join_big_params(obj, path)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, value in obj.items():
        if not isinstance(name, str):
            raise ModelFileError(f"{path}: key {name!r} is not a parameter name")
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            value = value[1]  # inside a nested dict paddle.save stores (internal name, array)
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise ModelFileError(f"{path}: entry {name!r} is a {type(value).__name__}, not an array "
                                 f"(an optimizer state or a nested object? pass the model's .pdparams)")
        out[name] = value
    if not out:
        raise ModelFileError(f"{path} holds no parameter arrays")
    return out
