"""Make a PaddlePaddle inference model (`paddle.jit.save`) a rawdenoise ONNX model.

    python -m converters.paddle2onnx out/model --spec spec.json -o mynet.onnx [--opset 17] [--overwrite]

`out/model` is the prefix given to `paddle.jit.save`: Paddle >= 3 writes `model.json` (a PIR
program) + `model.pdiparams`, older versions `model.pdmodel` + `model.pdiparams`. The program is
converted by the `paddle2onnx` package (2.1.0, its ONNX optimiser off), then finished like every
other route (converters.onnx_model): the spec's missing `multiple`, `receptive_radius` and `tile`
are measured from the graph, the manifest is embedded, and the file is run in ONNX Runtime
against the Paddle model itself (`paddle.jit.load`) on a random non-square input; it is written
only if the two agree. Paddle runs in a child process only, so the caller's process may have
imported anything (tensorflow included) and survives paddle2onnx aborting. The ONNX inputs keep
the Paddle input names (the InputSpec names, else forward's argument names): extra inputs are
declared in the spec by them.

What this converter corrects in paddle2onnx 2.1.0's output:
- LeakyReLU slopes. Paddle 3 stores `leaky_relu`'s negative_slope as a double, which paddle2onnx
  does not read correctly: the ONNX `alpha` comes out as garbage (NaN, 0). The slopes are read
  back from the program and written into the LeakyRelu nodes (see `repair_leaky_relu`).
- Fixed sizes. A program saved with a fixed InputSpec gives fixed ONNX dims; batch, height and
  width of the graph's inputs and outputs are made dynamic again (with a warning), and the parity
  check runs at another size, so a program whose shapes are baked in fails here, not later.
- Dead Constant nodes and unused initializers (left behind with the optimiser off) are removed.

Save the network from a freshly built layer. A layer whose `forward` stores a tensor on itself
(`self.feat = ...`) and that was run eagerly before `paddle.jit.save` gets that tensor baked into the
program as a constant (a parameter named `eager_tmp_N`), in place of the computation that made it:
the saved model then ignores part of its input (or fails at other sizes), and since the Paddle
reference runs the same program, a parity check cannot see it. Build the layer, load its
state_dict and `jit.save` it before running it; this converter warns when the program holds such
tensors.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from rawdenoise.errors import ConversionError, InputError, MissingDependencyError, ModelFileError, missing
from rawdenoise.fileio import sha256_file

from . import onnx_model

DEFAULT_OPSET = 17
PROGRAM_SUFFIXES = {".json": "pir json", ".pdmodel": "pdmodel"}
PARAMS_SUFFIX = ".pdiparams"
# paddle2onnx names a tensor after the Paddle op that makes it: p2o.<dialect>.<op>.<nth op of that name>.<output>
_P2O_TENSOR = re.compile(r"^p2o\.(?:[A-Za-z_]+\.)?(?P<op>[A-Za-z0-9_]+)\.(?P<nth>\d+)\.(?P<out>\d+)$")
_EAGER_TENSOR = re.compile(r"^eager_tmp_\d+$")


# ---- the saved model -----------------------------------------------------------------------
@dataclass(frozen=True)
class PaddleFiles:
    prefix: str
    program: Path      # model.json or model.pdmodel
    params: Path       # model.pdiparams
    format: str        # "pir json" or "pdmodel"


def find_model_files(prefix) -> PaddleFiles:
    """The program and parameter files `paddle.jit.save(layer, prefix)` wrote (a path to one of the
    files is taken as its prefix)."""
    path = Path(prefix)
    if path.suffix in (*PROGRAM_SUFFIXES, PARAMS_SUFFIX) and path.is_file():
        path = path.with_suffix("")
    looked = [Path(f"{path}{s}") for s in PROGRAM_SUFFIXES]
    params = Path(f"{path}{PARAMS_SUFFIX}")
    # a Paddle 3 save is preferred when both exist, as paddle.jit.load does
    program = next((p for p in looked if p.is_file()), None)
    if program is not None and params.is_file():
        return PaddleFiles(str(path), program, params, PROGRAM_SUFFIXES[program.suffix])
    if path.is_dir():
        found = sorted(str(p.with_suffix("")) for s in PROGRAM_SUFFIXES for p in path.glob(f"*{s}")
                       if p.with_suffix(PARAMS_SUFFIX).is_file())
        raise InputError(f"{path} is a folder; pass the prefix given to paddle.jit.save, e.g. {path}/model for "
                         f"{path}/model.json (models in it: {', '.join(found) or 'none'})")
    if program is not None:
        raise InputError(f"found {program} but not its parameters {params}; copy the .pdiparams file that "
                         f"paddle.jit.save wrote next to it")
    raise InputError(f"no Paddle model at prefix {str(prefix)!r}: looked for {looked[0]} (Paddle >= 3) and "
                     f"{looked[1]} (older Paddle), each with {params}; pass the prefix given to paddle.jit.save, "
                     f"e.g. out/model for out/model.json")


# ---- the PIR program, read as plain JSON ------------------------------------------------------
def _ops(node) -> Iterator[dict]:
    """Every op of a PIR JSON program in program order (ops of nested blocks after their parent)."""
    for region in node.get("regions", ()):
        for block in region.get("blocks", ()):
            for op in block.get("ops", ()):
                yield op
                yield from _ops(op)


def _op_name(op) -> str:
    return str(op.get("#", "")).split(".", 1)[-1]     # "1.leaky_relu" -> "leaky_relu"


def _attr(op, name):
    for a in op.get("A") or ():
        if isinstance(a, dict) and a.get("N") == name:
            return (a.get("AT") or {}).get("D")
    return None


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v] if isinstance(v, dict) else []


@dataclass(frozen=True)
class LeakyOp:
    slope: float
    producer: tuple          # ("op", name, nth, output) or ("feed", input name)


def leaky_relu_ops(pir: Mapping) -> list[LeakyOp]:
    """The program's leaky_relu ops in order, each with its slope and the op that makes its input."""
    made_by: dict[Any, tuple] = {}
    seen: dict[str, int] = {}
    found = []
    for op in _ops(pir.get("program", {})):
        name = _op_name(op)
        if name in ("leaky_relu", "leaky_relu_"):      # the in-place form too
            slope = _attr(op, "negative_slope")
            ins = _as_list(op.get("I"))
            if not isinstance(slope, (int, float)) or not ins:
                raise ConversionError(f"leaky_relu op {len(found)} of the program has no readable negative_slope "
                                      f"(attributes {op.get('A')!r:.200}); the program format is not one this "
                                      f"converter knows")
            found.append(LeakyOp(float(slope), made_by.get(ins[0].get("%"), ("unknown",))))
        nth = seen.get(name, 0)
        seen[name] = nth + 1
        for k, out in enumerate(_as_list(op.get("O"))):
            made_by[out.get("%")] = ("feed", _attr(op, "name")) if name == "data" else ("op", name, nth, k)
    return found


