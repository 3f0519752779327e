"""Model zoo: torch architectures, a registry, and the SDK's `.pt` artifact. Imports torch."""

from . import airnet, invdn, n2n, pmrid, unet  # noqa: F401  (registers)
from .artifact import load, measure_receptive_radius, read, save
from .registry import create, default_spec, get, names, register

__all__ = ["create", "names", "save", "load", "read", "register", "get", "default_spec",
           "measure_receptive_radius"]
