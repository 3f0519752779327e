"""Convert a PaddlePaddle `.pdparams` state dict into a rawdenoise `.pt` artifact (paddle not needed).

Pickle protocols 2-4 and the split big-parameter form are read by a restricted unpickler.

    python -m converters.paddle2torch SRC --arch NAME -o OUT.pt

Nothing in the file is executed; names and shapes are mapped strictly (see converters.weightmap).
"""

from __future__ import annotations

from .import_weights import convert, run

__all__ = ["convert", "main"]


def main(argv: list[str] | None = None) -> int:
    return run(argv, "paddle2torch", framework="paddle")


if __name__ == "__main__":
    raise SystemExit(main())