def eager_tensors(pir: Mapping) -> list[str]:
    """Parameters named like tensors computed in an eager run (see the module docstring)."""
    names = []
    for op in _ops(pir.get("program", {})):
        if op.get("#") == "p" and isinstance(op.get("A"), list) and op["A"] and isinstance(op["A"][-1], str):
            if _EAGER_TENSOR.match(op["A"][-1]):
                out = _as_list(op.get("O"))
                shape = ((out[0].get("TT") or {}).get("D") or [None, None])[1] if out else None
                names.append(f"{op['A'][-1]} {shape}")
    return names


def read_program(path) -> dict:
    """A PIR program file as parsed JSON."""
    try:
        pir = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path} is not a readable Paddle PIR program ({str(e)[:200]}); it should be the "
                             f".json file paddle.jit.save wrote") from None
    if not isinstance(pir, dict) or not isinstance(pir.get("program"), dict):
        raise ModelFileError(f"{path} is JSON but not a Paddle PIR program (no 'program' entry); pass the prefix "
                             f"of the files paddle.jit.save wrote")
    return pir


def feed_shapes(pir: Mapping) -> dict[str, list[int]]:
    """The program's inputs (data ops): name -> shape as saved (-1: dynamic)."""
    return {_attr(op, "name"): list(_attr(op, "shape") or []) for op in _ops(pir["program"]) if _op_name(op) == "data"}


