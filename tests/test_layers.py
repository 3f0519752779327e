"""Arrows run one way: the SDK (rawdenoise/, with runtimes/) never imports the converters or the
model factory (tools/), and the converters never import the model factory, so each layer can be read
on its own. Imports are read from the source with ast, inside functions too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the top-level packages of this repository it may import
ALLOWED = {
    "rawdenoise": {"rawdenoise", "runtimes"},
    "runtimes": {"rawdenoise", "runtimes"},
    "converters": {"rawdenoise", "runtimes", "converters"},
    "tools": {"rawdenoise", "runtimes", "converters", "tools"},
}
OURS = set(ALLOWED)


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package):
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = imported_packages(path) - ALLOWED[package]
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"{package} reaches up into {bad}"


def test_converters_do_not_import_each_other_in_a_cycle():
    """onnx2trt uses quantize; quantize must not use onnx2trt (shared code lives in onnx_model)."""
    src = (ROOT / "converters" / "quantize.py").read_text()
    assert "onnx2trt" not in {n.module.split(".")[-1] for n in ast.walk(ast.parse(src))
                              if isinstance(n, ast.ImportFrom) and n.module}
