"""rawdenoise: run RAW-image denoising networks exactly right, on torch, ONNX Runtime or TensorRT.

`import rawdenoise` imports numpy only; frameworks load when a runner or converter needs them.
"""

from .denoiser import Denoiser
from .errors import (InputError, MissingDependencyError, ModelFileError, RawDenoiseError, RawFileError,
                     UnsafeFileError)
from .spec import KSigma, ModelSpec

__version__ = "0.1.0"


def __getattr__(name):
    # RAW file I/O needs rawpy; import it on first use only
    if name in ("read_raw", "write_dng", "write_output", "RawFrame"):
        from . import rawio

        return getattr(rawio, name)
    raise AttributeError(f"module 'rawdenoise' has no attribute {name!r}")


__all__ = ["Denoiser", "ModelSpec", "KSigma", "RawDenoiseError", "InputError", "ModelFileError",
           "UnsafeFileError", "RawFileError", "MissingDependencyError", "__version__"]