def onnx_input_shapes(model) -> dict[str, list[int]]:
    inits = {t.name for t in model.graph.initializer}
    return {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            for v in model.graph.input if v.name not in inits}


def check_inputs(given: Mapping[str, Any], shapes: Mapping[str, list[int]]) -> None:
    """Refuse a spec that the model's inputs contradict (names, channel counts), before any
    conversion work: the network decides how many channels it takes, the spec only describes them."""
    draft = onnx_model.draft_spec(given)
    image, declared = onnx_model.split_inputs(draft, shapes)
    for name, want, what in [(image, draft.in_channels, f"layout {draft.layout!r}")] + \
            [(n, i.channels, "its 'inputs' entry") for n, i in declared.items()]:
        shape = shapes[name]
        got = shape[1] if len(shape) > 1 else -1
        if got > 0 and got != want:
            fix = f"a {got}-channel image fits {onnx_model.layouts_for(got)}" if name == image \
                else f"set its channels to {got}"
            raise InputError(f"the spec describes input {name!r} with {want} channels ({what}), but the Paddle "
                             f"model's {name!r} has shape {shape} ({got} channels); {fix}")


# ---- repairs of the ONNX graph ------------------------------------------------------------------
def _nodes(graph) -> Iterator:
    """Every node of an ONNX graph in order, subgraph nodes after their parent."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _nodes(g)


def _made_by_onnx(name: str, graph_inputs: set[str]) -> tuple:
    if name in graph_inputs:
        return ("feed", name)
    m = _P2O_TENSOR.match(name)
    return ("op", m["op"], int(m["nth"]), int(m["out"])) if m else ("unnamed", name)


_NO_LEAKY = "nothing was written (paddle.maximum(x, slope * x) computes the same without a leaky_relu op)"


def repair_leaky_relu(model, pir: Mapping) -> int:
    """Write the program's LeakyReLU slopes into the ONNX LeakyRelu nodes; returns how many were wrong.

    Matching: paddle2onnx converts the program op by op in program order, and each leaky_relu op
    becomes exactly one LeakyRelu node, so the k-th leaky_relu op is the k-th LeakyRelu node. That
    is verified pair by pair before anything is changed: the node's input tensor must be named after
    the same producer as the op's input (paddle2onnx names tensors p2o.<op>.<nth>.<output>; a graph
    input keeps its feed name). Different counts, or a wrong slope on a pair that cannot be
    verified, refuse the conversion: a guessed slope would make a file that only looks right.
    """
    ops = leaky_relu_ops(pir)
    nodes = [n for n in _nodes(model.graph) if n.op_type == "LeakyRelu"]
    if len(ops) != len(nodes):
        raise ConversionError(f"the Paddle program has {len(ops)} leaky_relu ops but the ONNX graph {len(nodes)} "
                              f"LeakyRelu nodes, so paddle2onnx's alphas cannot be checked or repaired; {_NO_LEAKY}")
    inputs = {i.name for i in model.graph.input}
    fixes = []
    for k, (op, node) in enumerate(zip(ops, nodes)):
        alpha = next((a for a in node.attribute if a.name == "alpha"), None)
        want = float(np.float32(op.slope))
        if alpha is not None and alpha.f == want:
            continue
        onnx_src = _made_by_onnx(node.input[0], inputs)
        if onnx_src != op.producer:
            raise ConversionError(
                f"LeakyRelu node {k} ({node.name or node.output[0]}) has alpha {alpha.f if alpha else 'unset'} but "
                f"the program's slope is {op.slope:g}, and the node (input {node.input[0]!r}) cannot be matched "
                f"to leaky_relu op {k} (input from {op.producer}), so the slope cannot be repaired; {_NO_LEAKY}")
        fixes.append((node, alpha, want))
    onnx = onnx_model._onnx()
    for node, alpha, want in fixes:
        if alpha is None:
            node.attribute.append(onnx.helper.make_attribute("alpha", want))
        else:
            alpha.f = want
    return len(fixes)


def prune(model) -> None:
    """Remove nodes whose results nothing reads, then initializers nothing reads (paddle2onnx leaves
    some Constant nodes behind, its optimiser being off; ONNX Runtime warns about each one on every
    session)."""
    graph = model.graph
    while True:
        used = {name for node in _nodes(graph) for name in node.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in used]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)


def make_dynamic(model) -> dict[str, list[int]]:
    """Turn fixed batch/height/width dims of the graph's inputs and outputs into symbolic ones;
    returns the fixed shapes found (name -> shape)."""
    fixed = {}
    for v in [*model.graph.input, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        axes = (0, 2, 3) if len(dims) == 4 else (0,) if dims else ()
        if any(dims[a].HasField("dim_value") for a in axes):
            fixed[v.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        for a in axes:
            if dims[a].HasField("dim_value"):
                dims[a].dim_param = f"{v.name}_{'n?hw'[a]}"
    return fixed


# ---- paddle and paddle2onnx, in a child process ---------------------------------------------------
# Paddle never runs in the caller's process: paddle2onnx aborts the whole process (SIGABRT) on an
# unsupported op or too low an opset, which no Python code can catch, and paddle cannot be
# imported into a process that imported tensorflow. A child that dies becomes a one-line error.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
_CHILD = "import sys; from converters.paddle2onnx import _serve; _serve(sys.argv[1])"
_ROUTINE = ("Start parsing", "Use opset_version", "exported as ONNX")


def _require() -> str:
    """Check that paddle and paddle2onnx are installed (without importing them); returns the
    paddle2onnx version."""
    if importlib.util.find_spec("paddle") is None:
        raise missing("paddlepaddle", "paddle", "converting a Paddle model")
    if importlib.util.find_spec("paddle2onnx") is None:
        base = missing("paddle2onnx", "paddle", "converting a Paddle model")
        # its metadata pins onnx<=1.17 and asks for polygraphy/onnxoptimizer, none of which it needs here
        raise MissingDependencyError(f"{base} (or alone: pip install --no-deps paddle2onnx==2.1.0)")
    return importlib.metadata.version("paddle2onnx")


def _serve(arg: str) -> None:
    """The child: export the model with paddle2onnx, then run it in Paddle on request.

    It answers on its stdout, one line per step: "exported" once the ONNX file is written; then,
    for each .npz path read on stdin (the inputs by ONNX name), "ok" once the Paddle output is
    saved as PATH.out.npy, or "error MESSAGE". All that Paddle prints goes to stderr.
    """
    a = json.loads(arg)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import paddle
    import paddle2onnx

    paddle.set_device("cpu")       # as ONNX Runtime runs in the check
    old_ir = a["format"] == "pdmodel"
    program = a["program"]
    if old_ir:
        # a .pdmodel becomes a PIR .json first, as paddle2onnx itself would do it, so that the
        # program read for the LeakyReLU slopes is the very file converted
        exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.pir_utils.OldIrGuard():
            loaded, _, _ = paddle.static.load_inference_model(a["prefix"], exe)
        pir = paddle.pir.translate_to_pir(loaded.desc)
        paddle2onnx.load_parameter(pir)
        paddle2onnx.save_program(pir, a["translated"])
        program = a["translated"] + ".json"
    # the optimiser is what needs onnx<=1.17 (the raw graph is valid with newer onnx); no automatic
    # opset upgrade: the opset asked for is the opset written
    data = paddle2onnx.export(program, program[:-len(".json")] + ".pdiparams" if old_ir else a["params"], None,
                              opset_version=a["opset"], auto_upgrade_opset=False, enable_optimize=False,
                              enable_onnx_checker=True, verbose=False)
    with open(a["out"], "wb") as f:
        f.write(data)
    reply.write("exported\n")
    layer = None
    for line in sys.stdin:
        path = line.strip()
        try:
            if layer is None:
                # a .pdmodel loads only in the old IR mode, a .json in the default (PIR) mode
                with paddle.pir_utils.DygraphOldIrGuard() if old_ir else contextlib.nullcontext():
                    layer = paddle.jit.load(a["prefix"])
                layer.eval()
            feed = np.load(path)
            # the layer's argument order (a private attribute of Paddle's loaded layers; without it,
            # the ONNX order); its names are the ONNX input names. A .pdmodel's ONNX file lists them
            # in reverse, so the pairing is by name
            names = list(getattr(layer, "_input_args_names", None) or feed.files)
            if sorted(names) != sorted(feed.files):
                raise ValueError(f"the Paddle model takes inputs {names} but the ONNX file {feed.files}")
            with paddle.no_grad():
                out = layer(*[paddle.to_tensor(feed[n]) for n in names])
            out = out[0] if isinstance(out, (list, tuple)) else out
            np.save(path + ".out.npy", np.asarray(out.numpy(), np.float32))
            reply.write("ok\n")
        except Exception as e:  # noqa: BLE001  the user's network raised: tell the parent, keep serving
            reply.write(f"error {type(e).__name__}: {' '.join(str(e).split())[:300]}\n")


def _failure(log: str, returncode: int | None) -> str:
    """Why the child failed, from what it printed: paddle2onnx's own lines (it logs a failure's
    cause, then aborts or fails with an unrelated error), else the last Python error."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    said = [ln.replace("[ERROR]", "").replace("[Paddle2ONNX]", "").strip() for ln in lines
            if "Paddle2ONNX]" in ln and not any(r in ln for r in _ROUTINE)]
    said = [ln for ln in said if ln]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)]
    text = " ".join(said[:3]) or (raised[-1] if raised else f"the process ended with status {returncode}")
    need = re.search(r"opset_version to (\d+)", text)
    if need:
        text += f" (pass --opset {need[1]} or higher)"
    return text[:400]


