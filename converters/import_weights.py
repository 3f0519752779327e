"""Turn a weight file of any origin into the SDK's `.pt` artifact.

    python -m converters.import_weights SRC --arch NAME -o OUT.pt [--from torch|paddle|tf]

SRC is a PyTorch state_dict (`torch.save`, CUDA-saved files included), a Paddle `.pdparams`, a
TensorFlow checkpoint prefix, a Keras `.h5`/`.weights.h5`/`.keras`, or a dnnlib network pickle.
The origin is detected from the file when `--from` is omitted. Nothing in the file is executed.
The artifact's manifest records the origin (framework, format, file name, sha256) next to the
pre-processing the weights expect (the architecture's manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from rawdenoise.errors import ConversionError, InputError, ModelFileError
from rawdenoise.spec import ModelSpec

from rawdenoise.errors import run_cli
from .tfweights import HDF5_MAGIC, checkpoint_prefix, file_head

FRAMEWORKS = ("torch", "paddle", "tf")


def detect_framework(path) -> str:
    """'torch', 'paddle' or 'tf' from the file's content (suffix only as a tie-breaker)."""
    if checkpoint_prefix(path) is not None:
        return "tf"
    p, head = file_head(path)
    if head == HDF5_MAGIC:
        return "tf"
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if "model.weights.h5" in names:
            return "tf"
    elif head[:1] == b"\x80":
        from rawdenoise.zoo.artifact import pickle_globals

        mods = {n.split(".")[0] for n in pickle_globals(p.read_bytes()) or ()}
        if any(m.startswith("dnnlib") for m in mods):
            return "tf"
        if any(m.startswith("torch") for m in mods) or p.suffix in (".pt", ".pth", ".ckp", ".ckpt"):
            return "torch"
        return "paddle"
    raise ModelFileError(
        f"cannot tell which framework wrote {p}: not a torch file, a .pdparams pickle, a TF checkpoint "
        f"prefix, a Keras HDF5 file or a dnnlib pickle; pass --from torch|paddle|tf"
    )


def source_sha256(path) -> tuple[str, list[str]]:
    """sha256 over the weight file (for a TF checkpoint: its .index and data shards, in name order)."""
    prefix = checkpoint_prefix(path)
    if prefix is not None:
        files = sorted([Path(str(prefix) + ".index")] + list(prefix.parent.glob(prefix.name + ".data-*")))
    else:
        files = [Path(path)]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest(), [f.name for f in files]


def _read_torch(path) -> "OrderedDict[str, np.ndarray]":
    from rawdenoise.zoo.artifact import find_state_dict, safe_torch_load

    state = find_state_dict(safe_torch_load(path), path)
    return OrderedDict((k, v.detach().cpu().float().numpy()) for k, v in state.items())


def read_source(path, framework: str) -> tuple["OrderedDict[str, np.ndarray]", str]:
    """(tensors, format) of `path` read as `framework`."""
    if framework == "torch":
        return _read_torch(path), "torch"
    if framework == "paddle":
        from .pdparams import read_pdparams

        return read_pdparams(path), "pdparams"
    if framework == "tf":
        from .tfweights import read_tf_weights
        from .weightmap import normalise_tf_names

        tensors, kind = read_tf_weights(path)
        return OrderedDict(normalise_tf_names(tensors)), kind
    raise InputError(f"--from {framework!r} is not one of {', '.join(FRAMEWORKS)}")


def convert(src, arch: str, out, *, framework: str | None = None, arch_kwargs: dict | None = None,
            overwrite: bool = True) -> ModelSpec:
    """Read `src`, map it strictly onto architecture `arch`, write the `.pt` artifact; returns its manifest."""
    import torch

    from rawdenoise import zoo

    from .weightmap import apply_map, build_map, drop_training_only

    fw = framework or detect_framework(src)
    if fw not in FRAMEWORKS:
        raise InputError(f"--from {fw!r} is not one of {', '.join(FRAMEWORKS)}")
    module = zoo.create(arch, **(arch_kwargs or {}))
    tensors, kind = read_source(src, fw)
    tensors, dropped = drop_training_only(module, tensors)
    entries = build_map(module, fw, arch)
    targets = module.state_dict()
    mapped = apply_map(entries, tensors, {k: tuple(v.shape) for k, v in targets.items()}, fw)
    state = {k: (torch.from_numpy(mapped[k]).to(v.dtype) if k in mapped else v) for k, v in targets.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConversionError(f"mapped weights do not load into {arch!r}: {str(e)[:300]}") from None
    sha, files = source_sha256(src)
    spec = zoo.default_spec(arch, **(arch_kwargs or {}))
    origin = {"framework": fw, "format": kind, "source_file": Path(src).name, "sha256": sha, "files": files,
              "arch": arch}
    spec = spec.replace(origin=origin)
    if dropped:
        note = f"{sum(dropped.values())} training-only tensors of {Path(src).name} not used at inference: " + \
            ", ".join(f"{group} ({n})" for group, n in dropped.items())
        spec = spec.replace(notes={**spec.notes, "dropped_on_import": note})
    return zoo.save(module.eval(), out, spec, overwrite=overwrite)


def build_parser(prog: str, framework: str | None = None) -> argparse.ArgumentParser:
    what = {"paddle": "a Paddle .pdparams file", "tf": "a TF checkpoint prefix, Keras .h5/.keras or dnnlib pickle",
            None: "a weight file of any supported origin"}[framework]
    ap = argparse.ArgumentParser(prog=prog, description=f"Convert {what} into a rawdenoise .pt artifact.")
    ap.add_argument("src", help="source weights")
    ap.add_argument("--arch", required=True,
                    help="zoo architecture the weights belong to (e.g. pmrid, n2n, n2n_paddle)")
    ap.add_argument("-o", "--output", required=True, help="output .pt artifact")
    if framework is None:
        ap.add_argument("--from", dest="framework", choices=FRAMEWORKS, default=None,
                        help="origin framework (detected from the file when omitted)")
    ap.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=True,
                    help="replace an existing output file")
    return ap


def run(argv, prog: str, framework: str | None = None) -> int:
    args = build_parser(prog, framework).parse_args(argv)

    def body() -> int:
        spec = convert(args.src, args.arch, args.output, framework=framework or args.framework,
                       overwrite=args.overwrite)
        o = spec.origin
        print(f"{args.output}: {args.arch} from {o['framework']} ({o['format']}) {o['source_file']} "
              f"sha256 {o['sha256'][:12]}; input {spec.layout} scale {spec.scale:g} offset {spec.offset:g}"
              f"{' k-sigma' if spec.ksigma else ''}, multiple {spec.multiple}")
        return 0

    return run_cli(body, prog)


def main(argv: list[str] | None = None) -> int:
    return run(argv, "import_weights")


if __name__ == "__main__":
    raise SystemExit(main())
