"""Export a torch network to ONNX with the rawdenoise manifest embedded.

    python -m converters.torch2onnx MODEL.pt -o MODEL.onnx [--opset N] [--no-simplify] [--static H W]
    python -m converters.torch2onnx --module mypkg.nets:MyNet [--kwargs JSON] [--weights W.pth] --spec spec.json -o MODEL.onnx

The first form exports a zoo `.pt` artifact; the second any torch.nn.Module of the user's own
code (importing it is the user's choice; the weights file is still read with
`torch.load(weights_only=True)`, so loading it never executes anything). In Python,
`export(module, spec, "mynet.onnx")` takes a module in memory. Either way N/H/W stay dynamic and
the file is checked against torch through ONNX Runtime on a random non-square input: beyond the
tolerance the command fails (exit 1) and writes nothing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rawdenoise.errors import ConversionError, InputError, missing, run_cli
from rawdenoise.fileio import atomic_output, sha256_file
from rawdenoise.spec import ModelSpec

from . import onnx_model

DEFAULT_OPSET = 17
PARITY_ATOL = 1e-4
EXPORTERS = ("auto", "torchscript", "dynamo")


def _imports():
    try:
        import onnx
        import onnxruntime  # noqa: F401
        import torch
    except ImportError as e:
        raise missing(e.name or "onnx", "onnx" if "onnx" in (e.name or "onnx") else "torch", "torch2onnx") from None
    return torch, onnx


# ---- exporting a module ---------------------------------------------------------------------------
def _export_bytes(torch, module, args: tuple, names: list[str], dynamic: dict | None, opset: int,
                  exporter: str) -> bytes:
    """ONNX bytes of `module(*args)`; inputs named `names`, the output "output"."""
    if exporter in ("auto", "torchscript"):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # the TorchScript exporter gives plain Conv/ConvTranspose graphs every ONNX back end takes
                torch.onnx.export(module, args, buf, input_names=names, output_names=["output"],
                                  opset_version=opset, dynamic_axes=dynamic, dynamo=False, do_constant_folding=True)
            return buf.getvalue()
        except Exception as e:  # noqa: BLE001  the exporter raises many types for code it cannot trace
            if exporter == "torchscript":
                raise ConversionError(f"the TorchScript exporter cannot export this module: "
                                      f"{str(e).splitlines()[0][:300]}; try --exporter dynamo") from None
            first_error = str(e).splitlines()[0][:200]
    try:
        from torch.export import Dim

        shapes = None
        if dynamic:
            shapes = tuple({ax: Dim.DYNAMIC for ax in dynamic[n]} for n in names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, input_names=names, output_names=["output"],
                                        opset_version=opset, dynamic_shapes=shapes, dynamo=True, verbose=False)
        return program.model_proto.SerializeToString()
    except Exception as e:  # noqa: BLE001
        before = f" (TorchScript exporter: {first_error})" if exporter == "auto" else ""
        raise ConversionError(f"torch cannot export this module to ONNX: {str(e).splitlines()[0][:300]}{before}") from None


def _simplify(onnx, model, required: bool):
    try:
        import onnxsim
    except ImportError:
        raise missing("onnxsim", "onnx", "ONNX simplification (or pass --no-simplify)") from None
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception:  # noqa: BLE001  onnxsim cannot fold every graph; the plain export is still valid
        ok = False
    if not ok:
        if required:
            raise ConversionError("onnxsim could not validate the simplified model; retry with --no-simplify")
        return model
    return simplified


def _dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    axes = {"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}}
    for i in spec.separate_inputs:
        axes[i.name] = {0: "N"} if i.stride is None else {0: "N", 2: f"H_{i.name}", 3: f"W_{i.name}"}
    return axes


def _forward(torch, module, feed: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    with torch.inference_mode():
        y = module(*(torch.from_numpy(feed[n]) for n in names))
    if not isinstance(y, torch.Tensor):
        raise ConversionError(f"the module returns {type(y).__name__}, not one tensor; wrap it so that forward "
                              f"returns the denoised image only")
    return y.float().numpy()


def export(module, spec, dst, *, opset: int | None = None, exporter: str = "auto", simplify: bool = True,
           overwrite: bool = True, origin: Mapping[str, Any] | None = None) -> tuple[ModelSpec, dict[str, float]]:
    """Export any torch.nn.Module as a rawdenoise ONNX model.

    `spec`: a ModelSpec, a mapping of its fields, or a path to a spec.json; `multiple`,
    `receptive_radius` and `tile` are measured from the graph when omitted. The extra inputs the
    spec declares follow the image as positional arguments of `forward`, in the spec's order.
    Returns the manifest written and the parity figures against torch.
    """
    torch, onnx = _imports()
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"export takes a torch.nn.Module, got {type(module).__name__}; for a .pt artifact use "
                         f"export_artifact(path, dst)")
    if exporter not in EXPORTERS:
        raise InputError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    onnx_model.check_destination(dst, overwrite)
    given = onnx_model.read_spec_file(spec) if isinstance(spec, (str, Path)) else onnx_model.check_given(spec)
    draft = onnx_model.draft_spec(given)
    names = ["input"] + [i.name for i in draft.separate_inputs]
    # an example the network's own grid certainly divides when the spec does not give the multiple
    m = draft.multiple if "multiple" in given else 64
    example = onnx_model.random_inputs(draft.replace(multiple=m, tile=0), "input", batch=1, hw=(3 * m, 5 * m))
    module = module.eval()
    _check_forward(torch, module, example, names, draft)
    opset = max(opset or DEFAULT_OPSET, getattr(module, "min_onnx_opset", 0))
    data = _export_bytes(torch, module, tuple(torch.from_numpy(example[n]) for n in names), names,
                         _dynamic_axes(draft), opset, exporter)
    model = onnx.load_from_string(data)
    if simplify:
        model = _simplify(onnx, model, required=False)
    meta = {"framework": "torch", "format": "module", "torch": torch.__version__,
            "module": f"{type(module).__module__}.{type(module).__qualname__}", **dict(origin or {})}
    return onnx_model.finish(model, given, dst, origin=meta, overwrite=overwrite,
                             reference=lambda feed: _forward(torch, module, feed, names))


def _check_forward(torch, module, example: dict, names: list[str], spec: ModelSpec) -> None:
    """Run the module once on an input of the spec's layout: a channel count or a return value the
    spec contradicts is reported in one line, before the exporter's own errors."""
    x = example["input"]
    try:
        y = _forward(torch, module, example, names)
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001  the user's network raised
        extra = f" and extra inputs {names[1:]}" if len(names) > 1 else ""
        raise ConversionError(f"the module fails on a {tuple(x.shape)} input ({spec.layout} layout, {spec.in_channels} "
                              f"channel(s){extra}): {type(e).__name__}: {str(e).splitlines()[0][:250] if str(e) else ''}; "
                              f"check the spec's layout/in_channels/inputs") from None
    want = (x.shape[0], spec.out_channels) + x.shape[2:]
    if y.shape != want:
        raise ConversionError(f"the module returns {y.shape} for a {tuple(x.shape)} input; the spec "
                              f"({spec.layout}, out_channels {spec.out_channels}) needs {want}")