class PaddleProcess:
    """A child process (`_serve`) that exports the saved model with paddle2onnx and then serves as
    the parity reference: called with ONNX-named NCHW float32 inputs, it returns Paddle's output."""

    def __init__(self, files: PaddleFiles, opset: int, workdir: Path):
        self.files, self.opset, self.dir = files, int(opset), Path(workdir)
        self.version = _require()
        self._log = open(self.dir / "paddle.log", "w+b")
        args = {"format": files.format, "prefix": str(Path(files.prefix).resolve()), "opset": self.opset,
                "program": str(files.program.resolve()), "params": str(files.params.resolve()),
                "translated": str(self.dir / "translated"), "out": str(self.dir / "model.onnx")}
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=path)
        # started in the empty work folder: nothing in the caller's folder can shadow paddle2onnx there
        self._proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], cwd=self.dir, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._calls = 0

    def _answer(self, doing: str) -> str:
        line = self._proc.stdout.readline()
        if line:
            return line.strip()
        rc = self._proc.wait()
        self._log.seek(0)
        raise ConversionError(f"{doing}: {_failure(self._log.read().decode('utf-8', 'replace'), rc)}")

    def export(self):
        """(ONNX ModelProto, the converted PIR program as parsed JSON)."""
        what = f"paddle2onnx {self.version} cannot convert {self.files.program} at opset {self.opset}"
        if self._answer(what) != "exported":
            raise ConversionError(f"{what}: the converter process answered out of turn")
        program = self.dir / "translated.json" if self.files.format == "pdmodel" else self.files.program
        return onnx_model._onnx().load(str(self.dir / "model.onnx")), read_program(program)

    def __call__(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        self._calls += 1
        path = self.dir / f"feed{self._calls}.npz"
        np.savez(path, **{k: np.ascontiguousarray(v, np.float32) for k, v in feed.items()})
        self._proc.stdin.write(f"{path}\n")
        self._proc.stdin.flush()
        shapes = {k: v.shape for k, v in feed.items()}
        answer = self._answer(f"the Paddle model failed on inputs {shapes}")
        if answer != "ok":
            raise ConversionError(f"the Paddle model failed on inputs {shapes}: {answer.removeprefix('error ')}")
        return np.load(f"{path}.out.npy")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()        # the child's loop ends
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc.stdout.close()
        self._log.close()

    def __enter__(self) -> "PaddleProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the conversion ----------------------------------------------------------------------------
def _hint(fixed: Mapping, inputs, eager: list[str]) -> str:
    """What may explain a failed check, from what was seen in the program."""
    hints = []
    fixed_in = {k: v for k, v in fixed.items() if k in inputs}
    if fixed_in:
        hints.append(f"the program was saved for fixed input sizes {fixed_in}: jit.save it with "
                     f"InputSpec([None, C, None, None])")
    elif fixed:
        hints.append(f"the program's output has fixed sizes {dict(fixed)} although its inputs are dynamic: "
                     f"a size is baked into the program")
    if eager:
        hints.append(f"the program holds tensors from an eager run ({', '.join(eager)}): jit.save a freshly "
                     f"built layer")
    return f" ({'; '.join(hints)})" if hints else ""


def convert(prefix, spec, dst, *, opset: int = DEFAULT_OPSET, overwrite: bool = True):
    """Convert the Paddle model saved at `prefix` to `dst` (.onnx) with a complete manifest.

    `spec`: a spec.json path or a mapping of ModelSpec fields. Returns (ModelSpec, parity
    differences as measured by `onnx_model.finish`).
    """
    dst = onnx_model.check_destination(dst, overwrite)
    given = onnx_model.read_spec_file(spec) if isinstance(spec, (str, Path)) else onnx_model.check_given(spec)
    files = find_model_files(prefix)
    if files.format == "pir json":        # a spec the network contradicts is refused before Paddle starts
        check_inputs(given, feed_shapes(read_program(files.program)))
    onnx_model._onnx()
    with tempfile.TemporaryDirectory(prefix="paddle2onnx.") as tmp, PaddleProcess(files, opset, Path(tmp)) as paddle:
        model, pir = paddle.export()
        check_inputs(given, onnx_input_shapes(model))
        repaired = repair_leaky_relu(model, pir)
        fixed = make_dynamic(model)
        prune(model)
        eager = eager_tensors(pir)
        if fixed:
            warnings.warn(f"{files.program}: paddle2onnx gave fixed sizes to {fixed} (-1: dynamic); the ONNX "
                          f"file's batch/height/width are made dynamic and checked at another size", stacklevel=2)
        if eager:
            warnings.warn(f"{files.program} holds tensors named like results of an eager run ({', '.join(eager)}); "
                          f"if forward stores tensors on the layer (self.x = ...) and the layer ran before "
                          f"paddle.jit.save, they are frozen constants: jit.save a freshly built layer", stacklevel=2)
        opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
        origin = {"framework": "paddle", "format": files.format, "source_file": files.program.name,
                  "params_file": files.params.name, "sha256": sha256_file(files.params),
                  "paddle2onnx": paddle.version, "opset": max(opsets, default=int(opset))}
        if repaired:
            origin["repaired"] = {"LeakyRelu.alpha": repaired}
        try:
            return onnx_model.finish(model, given, dst, origin=origin, reference=paddle, overwrite=overwrite)
        except ConversionError as e:
            raise ConversionError(f"{e}{_hint(fixed, onnx_input_shapes(model), eager)}") from None


def main(argv: list[str] | None = None) -> int:
    return onnx_model.route_main(argv, prog="paddle2onnx", description=__doc__.split("\n")[0],
                                 source_help="the path prefix given to paddle.jit.save (out/model for out/model.json)", convert=convert, opset=DEFAULT_OPSET)


if __name__ == "__main__":
    raise SystemExit(main())
