"""The `rawdenoise` command: denoise RAW files, show RAW or model metadata, and more.

Other commands live in their own modules, each with `add_arguments(parser)` and `run(args) -> int`:
the SDK's own (`compare`), and those other packages register under the `rawdenoise.commands`
entry-point group (the model factory's `demo`, tools.demo), so the SDK never imports them by name.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .errors import InputError, MissingDependencyError, RawDenoiseError, one_line

MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".engine", ".plan", ".trt")
OUTPUT_FORMATS = ("dng", "tiff", "npy")
DELEGATED = {
    "compare": ("rawdenoise.compare", "compare denoisers on the same frames"),
    "batch": ("rawdenoise.batch", "denoise many files into a folder, here or on a Ray cluster"),
}
COMMAND_GROUP = "rawdenoise.commands"


# ---- argument parsing -------------------------------------------------------------------------------
class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line too (exit status 2, as for every command-line tool), not a usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _levels(text: str) -> float | list[float]:
    """--black 512 or --black 510,512,512,514 (4 values in the 2x2 order of the CFA)."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 4 comma-separated numbers, got {text!r}") from None
    if len(vals) not in (1, 4):
        raise argparse.ArgumentTypeError(f"expected 1 or 4 values, got {len(vals)} in {text!r}")
    return vals[0] if len(vals) == 1 else vals


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model and how it runs: shared by the commands that denoise (denoise, batch)."""
    p.add_argument("--model", help="model file (.pt, .onnx, .engine); default: the model shipped with rawdenoise")
    p.add_argument("--runtime", help="torch, onnxruntime or tensorrt (default: from the model's suffix)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the runtime's choice)")
    p.add_argument("--tile", type=int, help="tile size in network pixels (default: the model's)")
    p.add_argument("--overlap", type=int, help="tile overlap in network pixels (default: the receptive radius)")
    p.add_argument("--batch", type=int, help="tiles per inference call")
    p.add_argument("--ensemble", type=int, choices=(1, 2, 4, 8), default=1, metavar="N",
                   help="average the outputs over N orientations of the frame (1, 2, 4 or 8; N times the "
                        "time, less residual noise; default 1)")


def add_frame_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "frame metadata", "required for headerless .raw/.bin dumps; for other files they override the file's values")
    g.add_argument("--width", type=int, help="frame width in pixels (headerless dumps)")
    g.add_argument("--height", type=int, help="frame height in pixels (headerless dumps)")
    g.add_argument("--cfa", help="2x2 CFA phase at the top-left pixel: RGGB, BGGR, GRBG or GBRG")
    g.add_argument("--black", type=_levels, help="black level: one value or 4 comma-separated in the 2x2 CFA order")
    g.add_argument("--white", type=float, help="white (saturation) level in DN")
    g.add_argument("--dtype", choices=("uint8", "uint16", "uint32", "float32"),
                   help="pixel type of a headerless dump (default uint16)")
    g.add_argument("--byte-order", choices=("little", "big"), help="byte order of a headerless dump (default little)")
    g.add_argument("--offset", type=int, help="bytes to skip at the start of a headerless dump (default 0)")
    g.add_argument("--iso", type=float, help="ISO of the shot (overrides the file's, and counts as given: a blind "
                                             "model uses it instead of estimating the noise)")


def _read_options(args) -> dict[str, Any]:
    opts = {"cfa": args.cfa, "black_level": args.black, "white_level": args.white, "iso": args.iso,
            "width": args.width, "height": args.height, "dtype": args.dtype, "byte_order": args.byte_order,
            "offset": args.offset}
    return {k: v for k, v in opts.items() if v is not None}


def read_frame(path: Path, args):
    from .rawio import HEADERLESS_SUFFIXES, read_raw

    opts = _read_options(args)
    if path.suffix.lower() not in HEADERLESS_SUFFIXES:
        layout = [k for k in ("width", "height", "dtype", "byte_order", "offset") if k in opts]
        if layout:
            flags = ", ".join("--" + k.replace("_", "-") for k in layout)
            raise InputError(f"{flags} only apply to headerless .raw/.bin dumps, not to {path.name}")
    return read_raw(path, **opts)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rawdenoise", description="Denoise RAW photos with neural networks on torch, ONNX Runtime or TensorRT.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("denoise", help="denoise RAW files and write DNG/TIFF/NPY",
                       description="Denoise RAW files. Output format follows the output suffix "
                                   "(.dng, .tif/.tiff, .npy); with several inputs -o names a folder.")
    d.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="camera RAW, DNG, .npy (+ .json) or .raw/.bin")
    d.add_argument("-o", "--output", required=True, type=Path, metavar="OUT",
                   help="output file, or an existing folder (required for several inputs)")
    d.add_argument("--format", choices=OUTPUT_FORMATS, default="dng",
                   help="output format when -o is a folder (default dng)")
    add_model_options(d)
    d.add_argument("--preview", type=Path, metavar="P",
                   help="write a before/after PNG (a folder when denoising several files)")
    d.add_argument("--profile", type=Path, metavar="JSON",
                   help="noise profile of the camera (python -m tools.noise_profile): the frame's noise comes "
                        "from it at the file's ISO (or --iso) instead of being estimated from the frame")
    d.add_argument("--overwrite", action="store_true", help="replace existing output files")
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    add_frame_options(d)
    d.set_defaults(func=cmd_denoise)

    i = sub.add_parser("info", help="show a RAW file's metadata or a model's manifest",
                       description="Show a RAW file's size, CFA, levels and camera, or a model file's "
                                   "manifest and its runner's inputs and outputs.")
    i.add_argument("file", type=Path, metavar="FILE|MODEL")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--runtime", help="runtime to open a model with (default: from its suffix)")
    add_frame_options(i)
    i.set_defaults(func=cmd_info)

    for name, (module_name, help_text) in _delegated().items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # not part of this version
            # present but a package it needs is missing: keep the other commands working
            p = sub.add_parser(name, help=f"{help_text} (unavailable: needs '{e.name}')", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_unavailable(name, e.name))
            continue
        # a module docstring starts "`rawdenoise NAME`: what it does"
        first_line = (module.__doc__ or help_text).strip().splitlines()[0].split("`: ", 1)[-1]
        p = sub.add_parser(name, help=first_line, description=first_line)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _delegated() -> dict[str, tuple[str, str]]:
    """name -> (module, help) of the commands in modules of their own, registered ones included."""
    from importlib.metadata import entry_points

    found = dict(DELEGATED)
    for ep in entry_points(group=COMMAND_GROUP):
        found.setdefault(ep.name, (ep.value, f"{ep.name} (from {ep.value})"))
    return found


def _unavailable(command: str, package: str | None):
    def run(args) -> int:
        raise MissingDependencyError(
            f"'rawdenoise {command}' needs the Python package '{package}', which is not installed; "
            f"install the matching extra, e.g. pip install 'rawdenoise[torch,onnx,raw]'")
    return run


# ---- denoise ------------------------------------------------------------------------------------------
def _plan_outputs(args) -> list[tuple[Path, Path, Path | None]]:
    """(input, output, preview) per file, checked before any work starts."""
    from .dng import WRITERS

    inputs: list[Path] = args.inputs
    for p in inputs:
        if not p.is_file():
            raise InputError(f"input {p} does not exist or is not a file")
    out = args.output
    to_dir = out.is_dir()
    if len(inputs) > 1 and not to_dir:
        raise InputError(f"-o {out} must be an existing folder when denoising {len(inputs)} files")
    check_writable_folder(out if to_dir else out.parent, "output")
    if not to_dir and out.suffix.lower() not in WRITERS:
        raise InputError(f"cannot tell the output format of {out.name!r}; end it in .dng, .tif, .tiff or .npy, "
                         f"or pass an existing folder")
    preview_dir = args.preview is not None and args.preview.is_dir()
    if args.preview is not None and len(inputs) > 1 and not preview_dir:
        raise InputError(f"--preview {args.preview} must be an existing folder when denoising {len(inputs)} files")
    if args.preview is not None:
        check_writable_folder(args.preview if preview_dir else args.preview.parent, "--preview")
    suffix = {"dng": ".dng", "tiff": ".tif", "npy": ".npy"}[args.format]
    plan, seen = [], set()
    for src in inputs:
        dst = out / (src.stem + suffix) if to_dir else out
        prev = None
        if args.preview is not None:
            prev = args.preview / (src.stem + "_preview.png") if preview_dir else args.preview
        targets = [dst, dst.with_suffix(".json")] if dst.suffix.lower() == ".npy" else [dst]
        protected = {src.resolve(), src.with_suffix(".json").resolve()} if src.suffix.lower() == ".npy" \
            else {src.resolve()}  # an .npy input's sidecar is part of the input
        for target in targets + ([prev] if prev is not None else []):
            if target.resolve() in protected:
                raise InputError(f"output {target} is the input file itself; inputs are never overwritten, "
                                 f"choose another output name or folder")
            if target.resolve() in seen:
                raise InputError(f"two inputs would write the same output {target}; give them different names")
            seen.add(target.resolve())
            if target.exists() and not args.overwrite:
                raise InputError(f"{target} already exists; pass --overwrite to replace it")
        plan.append((src, dst, prev))
    return plan


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse an output folder that cannot take the result before any work is done."""
    if folder.is_file():
        raise InputError(f"{what} folder {folder} is a file, not a folder; choose an output path in a folder")
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} folder {folder} is not writable; choose another one or fix its permissions")


