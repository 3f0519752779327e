"""What every route into the SDK ends with: an ONNX file that carries a complete manifest.

A user's network arrives as an ONNX graph (exported from torch, Paddle, TensorFlow or anything
else) plus a `spec.json` of ModelSpec fields. The fields that can be measured from the graph and
were left out (`multiple`, `receptive_radius`, `tile`) are measured here (converters.graph_analysis);
a given value always wins, and `notes.measured` records what was measured and from what. The
file is then run in ONNX Runtime against the origin framework on a random non-square input, and
written only if the two agree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from rawdenoise.errors import ConversionError, InputError, ModelFileError, RawDenoiseError, missing
from rawdenoise.fileio import atomic_output
from rawdenoise.spec import METADATA_KEY, ModelSpec
from rawdenoise.tiling import round_up, suggest_tile

MEASURED_FIELDS = ("multiple", "receptive_radius", "tile")
# fields that describe how the file was made, filled by the converter
_CONVERTER_FIELDS = ("origin", "version")
PARITY_RTOL = 1e-4           # max |ONNX - origin| relative to the origin output's range (at least 1)
UNBOUNDED_TILE = 512         # default tile of a model with global context (tiles are blended)

# origin(inputs) -> the origin framework's output for the same inputs (name -> NCHW float32)
Reference = Callable[[dict[str, np.ndarray]], np.ndarray]


def check_destination(dst, overwrite: bool) -> Path:
    """Refuse an output that cannot be written before any conversion work starts."""
    dst = Path(dst)
    if dst.is_dir():
        raise InputError(f"output {dst} is a folder; name the .onnx file to write")
    if dst.exists() and not overwrite:
        raise InputError(f"{dst} already exists; pass --overwrite to replace it")
    if not dst.parent.is_dir():
        raise InputError(f"output folder {dst.parent} does not exist; create it first")
    return dst


def read_spec_file(path) -> dict[str, Any]:
    """The ModelSpec fields a `spec.json` gives (unknown fields refused by name)."""
    path = Path(path)
    try:
        given = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"spec file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"spec file {path} is not readable JSON ({e})") from None
    return check_given(given, str(path))


def check_given(given, where: str = "spec") -> dict[str, Any]:
    """Validate a mapping of ModelSpec fields (a ModelSpec is taken as all of its fields)."""
    if isinstance(given, ModelSpec):
        # fields read from a partial spec.json are known; in a spec built in code, the measurable
        # fields still at their defaults are taken as not given
        defaults = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
        chosen = getattr(given, "given_fields", None)
        given = {k: v for k, v in given.to_dict().items() if k not in _CONVERTER_FIELDS and
                 (k in chosen if chosen is not None else not (k in MEASURED_FIELDS and v == defaults[k]))}
    if not isinstance(given, Mapping):
        raise InputError(f"{where} must be a JSON object of ModelSpec fields, got {type(given).__name__}")
    known = {f.name for f in dataclasses.fields(ModelSpec)} - set(_CONVERTER_FIELDS)
    unknown = sorted(set(given) - known)
    if unknown:
        raise InputError(f"{where} has unknown fields {unknown}; known: {sorted(known)}")
    try:  # every value checked now, with placeholders for the measured fields
        draft_spec(given)
    except (TypeError, InputError) as e:
        raise InputError(f"{where}: {e}") from None
    return dict(given)


def draft_spec(given: Mapping[str, Any]) -> ModelSpec:
    """A ModelSpec of the given fields, with the smallest valid placeholders for the measured ones
    (what a converter checks the network against before the graph is measured)."""
    strides = [i.get("stride", 1) if isinstance(i, Mapping) else i.stride for i in given.get("inputs") or ()]
    grid = math.lcm(2 if given.get("layout") == "mosaic" else 1, *[int(s) for s in strides if s])
    return ModelSpec(**{**given, "multiple": given.get("multiple", grid), "tile": given.get("tile", 0),
                        "receptive_radius": given.get("receptive_radius", 0)})


def _onnx():
    try:
        import onnx
    except ImportError:
        raise missing("onnx", "onnx", "ONNX conversion") from None
    return onnx


def split_inputs(spec: ModelSpec, names) -> tuple[str, dict]:
    """(image input name, {name: ExtraInput}) of a network whose inputs are `names`: every input but
    the image must be declared in the spec (inputs concatenated to the image are not inputs)."""
    names = list(names)
    declared = {i.name: i for i in spec.separate_inputs}
    absent = sorted(set(declared) - set(names))
    if absent:
        raise InputError(f"the spec declares extra inputs {absent}, but the network's inputs are {names}; "
                         f"use those names")
    image = [n for n in names if n not in declared]
    if len(image) != 1:
        raise InputError(f"the network has inputs {names}; declare every input but the image in the spec's "
                         f"'inputs' (name, kind, channels, stride), {len(image)} are left: {image}")
    return image[0], declared


def layouts_for(channels: int) -> str:
    """The layouts an image input of `channels` channels fits, for error messages."""
    return {1: "layout 'mosaic' (the CFA frame) or 'rgb' with in_channels 1 (grayscale)", 3: "layout 'rgb'",
            4: "layout 'bayer4' (2x2 blocks packed to 4 channels)"}.get(channels, "no rawdenoise layout")


def image_input_name(model, spec: ModelSpec) -> str:
    """The graph input that is not declared as an extra input (exactly one)."""
    inits = {i.name for i in model.graph.initializer}
    return split_inputs(spec, [i.name for i in model.graph.input if i.name not in inits])[0]


def complete_spec(model, given: Mapping[str, Any], origin: Mapping[str, Any] | None = None) -> ModelSpec:
    """The manifest: `given` fields, plus the measurable ones measured from the graph when omitted."""
    given = check_given(given)
    draft = draft_spec(given)
    image = image_input_name(model, draft)
    measured: dict[str, Any] = {}
    multiple, radius = given.get("multiple"), given.get("receptive_radius", 0)
    if multiple is None or "receptive_radius" not in given:
        from .graph_analysis import analyse

        geo = analyse(model, image_input=image, input_strides={i.name: i.stride for i in draft.separate_inputs})
        if multiple is None:
            # the network's own grid, even for a mosaic (tiles keep the 2x2 CFA grid), and every
            # extra input's stride (its tiles are cut on that grid)
            need = [geo.multiple] + [2] * (draft.layout == "mosaic") + [i.stride for i in draft.inputs if i.stride]
            multiple = math.lcm(*need)
            measured["multiple"] = {"value": multiple, "from": list(geo.stride_ops) or ["no strided op"]}
        if "receptive_radius" not in given:
            radius = geo.receptive_radius
            measured["receptive_radius"] = {"value": radius, "unbounded_by": geo.unbounded_by} if radius is None \
                else {"value": radius}
    tile = given.get("tile")
    if tile is None:
        tile = round_up(UNBOUNDED_TILE, multiple) if radius is None else suggest_tile(radius, multiple)
        measured["tile"] = {"value": tile}
    notes = dict(given.get("notes") or {})
    if measured:
        notes["measured"] = measured
    if radius is None:
        notes["unbounded_by"] = (measured.get("receptive_radius") or {}).get("unbounded_by") or "given as unbounded"
    try:
        return ModelSpec(**{**given, "multiple": multiple, "receptive_radius": radius, "tile": tile,
                            "notes": notes, "origin": dict(origin or {})})
    except InputError as e:
        raise ConversionError(f"the measured manifest is not valid: {e}; give multiple/tile in the spec") from None


def load_onnx(path):
    """An ONNX ModelProto from a file, with one-line errors for missing or unreadable files."""
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelFileError(f"{path} is not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None


def read_onnx(path) -> tuple[Any, ModelSpec, str, bool]:
    """(model, manifest, image input name, has Q/DQ nodes) of a rawdenoise ONNX file."""
    model = load_onnx(path)
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in meta:
        raise ModelFileError(
            f"{path} carries no rawdenoise manifest (metadata '{METADATA_KEY}'); make it a rawdenoise model with "
            f"python -m converters.attach_spec (or export it with python -m converters.torch2onnx)"
        )
    spec = ModelSpec.from_json(meta[METADATA_KEY])
    try:
        image = image_input_name(model, spec)
    except InputError as e:
        raise ModelFileError(f"{path}: {e}") from None
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return model, spec, image, qdq


def zero_points_are_zero(model) -> bool:
    """True when every QuantizeLinear/DequantizeLinear zero point is 0 (symmetric INT8)."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]:
            zp = consts.get(n.input[2])
            if zp is None or np.any(numpy_helper.to_array(zp) != 0):
                return False
    return True


