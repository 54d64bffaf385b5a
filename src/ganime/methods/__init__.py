"""Training methods, registered by name.

A method is a class with the :class:`~ganime.methods.base.Method` interface, registered with
:func:`register`. Built-in methods are imported on first lookup, so an unknown name fails with the
list of valid ones rather than by file-name magic.
"""

from __future__ import annotations

import importlib

from ganime.errors import InputError

_REGISTRY: dict[str, type] = {}
#: Built-in method name -> module that registers it.
_BUILTIN = {"pix2pix": "ganime.methods.pix2pix", "cyclegan": "ganime.methods.cyclegan"}


def register(name: str):
    """Class decorator: make a method available as ``name``."""

    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_method(name: str) -> type:
    if name not in _REGISTRY and name in _BUILTIN:
        try:
            importlib.import_module(_BUILTIN[name])
        except ModuleNotFoundError as e:
            if e.name != _BUILTIN[name]:
                raise
    if name not in _REGISTRY:
        valid = ", ".join(n for n in available() if n in _REGISTRY or _importable(n))
        raise InputError(f"unknown method {name!r}: choose one of {valid}")
    return _REGISTRY[name]


def _importable(name: str) -> bool:
    return importlib.util.find_spec(_BUILTIN[name]) is not None