def _load_denoiser(args):
    from .denoiser import Denoiser

    model = args.model or "default"
    if model == "default":
        try:
            from .models import default_model_path  # noqa: F401
        except ImportError:
            raise InputError("no default model ships with this version of rawdenoise yet; "
                             "pass --model PATH (a .pt, .onnx or .engine file)") from None
    return Denoiser.load(model, runtime=args.runtime, device=args.device, tile=args.tile,
                         overlap=args.overlap, batch=args.batch)


def cmd_denoise(args) -> int:
    from tqdm import tqdm

    from .dng import write_output

    plan = _plan_outputs(args)
    if args.model is not None and not Path(args.model).is_file():
        raise InputError(f"model file {args.model} does not exist")
    profile = _load_profile(args.profile)
    failures = 0
    with _load_denoiser(args) as dn:
        bar = tqdm(plan, desc="denoise", unit="file", disable=None if args.progress is None else not args.progress,
                   file=sys.stderr)
        for src, dst, prev in bar:
            bar.set_postfix_str(src.name)
            try:
                frame = read_frame(src, args)
                # an ISO on the command line is explicit, as run(iso=...) is (a file's ISO is metadata)
                noise = profile.frame_noise(frame) if profile else None
                clean = dn.run(frame, iso=args.iso, noise=noise, ensemble=args.ensemble)
                write_output(dst, clean, like=frame, overwrite=args.overwrite)
                if prev is not None:
                    from .preview import write_preview

                    write_preview(prev, frame, clean, overwrite=args.overwrite)
            except RawDenoiseError as e:
                if len(plan) == 1:
                    raise
                failures += 1
                tqdm.write(f"rawdenoise: error: {src}: {one_line(e)}", file=sys.stderr)
        bar.close()
    if failures:
        print(f"rawdenoise: error: {failures} of {len(plan)} files failed", file=sys.stderr)
        return 1
    return 0