def embed_spec(model, spec: ModelSpec):
    """Replace the model's metadata with the manifest (in place); returns the model."""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    return model


def random_inputs(spec: ModelSpec, image_name: str, *, batch: int = 2, seed: int = 0,
                  hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Random NCHW inputs of a non-square size on the model's grid: the image in [0, 1], extra
    inputs standard normal (maps at their stride, vectors per image)."""
    m = spec.multiple
    h, w = hw or (max(3 * m, round_up(24, m)), max(5 * m, round_up(40, m)))
    rng = np.random.default_rng(seed)
    out = {image_name: rng.random((batch, spec.in_channels, h, w), dtype=np.float32)}
    for i in spec.separate_inputs:
        out[i.name] = rng.standard_normal(i.shape(batch, h, w)).astype(np.float32)
    return out


def check_with_onnxruntime(data: bytes, spec: ModelSpec, image_name: str, reference: Reference | None,
                           *, rtol: float = PARITY_RTOL, seed: int = 0) -> dict[str, float]:
    """Run the ONNX file in ONNX Runtime (CPU) on random inputs; check the output's shape and, with
    `reference`, its agreement with the origin framework. Returns the measured differences."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing("onnxruntime", "onnx", "checking the converted model") from None
    feed = random_inputs(spec, image_name, seed=seed)
    x = feed[image_name]
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = sess.run([sess.get_outputs()[0].name], feed)[0]
    except Exception as e:  # ORT's own exception types: a shape or channel mismatch lands here
        raise ConversionError(f"ONNX Runtime cannot run the model on a {x.shape} input as the spec describes it "
                              f"({spec.layout}, {spec.in_channels} channels): {str(e).splitlines()[0][:300]}") from None
    want_shape = (x.shape[0], spec.out_channels) + x.shape[2:]
    if got.shape != want_shape:
        raise ConversionError(f"for a {x.shape} input the model returns {got.shape}, but the spec "
                              f"({spec.layout}, out_channels {spec.out_channels}) needs {want_shape}")
    if reference is None:
        return {}
    try:
        ref = np.asarray(reference(feed), np.float32)
    except RawDenoiseError:
        raise
    except Exception as e:  # the user's own network raised
        raise ConversionError(f"the origin model failed on a {x.shape} input: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300] if str(e) else ''}") from None
    if ref.shape != got.shape:
        raise ConversionError(f"the origin model returns {ref.shape} and the ONNX file {got.shape} for {x.shape}")
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    scale = max(1.0, float(ref.max() - ref.min()))
    if not diff <= rtol * scale:
        raise ConversionError(f"ONNX output differs from the origin framework by {diff:.3g} (> {rtol:g} x output "
                              f"range {scale:.3g}); nothing was written")
    return {"max_abs_diff": diff, "output_range": scale}


def finish(model, given: Mapping[str, Any], dst, *, origin: Mapping[str, Any], reference: Reference | None,
           overwrite: bool = True) -> tuple[ModelSpec, dict[str, float]]:
    """Complete the manifest, embed it, check in ONNX Runtime, write `dst` atomically."""
    onnx = _onnx()
    spec = complete_spec(model, given, origin)
    embed_spec(model, spec)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"the ONNX model is not valid: {str(e).splitlines()[0][:300]}") from None
    data = model.SerializeToString()
    image = image_input_name(model, spec)
    diffs = check_with_onnxruntime(data, spec, image, reference)
    with atomic_output(dst, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return spec, diffs


def route_main(argv, *, prog: str, description: str, source_help: str, convert, opset: int | None = None) -> int:
    """The command line every graph route shares: SOURCE --spec spec.json -o OUT.onnx [--opset N]."""
    import argparse

    from rawdenoise.errors import run_cli

    p = argparse.ArgumentParser(prog=f"python -m converters.{prog}", description=description)
    p.add_argument("source", help=source_help)
    p.add_argument("--spec", required=True, help="JSON file of ModelSpec fields (layout, scaling, extra inputs, ...)")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    if opset is not None:
        p.add_argument("--opset", type=int, default=opset, help=f"ONNX opset (default {opset})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)

    def body() -> int:
        kw = {"opset": args.opset} if opset is not None else {}
        spec, diffs = convert(args.source, args.spec, args.output, overwrite=args.overwrite, **kw)
        print(describe(spec, diffs, args.output))
        return 0

    return run_cli(body, prog)


def describe(spec: ModelSpec, diffs: Mapping[str, float], dst) -> str:
    """The line a converter prints: what was written, what was measured, the parity result."""
    measured = (spec.notes or {}).get("measured", {})
    parts = []
    for name in MEASURED_FIELDS:
        v = getattr(spec, name)
        tag = "measured" if name in measured else "given"
        parts.append(f"{name} {'unbounded' if v is None else v} ({tag})")
    text = f"wrote {dst}: {spec.layout}, {spec.in_channels} -> {spec.out_channels} channels, " + ", ".join(parts)
    if spec.unbounded:
        text += f"; unbounded because {spec.notes.get('unbounded_by')}: tiles are blended (tile=0 runs one pass)"
    if diffs:
        text += (f"; parity vs origin: max abs diff {diffs['max_abs_diff']:.3g} "
                 f"(limit {PARITY_RTOL:g} x range {diffs['output_range']:.3g})")
    return text
