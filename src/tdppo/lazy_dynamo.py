"""``torch._dynamo`` imported when something uses it, not when tensordict and TorchRL load.

tensordict and TorchRL decorate functions with dynamo's markers while they import
(``torch.compiler.assume_constant_result``, ``disable`` and ``allow_in_graph``, and
``torch._dynamo.assume_constant_result`` directly), and each marker imports ``torch._dynamo``:
about 1 s of a process's start on this machine (with sympy, inductor's config and
``torch.distributed.fsdp`` under it). A warm ``tdppo`` run never traces with dynamo: its
compiled functions are AOTInductor packages loaded from the cache.

:func:`install` puts a stand-in for ``torch._dynamo`` in ``sys.modules``. It applies the three
markers without dynamo: ``assume_constant_result`` sets the attribute dynamo sets;
``allow_in_graph`` records the function; ``disable`` returns a wrapper that calls the function
itself while dynamo is not loaded. Anything else asked of it (an attribute, a submodule,
``torch.compile``) imports the real module first, which then replays the record: each recorded
function is allowed in graph, and each ``disable`` wrapper calls dynamo's own disabled function
from then on. Dynamo traces such a wrapper into that disabled function, so it breaks the graph
there as it would have. A ``disable`` of anything but a plain function imports the real module.

Only the command line installs it (it owns its process, as with ``gc.freeze``); the Python API
leaves the caller's imports alone. ``TDPPO_LAZY_DYNAMO=0`` turns it off.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = ["install", "installed", "loaded"]

_NAME = "torch._dynamo"
ENV = "TDPPO_LAZY_DYNAMO"
"""``0`` turns :func:`install` off."""

_lock = threading.RLock()  # one thread imports the real module; the others then find it
_allowed: list[Callable] = []
_disabled: list[tuple[_Target, Callable, tuple, dict]] = []


def installed() -> bool:
    """Whether the stand-in is in place (dynamo not imported since :func:`install`)."""
    return isinstance(sys.modules.get(_NAME), _Stub)


def loaded() -> bool:
    """Whether the real ``torch._dynamo`` is imported."""
    mod = sys.modules.get(_NAME)
    return mod is not None and not isinstance(mod, _Stub)


def install() -> bool:
    """Put the stand-in in place, before tensordict and TorchRL are imported; ``False`` when
    dynamo is already imported or ``$TDPPO_LAZY_DYNAMO`` is ``0``."""
    if os.environ.get(ENV, "1") == "0" or _NAME in sys.modules:
        return False
    import torch

    spec = importlib.util.find_spec(_NAME)  # torch is imported: this reads no dynamo code
    if spec is None or spec.submodule_search_locations is None:
        return False
    stub = _Stub(_NAME)
    stub.__spec__ = spec
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__file__ = spec.origin
    sys.modules[_NAME] = stub
    torch._dynamo = stub  # what ``torch.__getattr__`` would have imported
    sys.meta_path.insert(0, _SUBMODULES)
    return True


def _materialize() -> types.ModuleType:
    """Import the real module in the stand-in's place and replay what the stand-in recorded."""
    with _lock:
        return _materialize_locked()


def _materialize_locked() -> types.ModuleType:
    mod = sys.modules.get(_NAME)
    if not isinstance(mod, _Stub):
        return importlib.import_module(_NAME)
    stub = mod
    if _SUBMODULES in sys.meta_path:
        sys.meta_path.remove(_SUBMODULES)
    del sys.modules[_NAME]
    import torch

    vars(torch).pop("_dynamo", None)
    try:
        real = importlib.import_module(_NAME)  # sets ``torch._dynamo`` to it
    except BaseException:
        sys.modules[_NAME] = stub
        torch._dynamo = stub
        sys.meta_path.insert(0, _SUBMODULES)
        raise
    for fn in _allowed:
        real.allow_in_graph(fn)
    for cell, fn, args, kwargs in _disabled:
        cell.fn = real.disable(fn, *args, **kwargs)
    _allowed.clear()
    _disabled.clear()
    return real


def _assume_constant_result(fn: Callable) -> Callable:
    fn._dynamo_marked_constant = True  # what dynamo's own marker does, and all it does
    return fn


def _allow_in_graph(fn: Any) -> Any:
    if isinstance(fn, (list, tuple)):
        return [_allow_in_graph(f) for f in fn]
    if not callable(fn):
        return _materialize().allow_in_graph(fn)
    _allowed.append(fn)
    return fn


class _Target:
    """The callee of a :func:`_disable` wrapper: the function itself, then dynamo's."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn


def _disable(fn: Any = None, *args: Any, **kwargs: Any) -> Any:
    if fn is None:  # ``@disable()``, ``@disable(recursive=False)``: a decorator
        return lambda f: _disable(f, *args, **kwargs)
    if not isinstance(fn, types.FunctionType):
        return _materialize().disable(fn, *args, **kwargs)
    target = _Target(fn)

    @functools.wraps(fn)
    def disabled(*a: Any, **k: Any) -> Any:
        return target.fn(*a, **k)

    _disabled.append((target, fn, args, kwargs))
    return disabled


_DEFERRED = {
    "assume_constant_result": _assume_constant_result,
    "allow_in_graph": _allow_in_graph,
    "disable": _disable,
}


class _Stub(types.ModuleType):
    """``torch._dynamo`` until something needs more than the three markers."""

    def __getattr__(self, name: str) -> Any:
        if name in _DEFERRED and installed():  # once imported, a kept reference forwards
            return _DEFERRED[name]
        if name.startswith("__"):  # ``__wrapped__``, ``__all__``... asked by tools: not dynamo's
            raise AttributeError(name)
        return getattr(_materialize(), name)


class _Existing(importlib.abc.Loader):
    """A loader whose module is the one the real import already put in ``sys.modules``
    (``_load_unlocked`` returns what ``sys.modules`` holds after ``exec_module``)."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        sys.modules[module.__name__] = self.module


class _Submodules(importlib.abc.MetaPathFinder):
    """A submodule of the stand-in (``import torch._dynamo.config``) imports the real package
    first, whose own imports may load that submodule: then the import gets that module, not a
    second copy."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if not name.startswith(_NAME + ".") or not installed():
            return None
        _materialize()
        if name in sys.modules:
            return importlib.util.spec_from_loader(name, _Existing(sys.modules[name]))
        return None


_SUBMODULES = _Submodules()
