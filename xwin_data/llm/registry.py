"""One registry of model backends, by kind: `generator` (samples responses), `scorer` (reward-model scores) and
`judge` (pairwise verdicts). A backend is a class registered under a name:

    @register_backend("toy", kind="generator")
    class ToyGenerator(Generator): ...

The shipped backends live one file each in `xwin_data/llm/backends/` and are imported on the first lookup
(their heavy libraries are imported only when a backend is built); a backend defined elsewhere is available once
its module is imported.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, TypeVar

KINDS = ("generator", "scorer", "judge")
T = TypeVar("T", bound=type)

_BACKENDS: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_ALIASES: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
_loaded = False


def register_backend(name: str, kind: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Class decorator: make a backend available to specs of `kind` under `name` (and `aliases`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown backend kind {kind!r} (kinds: {', '.join(KINDS)})")

    def add(cls: T) -> T:
        for label in (name, *aliases):
            owner = _BACKENDS[kind].get(_ALIASES[kind].get(label, label))
            if owner is not None and owner.__qualname__ != cls.__qualname__:
                raise ValueError(f"{kind} backend {label!r} is already registered by {owner.__qualname__}")
        _BACKENDS[kind][name] = cls
        for alias in aliases:
            _ALIASES[kind][alias] = name
        return cls

    return add


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import xwin_data.llm.backends as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def names(kind: str) -> list[str]:
    _load_builtin()
    return sorted(_BACKENDS[kind])


def canonical_name(kind: str, name: str) -> str:
    """The registered name for `name` (an alias resolves to its backend); an unknown name is a clear error."""
    _load_builtin()
    name = _ALIASES[kind].get(name, name)
    if name not in _BACKENDS[kind]:
        raise ValueError(f"unknown {kind} backend {name!r} (registered: {', '.join(names(kind))})")
    return name


def backend_class(kind: str, name: str) -> type:
    return _BACKENDS[kind][canonical_name(kind, name)]
