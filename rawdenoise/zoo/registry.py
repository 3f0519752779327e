"""Architecture registry: a decorator registers a factory and the spec its weights expect."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InputError
from ..spec import ModelSpec


@dataclass(frozen=True)
class Arch:
    name: str
    factory: Callable[..., Any]
    spec: Callable[..., ModelSpec]  # same keyword arguments as the factory
    description: str


_ARCHS: dict[str, Arch] = {}


def register(name: str, *, spec: Callable[..., ModelSpec], description: str = ""):
    def deco(factory):
        if name in _ARCHS:
            raise AssertionError(f"architecture {name!r} registered twice")
        _ARCHS[name] = Arch(name, factory, spec, description or (factory.__doc__ or "").strip().split("\n")[0])
        return factory
    return deco


def names() -> list[str]:
    return sorted(_ARCHS)


def get(name: str) -> Arch:
    if name not in _ARCHS:
        close = difflib.get_close_matches(name, _ARCHS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InputError(f"unknown architecture {name!r}{hint}; known: {', '.join(names())}")
    return _ARCHS[name]


def create(name: str, **kwargs):
    """Build a registered architecture with random weights; remembers its name and arguments."""
    arch = get(name)
    try:
        module = arch.factory(**kwargs)
    except TypeError as e:
        raise InputError(f"bad arguments for architecture {name!r}: {e}") from None
    module.rawdenoise_arch = (name, dict(kwargs))
    return module


def default_spec(name: str, **kwargs) -> ModelSpec:
    return get(name).spec(**kwargs)