# ---- the user's own module and weights --------------------------------------------------------------
def import_module_class(target: str):
    """`pkg.mod:Name` or `path/to/file.py:Name` -> the object it names (imports the user's code)."""
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise InputError(f"--module {target!r} must look like mypkg.nets:MyNet or path/to/nets.py:MyNet")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise InputError(f"--module file {path} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = mod
            spec.loader.exec_module(mod)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # the user's package in the current folder
            mod = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001  anything the user's module raises on import
        raise InputError(f"--module {target!r} does not import: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:250] if str(e) else ''}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def build_module(target: str, kwargs: Mapping[str, Any] | None = None):
    torch, _ = _imports()
    factory = import_module_class(target)
    try:
        module = factory(**dict(kwargs or {}))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{target}(**{dict(kwargs or {})}) failed: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:250] if str(e) else ''}") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{target} built a {type(module).__name__}, not a torch.nn.Module")
    return module


def load_weights(module, path) -> None:
    """Load a state_dict (plain, or nested under a usual checkpoint key) strictly into `module`."""
    from rawdenoise.zoo.artifact import find_state_dict, safe_torch_load

    state = find_state_dict(safe_torch_load(path), path)
    own = module.state_dict()
    problems = []
    missing_keys = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (file {list(state[k].shape)}, module {list(own[k].shape)})"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    for label, items in (("missing", missing_keys), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}")
    if problems:
        raise InputError(f"weights {Path(path).name} do not fit {type(module).__name__}: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


# ---- exporting a zoo artifact -------------------------------------------------------------------
def _artifact_bytes(torch, module, spec: ModelSpec, opset: int, static_hw) -> bytes:
    m = spec.multiple
    h, w = static_hw or (4 * m, 6 * m)
    example = onnx_model.random_inputs(spec, "input", batch=1 if static_hw else 2, hw=(h, w))
    names = list(example)
    dynamic = None if static_hw else _dynamic_axes(spec)
    return _export_bytes(torch, module, tuple(torch.from_numpy(example[n]) for n in names), names, dynamic,
                         opset, "torchscript")


def parity(module, onnx_bytes: bytes, spec: ModelSpec, static_hw=None, seed: int = 0) -> float:
    """Max abs difference torch vs ONNX Runtime (CPU) on random inputs of a non-square size."""
    import onnxruntime as ort
    import torch

    m = spec.multiple
    feed = onnx_model.random_inputs(spec, "input", batch=1 if static_hw else 2, seed=seed,
                                    hw=static_hw or (3 * m, 5 * m))
    ref = _forward(torch, module, feed, list(feed))
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = sess.run([sess.get_outputs()[0].name], feed)
    return float(np.abs(got - ref).max())


def export_artifact(src_pt, dst_onnx, *, opset: int | None = None, simplify: bool = True, static_hw=None,
                    check: bool = True, atol: float = PARITY_ATOL, overwrite: bool = True) -> float:
    """Export a zoo `.pt` artifact; returns the torch-vs-ORT max abs difference (nan when `check` is False)."""
    torch, onnx = _imports()
    from rawdenoise import zoo

    src_pt = Path(src_pt)
    module, spec = zoo.load(src_pt)
    if static_hw is not None:
        static_hw = tuple(int(v) for v in static_hw)
        if any(v <= 0 or v % spec.multiple for v in static_hw):
            raise InputError(f"--static {static_hw} must be positive multiples of the model's multiple {spec.multiple}")
        spec = spec.replace(tile=static_hw[0] if static_hw[0] == static_hw[1] else spec.tile)
    # an architecture whose ops need a newer opset (e.g. DeformConv, 19) says so on the module
    opset = max(opset or DEFAULT_OPSET, getattr(module, "min_onnx_opset", 0))
    model = onnx.load_from_string(_artifact_bytes(torch, module, spec, opset, static_hw))
    if simplify:
        model = _simplify(onnx, model, required=True)
    origin = dict(spec.origin)
    origin.setdefault("pt_sha256", sha256_file(src_pt))
    spec = spec.replace(origin=origin)
    onnx_model.embed_spec(model, spec)
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


# ---- command line ---------------------------------------------------------------------------------------
def _kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--kwargs is not valid JSON ({e}); write it like '{{\"width\": 32}}'") from None
    if not isinstance(value, dict):
        raise InputError(f"--kwargs must be a JSON object of keyword arguments, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters.torch2onnx", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", help="rawdenoise .pt artifact (or use --module)")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    own = p.add_argument_group("your own network")
    own.add_argument("--module", metavar="PKG.MOD:CLASS", help="torch.nn.Module class or factory to build (imports your code)")
    own.add_argument("--kwargs", metavar="JSON", help="keyword arguments for it, as a JSON object")
    own.add_argument("--weights", metavar="FILE", help="state_dict file (read with torch.load(weights_only=True))")
    own.add_argument("--spec", metavar="JSON", help="ModelSpec fields of the network (layout, scaling, ...)")
    own.add_argument("--exporter", choices=EXPORTERS, default="auto",
                     help="auto: TorchScript exporter, then the dynamo exporter if it fails")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    p.add_argument("--static", nargs=2, type=int, metavar=("H", "W"), help="fixed input size, batch 1 (.pt artifacts)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)

    def body() -> int:
        if (args.model is None) == (args.module is None):
            raise InputError("give either a .pt artifact or --module PKG.MOD:CLASS (with --spec), not both or neither")
        if args.module is None:
            if args.spec or args.weights or args.kwargs:
                raise InputError("--spec, --weights and --kwargs go with --module; a .pt artifact carries its own")
            diff = export_artifact(args.model, args.output, opset=args.opset, simplify=not args.no_simplify,
                                   static_hw=args.static, overwrite=args.overwrite)
            print(f"wrote {args.output}  parity torch vs onnxruntime: max abs diff {diff:.3g} (limit {PARITY_ATOL:g})")
            return 0
        if not args.spec:
            raise InputError("--module needs --spec spec.json: the layout and scaling of your network's input")
        if args.static:
            raise InputError("--static applies to .pt artifacts; your module is exported with dynamic N/H/W")
        onnx_model.check_destination(args.output, args.overwrite)
        given = onnx_model.read_spec_file(args.spec)
        module = build_module(args.module, _kwargs(args.kwargs))
        origin = {"module": args.module, "kwargs": _kwargs(args.kwargs)}
        if args.weights:
            load_weights(module, args.weights)
            origin.update(source_file=Path(args.weights).name, sha256=sha256_file(args.weights))
        spec, diffs = export(module, given, args.output, opset=args.opset, exporter=args.exporter,
                             simplify=not args.no_simplify, overwrite=args.overwrite, origin=origin)
        print(onnx_model.describe(spec, diffs, args.output))
        return 0

    return run_cli(body, "torch2onnx")


if __name__ == "__main__":
    raise SystemExit(main())
