"""Convert TensorFlow-origin weights into a rawdenoise `.pt` artifact.

Sources: a TF checkpoint prefix, a Keras `.h5`/`.weights.h5`/`.keras` file, or a dnnlib network pickle.

    python -m converters.tf2torch SRC --arch NAME -o OUT.pt

Nothing in the file is executed; names and shapes are mapped strictly (see converters.weightmap).
"""

from __future__ import annotations

from .import_weights import convert, run

__all__ = ["convert", "main"]


def main(argv: list[str] | None = None) -> int:
    return run(argv, "tf2torch", framework="tf")


if __name__ == "__main__":
    raise SystemExit(main())
