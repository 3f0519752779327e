"""Shared CLI plumbing for converters: one-line errors, exit codes."""

from __future__ import annotations

import sys
from typing import Callable

from rawdenoise.errors import RawDenoiseError


def run_cli(body: Callable[[], int], prog: str) -> int:
    """Run a converter body; a RawDenoiseError prints one line on stderr and returns 1."""
    try:
        return body()
    except RawDenoiseError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
