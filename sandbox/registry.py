"""Backends register by name and load lazily, so heavy SDKs are imported only when chosen."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib import import_module

from sandbox.base import Sandbox, SandboxUnavailable

_BACKENDS: dict[str, type[Sandbox]] = {}
_LAZY: dict[str, str] = {
    "local": "sandbox.local",
    "process": "sandbox.process",
    "docker": "sandbox.docker",
}


def register(name: str) -> Callable[[type[Sandbox]], type[Sandbox]]:
    def deco(cls: type[Sandbox]) -> type[Sandbox]:
        if name in _BACKENDS and _BACKENDS[name] is not cls:
            raise ValueError(f"sandbox backend {name!r} is already registered")
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return deco


def backend_names() -> list[str]:
    return sorted(set(_LAZY) | set(_BACKENDS))


def get_backend(name: str, **options: object) -> Sandbox:
    """Instantiate backend ``name`` with keyword ``options`` (e.g. docker's image and gpus).

    Raises KeyError for unknown names, ValueError for an option the backend does not take or a
    bad option value, SandboxUnavailable if it cannot run.
    """
    if name not in _BACKENDS and name in _LAZY:
        import_module(_LAZY[name])
    if name not in _BACKENDS:
        raise KeyError(name)
    cls = _BACKENDS[name]
    taken = inspect.signature(cls).parameters
    for key in options:
        if key not in taken or taken[key].kind != inspect.Parameter.KEYWORD_ONLY:
            raise ValueError(f"sandbox backend {name!r} takes no option {key!r}")
    return cls(**options)


__all__ = ["register", "get_backend", "backend_names", "SandboxUnavailable"]