def _load_profile(path: Path | None):
    if path is None:
        return None
    from rawdenoise.profile import NoiseProfile

    return NoiseProfile.load(path)


# ---- info -----------------------------------------------------------------------------------------------
def _model_info(path: Path, runtime: str | None) -> dict[str, Any]:
    import runtimes

    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    name = runtimes.canonical(runtime) if runtime else runtimes.for_path(path)
    with runtimes.get(name)(path) as runner:
        spec = runner.spec
        info = {"file": str(path), "runtime": name, "spec": spec.to_dict(), "io": runner.io()}
    # which manifest values were measured from the graph (and from what) rather than given
    measured = (spec.notes or {}).get("measured") or {}
    if measured:
        info["measured"] = {k: "unbounded" if v.get("value") is None else v.get("value") for k, v in measured.items()}
    if spec.unbounded:
        info["tiling"] = (f"feathered tiles: the receptive field is unbounded ({spec.notes.get('unbounded_by', '?')}); "
                          f"tile=0 runs the whole frame in one pass")
    return info


def _print_info(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
        else:
            print(f"{key}: {value}")


def cmd_info(args) -> int:
    path: Path = args.file
    if path.suffix.lower() in MODEL_SUFFIXES:
        info = _model_info(path, args.runtime)
    else:
        if not path.is_file():
            raise InputError(f"{path} does not exist or is not a file")
        info = {"file": str(path), **read_frame(path, args).describe()}
        info.pop("source", None)
    _print_info(info, args.json)
    return 0


# ---- entry point ----------------------------------------------------------------------------------------
def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rawdenoise: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning        # one line each, no source location
            return int(args.func(args) or 0)
    except RawDenoiseError as e:
        print(f"rawdenoise: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rawdenoise: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (rawdenoise info X --json | head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
