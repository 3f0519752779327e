"""Exception tree.

`RawDenoiseError` and its subclasses are user errors: a wrong argument, a bad file, a missing
package. Their message says what was received, what is allowed and how to fix it; the CLI prints
it on one line. Any other exception escaping the SDK is a bug in the SDK.
"""


class RawDenoiseError(Exception):
    """A problem the caller can fix (bad input, bad file, missing dependency)."""


class InputError(RawDenoiseError, ValueError):
    """An argument or input array is not acceptable."""


class ModelFileError(RawDenoiseError):
    """A model file is missing, truncated, corrupt or of an unknown kind."""


class UnsafeFileError(ModelFileError):
    """A weight file would import or call code when loaded; it was refused, not executed."""


class RawFileError(RawDenoiseError):
    """A RAW file cannot be read or is not a 2x2 Bayer mosaic."""


class MissingDependencyError(RawDenoiseError, ImportError):
    """An optional framework is not installed; the message names the pip extra."""


class ConversionError(RawDenoiseError):
    """A model or weight conversion failed (name/shape mismatch, parity failure...)."""


class NoiseEstimateError(InputError):
    """A frame's noise cannot be measured blind (too small, flat, saturated, too dark or textured)."""


class RawDenoiseWarning(UserWarning):
    """Something worth knowing about a result; the CLI prints it as one line."""


class UnboundedContextWarning(RawDenoiseWarning):
    """A model with global context is tiled: tiles are blended, not exact (tile=0 runs one pass)."""


class NoiseFallbackWarning(RawDenoiseWarning):
    """A frame's noise could not be measured, and a default noise level was used instead."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (what the command-line tools print)."""
    return " ".join(str(e).split()) or type(e).__name__


def missing(package: str, extra: str, purpose: str) -> MissingDependencyError:
    """Build the standard error for an optional package that is not installed."""
    return MissingDependencyError(
        f"{purpose} needs the Python package '{package}', which is not installed; "
        f"install it with: pip install 'rawdenoise[{extra}]'"
    )


def run_cli(body, prog: str) -> int:
    """Run a command-line body; a RawDenoiseError prints one line on stderr and returns 1."""
    import sys

    try:
        return body()
    except RawDenoiseError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
